"""What `finetune average` (soup.py) and `finetune wise-ft` (wiseft.py) share: the checkpoints they read from run
folders, the checks that their weights can be averaged, the average itself, and the score of a candidate on the
runs' own val split (the split each run validated on, rebuilt from its recipe: data.root, data.val_fraction and
train.seed, as `export --int8` finds its calibration images), through predict() like `finetune evaluate`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import Checkpoint
from ..data.folders import dataset_folders, resolve_splits
from ..data.lists import is_list_argument
from ..errors import CheckpointError, ConfigError, DataError
from ..files import make_folder, refuse_inside
from ..metrics import nll, softmax
from .predict import predict


def checkpoint_path(run: Path) -> Path:
    """A run folder's best.pt, or a checkpoint file named as such."""
    run = Path(run).expanduser()
    if run.is_dir():
        if not (run / "best.pt").is_file():
            raise CheckpointError(f"{run} has no best.pt: give run folders written by `finetune train` (or .pt files)")
        return run / "best.pt"
    return run


def read_checkpoints(runs: list[Path]) -> list[tuple[Path, Checkpoint]]:
    paths = [checkpoint_path(r) for r in runs]
    seen = {}
    for p in paths:
        if p.resolve() in seen:
            raise ConfigError(f"{p} is given twice (as {seen[p.resolve()]}): each checkpoint counts once")
        seen[p.resolve()] = p
    return [(p, Checkpoint.load(p)) for p in paths]


def pretrained_name(ckpt: Checkpoint):
    """The weights the run started from (its recipe's model.weights)."""
    return (ckpt.recipe.get("model") or {}).get("weights")


def check_same_model(checkpoints: list[tuple[Path, Checkpoint]]) -> None:
    """Weights average only between fine-tunings of one model for one set of classes: the same architecture, head,
    classes (in order), preprocessing, pretrained start and tensors (names and shapes). Refused with what differs."""
    (first_path, first), *others = checkpoints
    for path, ckpt in others:
        differs = [f"{what} ({a} vs {b})" for what, a, b in (
            ("architecture", arch(first), arch(ckpt)),
            ("classes", ", ".join(first.class_names), ", ".join(ckpt.class_names)),
            ("preprocessing", preprocessing(first), preprocessing(ckpt)),
            ("pretrained weights, model.weights", pretrained_name(first), pretrained_name(ckpt)),
        ) if a != b]
        if not differs and {k: tuple(v.shape) for k, v in first.state.items()} != \
                {k: tuple(v.shape) for k, v in ckpt.state.items()}:
            differs = ["the tensors they hold (names or shapes)"]
        if differs:
            raise ConfigError(f"{path} and {first_path} differ in {'; '.join(differs)}: only fine-tunings of one "
                              "model for the same classes can be averaged")


def preprocessing(ckpt: Checkpoint) -> str:
    p = ckpt.preprocessing
    return f"{p.size} px crop of {p.resize}, {p.interpolation}, mean {list(p.mean)}, std {list(p.std)}"


def arch(ckpt: Checkpoint) -> str:
    spec = ckpt.model
    head = spec.head.type + (f"-{spec.head.hidden}" if spec.head.type == "mlp" else "")
    return f"{spec.source}:{spec.name} ({head} head{', cifar stem' if spec.cifar_stem else ''})"


def average_states(states: list[dict[str, torch.Tensor]], weights: list[float] | None = None
                   ) -> dict[str, torch.Tensor]:
    """The weighted mean (equal weights by default) of each floating-point tensor, summed in float64; integer
    tensors (BatchNorm's num_batches_tracked) are the first state's. BatchNorm's running statistics are averaged
    like the weights (Wortsman et al. 2022 average every tensor of the state)."""
    weights = weights or [1.0 / len(states)] * len(states)
    out = {}
    for key, first in states[0].items():
        if not first.is_floating_point():
            out[key] = first.clone()
            continue
        total = sum(w * s[key].double() for w, s in zip(weights, states))
        out[key] = total.to(first.dtype)
    return out


@dataclass(frozen=True)
class Score:
    acc: float
    loss: float  # mean cross-entropy of the raw logits (no temperature)
    images: int


class ValSplit:
    """The val images the runs validated on, and the score of a checkpoint on them."""

    def __init__(self, samples: list[tuple[Path, int]], where: str, batch_size: int = 32, device: str = "auto",
                 console=None):
        self.samples, self.where = samples, where
        self.batch_size, self.device, self.console = batch_size, device, console

    def score(self, ckpt: Checkpoint) -> Score:
        results = predict(ckpt, [p for p, _ in self.samples], batch_size=self.batch_size, device=self.device,
                          raw=True, console=self.console, engine="torch")
        kept = [(r.logits, y) for r, (_, y) in zip(results, self.samples) if r.error is None]
        if not kept:
            raise DataError(f"none of the {len(self.samples)} val images of {self.where} could be read")
        logits = np.array([k[0] for k in kept], dtype=np.float64)
        labels = np.array([k[1] for k in kept])
        acc = float((softmax(logits).argmax(1) == labels).mean())
        return Score(acc, float(nll(logits, labels)), len(kept))


def val_split(checkpoints: list[tuple[Path, Checkpoint]], batch_size: int = 32, device: str = "auto",
              console=None) -> tuple[ValSplit | None, str]:
    """(the val split all the runs validated on, ""), or (None, why there is none here): a run's data.root that
    is not here, or runs that validated on different images (a seeded split with another seed or fraction, or
    another dataset), whose val accuracies would not compare."""
    found, where = None, ""
    for path, ckpt in checkpoints:
        data = ckpt.recipe.get("data") or {}
        root, seed = data.get("root"), (ckpt.recipe.get("train") or {}).get("seed", 0)
        if not root or not (is_list_argument(root) or Path(root).expanduser().is_dir()):
            return None, (f"{path}'s data.root {root} is not a folder here" if root
                          else f"{path}'s recipe names no data.root")
        try:
            splits = resolve_splits(Path(root), float(data.get("val_fraction", 0.2)), int(seed))
        except DataError as exc:
            return None, f"cannot read {path}'s val images: {exc}"
        names = ckpt.class_names
        samples = [(p, names.index(splits.class_names[y])) for p, y in splits.val if splits.class_names[y] in names]
        if found is None:
            found, where = samples, f"the val split of {root}"
        elif sorted(map(str, (p for p, _ in samples))) != sorted(map(str, (p for p, _ in found))):
            return None, (f"{path} validated on other images than {checkpoints[0][0]} (another data.root, or a "
                          "seeded split with another train.seed or data.val_fraction)")
    if not found:
        return None, "the runs' val splits hold no image of their classes"
    return ValSplit(found, where, batch_size, device, console), ""


def check_output(output: Path, checkpoints: list[tuple[Path, Checkpoint]]) -> Path:
    """OUT.pt: never one of the checkpoints read, never inside a run's dataset."""
    output = Path(output).expanduser()
    if output.suffix != ".pt":
        raise ConfigError(f"--output {output}: give a file name ending in .pt (a checkpoint)")
    for path, ckpt in checkpoints:
        if output.resolve() == path.resolve():
            raise ConfigError(f"--output {output} is one of the checkpoints read; write the result to a new file")
        root = (ckpt.recipe.get("data") or {}).get("root")
        refuse_inside(output, dataset_folders(Path(root) if root else None), "--output")
    make_folder(output.parent, "--output's folder")
    return output


def result_checkpoint(base: Checkpoint, state: dict[str, torch.Tensor], metrics: dict) -> Checkpoint:
    """A normal checkpoint (predict, evaluate, export load it) holding `state`, described by `base` (architecture,
    classes, preprocessing, recipe). No temperature and no rejection thresholds: the ones fitted for `base` do not
    belong to other weights (probabilities are the raw softmax)."""
    clean = {k: (v if isinstance(v, (int, str, list)) or v is None else float(v)) for k, v in metrics.items()}
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in clean.items()}
    return replace(base, state=state, metrics=clean, calibration=None, resume=None, embeddings=None)
