"""One optimizer step: forward, loss, backward over one or more batches (gradient accumulation), clipping,
the optimizer and the schedule, then the weights' moving average; under the run's device and autocast.

This is where what happens to a batch belongs; the epoch loop in `loop.py` only feeds it batches. Batches
are (inputs, labels) or, with mixup/cutmix, (inputs, labels, soft targets): the loss then uses the targets,
and a prediction counts as correct when it is the mixed target's dominant class. With distill, a fourth item
holds the teacher's logits (the third, None without mixing), and `distill` adds their term (train.distill).
A label below 0 marks an image that could not be read (data.images.missing_label): it is left out of the loss
and the counts.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import ConfigError, NonFiniteLoss, first_line
from ..runtime.device import Compute
from .freeze import set_train_mode
from .multilabel import MultiLabelLoss


@dataclass(kw_only=True)
class TrainStep:
    """Built once, keyword by keyword, when the model and its frozen prefix are known; `wrap` is the one method
    that changes what runs (DDP and torch.compile around the trained part)."""
    model: nn.Module  # the whole model: what trains, and what checkpoints save (without EMA)
    net: nn.Module  # what runs on the batches: the model, or its part after a cached frozen prefix
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    compute: Compute
    grad_clip: float | None = None
    ema: torch.optim.swa_utils.AveragedModel | None = None  # the moving average of `model`, updated every step
    ema_net: nn.Module | None = None  # what runs on the batches for the average (its part after the prefix)
    accumulate: int = 1  # batches per optimizer step
    frozen_bn: str = "eval"  # BatchNorm of frozen modules while training: eval | train
    compile: bool = False  # train.compile: the trained part through torch.compile
    distill: Callable | None = None  # (loss, logits, teacher logits) -> the loss with the teacher's term
    runner: nn.Module | None = field(default=None, init=False)  # `net` as wrapped by `wrap`

    def __post_init__(self):
        self.runner = self.net

    def wrap(self) -> None:
        """`net` under DistributedDataParallel (data parallel: its trainable parameters at this moment) and
        torch.compile (train.compile). Called before training and again when gradual unfreezing changes what
        trains, since DDP registers the parameters it synchronises when it wraps."""
        net = data_parallel(self.net, self.compute)
        self.runner = compiled(net) if self.compile else net

    def train_mode(self) -> None:
        set_train_mode(self.runner, self.frozen_bn)

    @property
    def scored(self) -> nn.Module:
        """The weights that are evaluated for best.pt and saved: the moving average when there is one."""
        return self.ema.module if self.ema is not None else self.model

    @property
    def scored_net(self) -> nn.Module:
        return self.ema_net if self.ema is not None else self.runner

    def __call__(self, batches: list) -> tuple[float, int, int]:
        """One optimizer step over `batches` (several with gradient accumulation): (mean loss, correct, images)
        of this process's images. A loss that is not a finite number raises NonFiniteLoss before anything is
        updated."""
        dist = self.compute.dist
        local = sum(int((b[1] >= 0).sum()) for b in batches)
        total = int(dist.sum([local])[0]) if dist.enabled else local
        if not total:  # every image vanished: nothing to learn, the schedule still advances
            self.scheduler.step()
            return 0.0, 0, 0
        self.optimizer.zero_grad(set_to_none=True)
        losses, correct = self._backward(batches, total)
        if self.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]], self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        seen = sum(n for _, n in losses)
        mean = losses[0][0] if len(losses) == 1 else sum(v * n for v, n in losses) / max(1, seen)
        return mean, correct, seen

    def _backward(self, batches: list, total: int) -> tuple[list[tuple[float, int]], int]:
        """Each batch's loss backward, weighted by its share of all the step's `total` images (on every rank, when
        data-parallel: DDP averages the ranks' gradients), so the gradient is the mean over all of them."""
        dist, net = self.compute.dist, self.runner
        losses, correct = [], 0
        for i, batch in enumerate(batches):
            # with DDP, gradients are synchronised once per step, in the last batch's backward
            with net.no_sync() if hasattr(net, "no_sync") and i < len(batches) - 1 else nullcontext():
                out = self._forward(net, *batch)
                if out is None:  # only padding or vanished images here; DDP still needs this rank's backward
                    if dist.enabled:
                        (net(self.compute.to_device(batch[0])).float().sum() * 0).backward()
                    continue
                loss, n, right = out
                value = loss.item()
                if not math.isfinite(value):
                    raise NonFiniteLoss(value)
                weight = n / total * dist.world
                self.scaler.scale(loss * weight if len(batches) > 1 or dist.enabled else loss).backward()
                losses.append((value, n))
                correct += right
        return losses, correct

    def evaluate(self, net: nn.Module, inputs: torch.Tensor, labels: torch.Tensor,
                 keep: list | None = None) -> tuple[float, int, int]:
        """(mean loss, correct, images) of `net` on a batch, without a step (the caller holds no_grad and eval).
        `keep`: a list that gets the batch's (logits, labels) of its readable images, on the CPU (val mAP)."""
        out = self._forward(net, inputs, labels, keep=keep)
        if out is None:
            return 0.0, 0, 0
        loss, n, right = out
        return loss.item(), right, n

    def _forward(self, net: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, targets=None, teacher=None,
                 keep=None):
        """(loss, images, correct) over the batch's readable images, or None when it has none. Multi-label
        (train.multilabel): the labels index the targets, and correct is an exact match of every label. `teacher`:
        distill's logits of these images."""
        valid = labels >= 0
        if not valid.all():
            if not valid.any():
                return None
            inputs, labels = inputs[valid], labels[valid]
            targets = targets[valid] if targets is not None else None
            teacher = teacher[valid.to(teacher.device)] if teacher is not None else None
        device = self.compute.device
        inputs, labels = self.compute.to_device(inputs), labels.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True) if targets is not None else None
        with self.compute.autocast():
            logits = net(inputs)
            loss = self.criterion(logits.float(), labels if targets is None else targets)
            if teacher is not None:
                loss = self.distill(loss, logits.float(), teacher.to(device, non_blocking=True))
        if keep is not None:
            keep.append((logits.detach().float().cpu(), labels.cpu()))
        if isinstance(self.criterion, MultiLabelLoss):
            return loss, len(labels), self.criterion.correct(logits.float(), labels)
        truth = labels if targets is None else targets.argmax(1)
        return loss, len(labels), int((logits.argmax(1) == truth).sum())


def moving_average(model: nn.Module, decay: float) -> torch.optim.swa_utils.AveragedModel:
    """torch's AveragedModel as an exponential moving average (parameters and buffers), as torchvision's
    reference scripts use it."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def compiled(net: nn.Module) -> nn.Module:
    """torch.compile(net), or one line saying it is not supported here."""
    try:
        return torch.compile(net)
    except Exception as exc:
        raise ConfigError(f"train.compile: torch.compile is not supported here ({first_line(exc)}); set train.compile: "
                          "false") from None


def data_parallel(net: nn.Module, compute: Compute) -> nn.Module:
    """`net` under DistributedDataParallel when the run has several ranks (its trainable parameters at this
    moment: after gradual unfreezing the caller wraps again); else `net` itself."""
    if not compute.dist.enabled or not any(p.requires_grad for p in net.parameters()):
        return net
    from torch.nn.parallel import DistributedDataParallel

    ids = [compute.device.index] if compute.device.type == "cuda" else None
    return DistributedDataParallel(net, device_ids=ids)
