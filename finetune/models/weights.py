"""Pretrained weights in: torchvision's own download path (the torch hub cache), or a local file read
without running code, loaded strictly with an error that names what does not fit."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from ..files import safe_torch_load, unreadable_file


def is_weights_name(weights: str | None) -> bool:
    """A weights entry's name (IMAGENET1K_V2, DEFAULT) rather than a file path."""
    return weights is not None and not any(c in weights for c in "/\\.")


def torchvision_weights(name: str, weights_name: str | None = None):
    """torchvision's weights entry for model `name`: `weights_name`, or DEFAULT. Each entry carries its own
    transforms and categories (IMAGENET1K_V1 and V2 preprocess differently)."""
    import torchvision

    try:
        enum = torchvision.models.get_model_weights(name)
    except (ValueError, KeyError):
        raise ConfigError(f"unknown torchvision model {name!r}") from None
    try:
        return enum[weights_name or "DEFAULT"]
    except KeyError:
        raise ConfigError(f"model.weights {weights_name!r} is not a weights name of {name}; "
                          f"choose one of {', '.join(enum.__members__)}, a file path, or null") from None


def download_state_dict(weights) -> dict:
    """A torchvision weights entry's state dict, through torchvision's own path: the torch hub cache
    ($TORCH_HOME/hub/checkpoints), downloaded there if absent."""
    try:
        return weights.get_state_dict(progress=True, check_hash=False)
    except OSError as exc:  # URLError is an OSError: offline, proxy, DNS
        cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
        raise CheckpointError(f"could not download {weights} weights ({exc}). Offline? Put the file at "
                              f"{cache}, or set model.weights to a local state-dict file") from None


def read_state_dict(path: str | Path) -> dict:
    """A local weights file, loaded without executing code (weights_only)."""
    path = Path(path).expanduser()
    if why := unreadable_file(path, "weights file"):
        raise CheckpointError(why)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors holds no code; a failure here is a damaged file
            raise CheckpointError(f"cannot read {path}: the weights file is corrupt or truncated ({exc})") from None
    state = safe_torch_load(path, "weights file")  # pickle payloads, corrupt files: refused, never executed
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} does not hold a state dict")
    return state


def load_weights(model: nn.Module, state: dict, source: str) -> None:
    """Strict load with an error that names the keys and shapes that do not fit."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
             for k in own if k in state and tuple(getattr(state[k], "shape", ())) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        def few(xs):
            return ", ".join(xs[:5]) + (f" (+{len(xs) - 5} more)" if len(xs) > 5 else "")
        parts = [f"missing {few(missing)}" if missing else "", f"unexpected {few(unexpected)}" if unexpected else "",
                 f"shape mismatch {few(wrong)}" if wrong else ""]
        raise CheckpointError(f"weights {source} do not fit the model: " + "; ".join(p for p in parts if p))
    model.load_state_dict(state)
