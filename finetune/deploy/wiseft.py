"""`finetune wise-ft RUN_DIR --alpha A`: WiSE-FT (Wortsman et al., CVPR 2022, "Robust fine-tuning of zero-shot
models"): the backbone's weights interpolated between the pretrained model and the fine-tuned one,
theta = (1 - alpha) * pretrained + alpha * fine-tuned, for every tensor outside the head (BatchNorm's running
statistics too; its integer counters stay the fine-tuned ones).

The head keeps the fine-tuned head whatever alpha is: the pretrained model has no head for these classes (its
ImageNet classifier, or none, is replaced when a run starts), and the paper's zero-shot head has no counterpart
here. So alpha 0 is the pretrained backbone under the fine-tuned head, alpha 1 the fine-tuned checkpoint. The
pretrained weights are the run's recipe model.weights, loaded by models.registry.create_model as training loads
them. Only what trained moves: with feature-extract the backbone is the pretrained one and every alpha gives the
same model; with last-stage only the last stage moves.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import ModelSpec
from ..errors import ConfigError
from ..models.registry import create_model
from .averaging import (
    Score,
    check_output,
    checkpoint_path,
    pretrained_name,
    read_checkpoints,
    result_checkpoint,
    val_split,
)


@dataclass(frozen=True)
class WiseFt:
    output: Path
    alpha: float
    moved: int  # backbone tensors that differ between pretrained and fine-tuned (0: nothing to interpolate)
    score: Score | None  # on the run's val split
    val: str  # where the val images are, or why it was not scored


def default_output(run: Path, alpha: float) -> Path:
    """RUN_DIR/wise-ft-0.5.pt, beside the run's best.pt."""
    return checkpoint_path(run).parent / f"wise-ft-{alpha:g}.pt"


def pretrained_state(ckpt) -> dict[str, torch.Tensor]:
    """The state of the model the run started from, under a new (unused) head: its recipe's model.weights."""
    weights = pretrained_name(ckpt)
    if weights is None:
        raise ConfigError("this run started from random weights (model.weights null): there are no pretrained "
                          "weights to interpolate with")
    spec = ModelSpec.model_validate({**(ckpt.recipe.get("model") or {}), "weights": weights})
    with torch.random.fork_rng(devices=[]):  # the new head's random init: not the caller's random stream
        model, _ = create_model(spec, len(ckpt.class_names))
    return model.state_dict()


def interpolate(pretrained: dict, finetuned: dict, head_name: str, alpha: float) -> tuple[dict, int]:
    """(theta, how many backbone tensors moved): (1 - alpha) * pretrained + alpha * fine-tuned outside the head,
    the fine-tuned head; computed in float64."""
    if not 0 <= alpha <= 1:
        raise ConfigError(f"--alpha {alpha:g}: give a value from 0 (pretrained backbone) to 1 (fine-tuned)")
    missing = sorted(set(finetuned) ^ set(pretrained))
    wrong = [k for k in finetuned if k in pretrained and pretrained[k].shape != finetuned[k].shape
             and not in_head(k, head_name)]
    if missing and any(not in_head(k, head_name) for k in missing) or wrong:
        few = ", ".join(([k for k in missing if not in_head(k, head_name)] + wrong)[:3])
        raise ConfigError(f"the pretrained model does not match the checkpoint's backbone ({few}); was model.weights "
                          "changed since the run?")
    out, moved = {}, 0
    for key, ft in finetuned.items():
        if in_head(key, head_name) or not ft.is_floating_point():
            out[key] = ft.clone()
            continue
        pre = pretrained[key].to(ft.device)
        moved += not torch.equal(pre.to(ft.dtype), ft)
        out[key] = ((1 - alpha) * pre.double() + alpha * ft.double()).to(ft.dtype)
    return out, moved


def in_head(key: str, head_name: str) -> bool:
    return key == head_name or key.startswith(head_name + ".")


def wise_ft(run: Path, alpha: float, output: Path | None = None, *, batch_size: int = 32, device: str = "auto",
            console=None) -> WiseFt:
    """Write the interpolated checkpoint (default RUN_DIR/wise-ft-ALPHA.pt) and score it on the run's val split
    when that is readable here."""
    if not 0 <= alpha <= 1:
        raise ConfigError(f"--alpha {alpha:g}: give a value from 0 (pretrained backbone) to 1 (fine-tuned)")
    output = output if output is not None else default_output(run, alpha)
    checkpoints = read_checkpoints([run])
    output = check_output(output, checkpoints)
    (_, ckpt), = checkpoints
    state, moved = interpolate(pretrained_state(ckpt), ckpt.state, ckpt.head_name, alpha)
    val, why = val_split(checkpoints, batch_size, device, console)
    result = ckpt.with_state(state)
    score = val.score(result) if val is not None else None
    metrics = {"epoch": "wise-ft", "wise_ft_alpha": alpha}
    if score is not None:
        metrics.update(val_acc=score.acc, val_loss=score.loss, val_images=score.images)
    result_checkpoint(ckpt, state, metrics).save(output)
    return WiseFt(output, alpha, moved, score, val.where if val is not None else why)
