"""The training embeddings behind the knn rejection score (finetune.ood), computed once at the end of a run for
best.pt: each training image's embedding (the head's input) under the eval transform, by the scored weights.

Where the run cut its model at a frozen prefix, the prefix outputs come from the feature store (train.features)
when it holds them under the eval transform (a feature-extract run without augmentation, or after an audit), so
the bank costs a pass of the head only; otherwise the prefix runs once over the training images (nothing new is
stored). Above BANK_CAP images, a seeded sample of BANK_CAP of them (Sun et al. 2022,
table 4: a 1% sample of ImageNet's training set keeps most of the score's AUROC).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..checkpoint import EmbeddingBank
from ..console import track
from ..data.images import ImageDataset
from ..data.loading import one_pass_loader
from ..data.transforms import eval_transform
from ..ood import normalised
from ..runtime.device import Compute
from .features.batches import PrefixedBatches
from .features.frozen import FrozenFeatures
from .prefix import Split
from .setup import Setup

# 5000 x 1280 float16 (EfficientNet-Lite0's head input) is 12.8 MB beside its 13 MB of weights
BANK_CAP = 5000


@dataclass(frozen=True)
class BankPass:
    """What computes a model's training embeddings: the train images under the eval transform (sampled down to
    BANK_CAP), and the run's frozen part where it has one."""
    images: ImageDataset
    sampled_from: int
    seed: int
    head_name: str
    compute: Compute
    batch_size: int
    workers: int
    split: Split | None = None
    frozen: FrozenFeatures | None = None

    @classmethod
    def of(cls, samples: list, preprocessing, head_name: str, compute: Compute, seed: int, batch_size: int,
           workers: int, split: Split | None = None, frozen: FrozenFeatures | None = None,
           cap: int = BANK_CAP) -> BankPass:
        picked = samples
        if len(samples) > cap:  # file order kept, so the feature store's key is stable for the same sample
            keep = np.sort(np.random.default_rng(seed).choice(len(samples), cap, replace=False))
            picked = [samples[i] for i in keep]
        images = ImageDataset(picked, eval_transform(preprocessing), preprocessing.resize, preprocessing.size)
        return cls(images, len(samples), seed, head_name, compute, batch_size, workers, split, frozen)

    def embeddings(self, model: nn.Module, console=None) -> EmbeddingBank | None:
        """The bank of `model` (the scored weights), or None when no training image could be read."""
        net, batches = model, self._image_batches()
        if self.split is not None:
            net = self.split.tail_of(model)
            stored = None
            if self.frozen is not None:  # read where stored, never stored for this (a last stage's maps are large)
                layout = self.frozen.layout(self.split, self.images)
                stored = self.frozen.read_or_compute("train", self.images, "eval", 1, self.split, layout,
                                                     compute=False)
            batches = (torch.utils.data.DataLoader(stored, batch_size=self.batch_size) if stored is not None
                       else PrefixedBatches(batches, self.split, self.compute))
        _, _, vectors = head_inputs(net, model.get_submodule(self.head_name), batches, self.compute,
                                    "training embeddings", console)
        if vectors is None or len(vectors) == 0:
            return None
        return EmbeddingBank(normalised(torch.from_numpy(vectors)).half(), self.sampled_from, self.seed)

    def _image_batches(self):
        cpu = self.compute.device.type == "cpu"
        return one_pass_loader(self.images, self.batch_size, 0 if cpu else self.workers, self.seed, not cpu)


def bank_pass(setup: Setup) -> BankPass:
    """The run's BankPass: its train split, preprocessing, head, frozen part and loader settings."""
    return BankPass.of(setup.splits.train, setup.info.preprocessing, setup.info.head_name, setup.compute,
                       setup.train.seed, setup.loaders.batch_size, setup.loaders.workers, setup.split, setup.frozen)


def head_inputs(net: nn.Module, head: nn.Module, batches, compute: Compute, label: str, console=None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(logits, labels, the head's inputs flattened) of this process's readable images, `net` in eval mode,
    float32: the embeddings are caught on their way into `head` (a module `net` runs)."""
    caught: list[torch.Tensor] = []
    hook = head.register_forward_pre_hook(lambda _, args: caught.append(args[0].detach().float().flatten(1).cpu()))
    net.eval()
    out, ys, emb = [], [], []
    try:
        with torch.inference_mode():
            for inputs, labels, *_ in track(batches, label, console):
                keep = labels >= 0  # vanished images and padding
                if keep.any():
                    caught.clear()
                    out.append(net(compute.to_device(inputs[keep])).float().cpu())
                    ys.append(labels[keep])
                    if caught:
                        emb.append(caught[-1])
    finally:
        hook.remove()
    if not out:
        return np.zeros((0, 0), np.float32), np.zeros(0, np.int64), None
    vectors = torch.cat(emb).numpy() if len(emb) == len(out) else None
    return torch.cat(out).numpy(), torch.cat(ys).numpy(), vectors
