"""Class balance: inverse-frequency loss weights (data.class_weights: auto) and a seeded balanced
sampler (data.sampler: balanced). Both off by default; what was used is recorded in the run folder."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch

from .sampling import EpochSampler


@dataclass
class Balance:
    loss_weights: torch.Tensor | None  # per class, for CrossEntropyLoss(weight=...)
    sampler: torch.utils.data.Sampler | None  # replaces shuffling of the train loader

    def to_dict(self, class_names: list[str]) -> dict:
        weights = None if self.loss_weights is None else dict(zip(class_names, map(float, self.loss_weights)))
        return {"class_weights": weights, "sampler": "balanced" if self.sampler is not None else None}


def resolve_balance(labels: list[int], num_classes: int, class_weights: str | None, sampler: str | None,
                    seed: int) -> Balance:
    counts = Counter(labels)
    weights = None
    if class_weights == "auto":
        # n_samples / (n_classes * n_c): 1.0 for every class when balanced (sklearn's "balanced")
        weights = torch.tensor([len(labels) / (num_classes * counts[c]) if counts[c] else 0.0
                                for c in range(num_classes)])
    balanced = None
    if sampler == "balanced":
        # each class drawn equally often; an epoch keeps its usual length; seeded from train.seed
        # drawn by EpochSampler from (seed, epoch), so a run with it resumes mid-epoch like any other
        balanced = EpochSampler(len(labels), seed, weights=[1.0 / counts[y] for y in labels])
    return Balance(weights, balanced)
