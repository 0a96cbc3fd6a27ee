"""Files we write and files we read: atomic writes that survive a crash, and loads that run no code.

A leaf: it imports nothing from the package but `errors`, so every layer can use it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import CheckpointError


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


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


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


def safe_torch_load(path: Path, what: str = "file"):
    """torch.load that only rebuilds tensors and plain data: a pickle that would import or call anything
    (os.system, a class's __reduce__, ...) is refused before any of it runs."""
    import pickle
    import warnings

    import torch

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
