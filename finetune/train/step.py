"""One training step: forward, loss, backward, optimizer and scheduler, under the run's device and autocast.

This is where what happens to a batch belongs (EMA, mixup, gradient accumulation and clipping, DDP wrapping):
the epoch loop in `loop.py` only feeds it batches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import NonFiniteLoss
from ..runtime.device import Compute


@dataclass
class TrainStep:
    model: nn.Module  # the whole model: what checkpoints save
    net: nn.Module  # what runs on the batches: the model, or its part after a cached frozen prefix
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    compute: Compute

    def __call__(self, inputs: torch.Tensor, labels: torch.Tensor) -> tuple[float, int, int]:
        """One optimizer step on a batch: (mean loss, correct predictions, images counted). A loss that is not
        a finite number raises NonFiniteLoss before anything is updated."""
        logits, loss, labels = self._forward(inputs, labels)
        if loss is None:  # every image of the batch vanished: nothing to learn, the schedule still advances
            self.scheduler.step()
            return 0.0, 0, 0
        value = loss.item()
        if not math.isfinite(value):
            raise NonFiniteLoss(value)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return value, int((logits.argmax(1) == labels).sum()), len(labels)

    def evaluate(self, inputs: torch.Tensor, labels: torch.Tensor) -> tuple[float, int, int]:
        """The same figures without a step (the caller holds no_grad and eval mode)."""
        logits, loss, labels = self._forward(inputs, labels)
        if loss is None:
            return 0.0, 0, 0
        return loss.item(), int((logits.argmax(1) == labels).sum()), len(labels)

    def _forward(self, inputs, labels):
        """(logits, loss, labels) of the batch's readable images (data.images.missing_label marks the others)."""
        valid = labels >= 0
        if not valid.all():
            if not valid.any():
                return None, None, None
            inputs, labels = inputs[valid], labels[valid]
        inputs, labels = self.compute.to_device(inputs), labels.to(self.compute.device, non_blocking=True)
        with self.compute.autocast():
            logits = self.net(inputs)
            loss = self.criterion(logits.float(), labels)
        return logits, loss, labels
