"""task: multilabel in a run's step: the loss (BCE with logits on the multi-hot targets that each sample's int
indexes, data.multilabel), what counts as right (every label decided right at probability 0.5: exact match),
and the epoch's val mAP (what chooses best.pt). The thresholds chosen at the end: train.thresholds."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..metrics import mean_average_precision, sigmoid
from ..runtime.device import Compute


class MultiLabelLoss(nn.Module):
    """BCE with logits, the mean over images and labels, of the targets rows that the batch's ints index."""

    weight, label_smoothing = None, 0.0  # what the solved head reads of a criterion (train.solved)

    def __init__(self, targets: np.ndarray):
        super().__init__()
        self.register_buffer("targets", torch.as_tensor(targets, dtype=torch.float32), persistent=False)

    def forward(self, logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits, self.targets[rows])

    def correct(self, logits: torch.Tensor, rows: torch.Tensor) -> int:
        """Images whose every label is decided right at probability 0.5 (logit 0): exact match."""
        return int(((logits > 0) == (self.targets[rows] > 0.5)).all(1).sum())


def val_map(kept: list, targets: np.ndarray, compute: Compute) -> float:
    """The mAP of the (logits, rows) pairs an evaluation kept (train.step.TrainStep.evaluate), every rank's."""
    parts = compute.dist.gather([(torch.cat([k[0] for k in kept]).numpy(), torch.cat([k[1] for k in kept]).numpy())]
                                if kept else [])
    if not parts:
        return 0.0
    logits, rows = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    value = mean_average_precision(sigmoid(logits), targets[rows])[0]
    return 0.0 if np.isnan(value) else value  # no val image shows any label: nothing to rank epochs by
