"""mixup and cutmix (torchvision v2's MixUp and CutMix): each training batch mixed with itself in a shuffled
order, with soft targets. With both, each batch uses one of the two, chosen at random, as timm does.

Every batch's draws come from a seed of (train.seed, epoch, batch position), not from a global RNG, so a
resumed run mixes each batch exactly as the uninterrupted one, and DataLoader workers change nothing.
"""

from __future__ import annotations

import numpy as np
import torch


class MixedBatches:
    """Train batches (data.loading.EpochBatches) that come out as (images, labels, soft targets). Images that could
    not be read (negative labels, data.images.missing_label) take no part in the mixing and keep their label."""

    def __init__(self, loader, num_classes: int, mixup: float | None, cutmix: float | None, seed: int):
        from torchvision.transforms import v2

        self.loader, self.num_classes, self.seed = loader, num_classes, seed
        choices = ([v2.MixUp(alpha=mixup, num_classes=num_classes)] if mixup else []) + \
                  ([v2.CutMix(alpha=cutmix, num_classes=num_classes)] if cutmix else [])
        self.mix = choices[0] if len(choices) == 1 else v2.RandomChoice(choices)

    @property
    def sampler(self):
        return self.loader.sampler

    @property
    def batch_size(self) -> int:
        return self.loader.batch_size

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.loader.set_epoch(epoch, skip)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        sampler = self.loader.sampler
        world = getattr(sampler, "world", 1)  # data parallel: skip counts global batches (sampling.EpochSampler)
        first = getattr(sampler, "skip", 0) // (sampler.batch if world > 1 else self.loader.batch_size)
        rank = [sampler.rank] if world > 1 else []
        for position, (images, labels) in enumerate(self.loader, first):
            yield self.mixed(images, labels, [self.seed, getattr(sampler, "epoch", 0), position, *rank])

    def mixed(self, images: torch.Tensor, labels: torch.Tensor, key: list[int]):
        targets = torch.zeros(len(labels), self.num_classes)
        valid = labels >= 0
        if valid.sum() > 1:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(np.random.SeedSequence(key).generate_state(1)[0]))
                images, labels = images.clone(), labels.clone()
                images[valid], targets[valid] = self.mix(images[valid], labels[valid])
        elif valid.any():
            targets[valid] = torch.nn.functional.one_hot(labels[valid], self.num_classes).float()
        return images, labels, targets
