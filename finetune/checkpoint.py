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

from .errors import CheckpointError, ResourceError

FORMAT = "finetune/1"


def atomic_write(path: Path, write) -> None:
    """write(file) into a temp file in the same folder, fsync, rename over `path`, fsync the folder.

    A crash at any instant leaves either the old file or the new one, never a torn one; fsyncing the
    folder makes the rename itself survive a power cut (rename alone is atomic but not durable)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a run's files get the user's usual mode
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # Windows cannot open a folder; its rename is durable enough
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(path: Path, model_state: dict, meta: dict, **extra) -> None:
    payload = {"format": FORMAT, "meta": meta, "model": {k: v.detach().cpu() for k, v in model_state.items()}, **extra}
    atomic_write(path, lambda f: torch.save(payload, f))


def check_disk_space(folder: Path, model, optimizer) -> None:
    """Fail before the first epoch when best.pt + last.pt (with optimizer state) + one temporary copy
    during an atomic replace would not fit. Optimizer state is estimated per trainable parameter."""
    import shutil

    folder = next(p for p in [Path(folder).absolute(), *Path(folder).absolute().parents] if p.exists())
    model_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    slots = {"Adam": 2, "AdamW": 2}.get(type(optimizer).__name__, 1)  # exp_avg + exp_avg_sq; SGD momentum
    last = model_bytes + slots * trainable
    needed = int(1.1 * (model_bytes + 2 * last))
    existing = sum(f.stat().st_size for f in (Path(folder) / "best.pt", Path(folder) / "last.pt") if f.is_file())
    free = shutil.disk_usage(folder).free + existing
    if free < needed:
        raise ResourceError(f"not enough free disk space in {folder} for this run's checkpoints: they need about "
                            f"{needed / 1e6:.1f} MB (best.pt, last.pt with optimizer state, and a temporary copy "
                            f"while saving), {free / 1e6:.1f} MB is free. Free some space or choose another "
                            "--output / run.dir")


def safe_torch_load(path: Path, what: str = "file"):
    """torch.load that only rebuilds tensors and plain data: a pickle that would import or call anything
    (os.system, a class's __reduce__, ...) is refused before any of it runs."""
    import pickle
    import warnings

    try:
        with warnings.catch_warnings():  # torch warns about foreign pickle protocols; we refuse or load anyway
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        detail = next((ln for ln in lines if "GLOBAL" in ln or "Unsupported" in ln), lines[-1] if lines else "")
        raise CheckpointError(f"refusing to load {path}: this {what} holds Python objects that would run code when "
                              f"unpickled ({detail[:160]}); finetune only loads tensors and plain data. If you trust "
                              "its source, re-save just the state dict, or use .safetensors") from None
    except Exception as exc:
        first = str(exc).strip().splitlines()[0].split(". ")[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot read {path}: the {what} is corrupt or truncated ({first[:160]})") from None


def load_checkpoint(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    payload = safe_torch_load(path, "checkpoint")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a finetune checkpoint (expected format {FORMAT})")
    return payload


def load_model(path: Path, payload: dict | None = None):
    """(model in eval mode, meta) from a checkpoint alone: no recipe, no dataset, no download.
    `payload`: the checkpoint already read by load_checkpoint(path)."""
    from .config import ModelSpec
    from .models.registry import create_model, load_weights

    payload = payload or load_checkpoint(path)
    meta = payload["meta"]
    spec = ModelSpec.model_validate({**meta["model"], "weights": None})
    model, _ = create_model(spec, len(meta["class_names"]))
    load_weights(model, payload["model"], str(path))
    return model.eval(), meta


def update_meta(path: Path, **changes) -> None:
    """Rewrite a checkpoint with meta keys added or replaced; everything else in it is kept as is."""
    payload = load_checkpoint(path)
    payload["meta"].update(changes)
    atomic_write(Path(path), lambda f: torch.save(payload, f))
