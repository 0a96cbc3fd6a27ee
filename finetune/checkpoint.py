"""Self-describing checkpoints, written atomically, loaded without unpickling code.

A checkpoint is a dict of tensors and plain data only: {"format", "meta", "model", ...}. `meta` holds
everything predict/export need (architecture, class names, preprocessing, head, strategy, the
resolved recipe, metrics), so a checkpoint stands alone.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from .errors import CheckpointError

FORMAT = "finetune/1"


def atomic_write(path: Path, write) -> None:
    """write(file) into a temp file in the same folder, fsync, then rename over `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(path: Path, model_state: dict, meta: dict, **extra) -> None:
    payload = {"format": FORMAT, "meta": meta, "model": {k: v.detach().cpu() for k, v in model_state.items()}, **extra}
    atomic_write(path, lambda f: torch.save(payload, f))


def load_checkpoint(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a pickle that needs more than tensors and plain data is refused, not run
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"refusing to load {path}: it is not a plain finetune checkpoint "
                              f"(loading it would need arbitrary code: {first[:200]})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a finetune checkpoint (expected format {FORMAT})")
    return payload


def load_model(path: Path):
    """(model in eval mode, meta) from a checkpoint alone: no recipe, no dataset, no download."""
    from .config import ModelSpec
    from .models.registry import create_model, load_weights

    payload = load_checkpoint(path)
    meta = payload["meta"]
    spec = ModelSpec.model_validate({**meta["model"], "weights": None})
    model, _ = create_model(spec, len(meta["class_names"]))
    load_weights(model, payload["model"], str(path))
    return model.eval(), meta
