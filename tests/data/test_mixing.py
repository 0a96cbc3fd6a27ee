"""mixup / cutmix: soft targets, the same mix for the same (seed, epoch, batch), vanished images left alone."""

import torch

from finetune.data.mixing import MixedBatches


class Loader:
    """A train loader's face: batches, and a sampler with an epoch and the samples skipped on resume."""

    def __init__(self, batches, epoch=1, skip=0, batch_size=4):
        self.batches, self.batch_size, self.dataset = batches, batch_size, None
        self.sampler = type("Sampler", (), {"epoch": epoch, "skip": skip})()

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


def images(seed, n=4):
    return torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_mixed_batches_have_soft_targets_and_repeat_for_the_same_seed_epoch_and_position():
    data = [(images(i), torch.tensor([0, 1, 2, 1])) for i in range(3)]
    first = list(MixedBatches(Loader(data), 3, mixup=0.4, cutmix=1.0, seed=0))
    again = list(MixedBatches(Loader(data), 3, mixup=0.4, cutmix=1.0, seed=0))
    for (x, y, t), (x2, _, t2) in zip(first, again):
        assert torch.equal(x, x2) and torch.equal(t, t2) and torch.equal(y, torch.tensor([0, 1, 2, 1]))
        assert torch.allclose(t.sum(1), torch.ones(4)) and (t.max(1).values < 1).all()  # really mixed
    other = list(MixedBatches(Loader(data, epoch=2), 3, mixup=0.4, cutmix=1.0, seed=0))
    assert not all(torch.equal(a[2], b[2]) for a, b in zip(first, other))
    # resumed after the first batch: batch 2 of the epoch mixes as it did in the uninterrupted run
    resumed = list(MixedBatches(Loader(data[1:], skip=4), 3, mixup=0.4, cutmix=1.0, seed=0))
    assert torch.equal(resumed[0][2], first[1][2]) and torch.equal(resumed[0][0], first[1][0])


def test_an_unreadable_image_takes_no_part_in_the_mixing():
    x = images(7)
    x[2] = 0
    _, labels, targets = next(iter(MixedBatches(Loader([(x, torch.tensor([0, 1, -3, 1]))]), 3, 1.0, None, 0)))
    assert labels[2] == -3 and torch.equal(targets[2], torch.zeros(3))
    assert torch.allclose(targets[[0, 1, 3]].sum(1), torch.ones(3))
