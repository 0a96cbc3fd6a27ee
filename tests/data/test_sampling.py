"""The training data order: a pure function of (seed, epoch); resuming skips exactly what was trained; ranks share
every global batch without overlap; a balanced draw follows its weights; each sample's augmentation has its seed."""

from collections import Counter

import pytest
import torch

from finetune.data.sampling import EpochSampler, SeededDataset, Shard


def order(size=10, seed=0, epoch=1, skip=0, **kw) -> list[tuple[int, int]]:
    s = EpochSampler(size, seed, **kw)
    s.set_epoch(epoch, skip)
    return list(s)


def indices(pairs) -> list[int]:
    return [i for i, _ in pairs]


def test_epoch_sampler_order_is_a_function_of_seed_and_epoch():
    assert order(10, 0, 1) == order(10, 0, 1)
    assert sorted(i for i, _ in order(10, 0, 1)) == list(range(10))
    assert order(10, 0, 1) != order(10, 0, 2) and order(10, 0, 1) != order(10, 1, 1)
    assert order(10, 0, 2, skip=4) == order(10, 0, 2)[4:]

    balanced = EpochSampler(10, 0, weights=[1.0] * 9 + [0.0])  # a weighted draw: same guarantees
    balanced.set_epoch(3)
    drawn = list(balanced)
    assert len(drawn) == 10 and 9 not in {i for i, _ in drawn} and drawn == list(balanced)


def test_each_sample_has_its_own_seed_fixed_by_seed_and_epoch():
    seeds = [s for _, s in order(50, 7, 3)]
    assert len(set(seeds)) == 50  # not one seed for the batch: every image its own augmentation
    assert seeds == [s for _, s in order(50, 7, 3)] and seeds != [s for _, s in order(50, 7, 4)]


@pytest.mark.parametrize("skip", [0, 1, 7, 19, 20])
def test_resuming_skips_exactly_the_positions_already_trained(skip):
    s = EpochSampler(20, 3)
    s.set_epoch(2, skip)
    assert list(s) == order(20, 3, 2)[skip:] and len(s) == 20 - skip


def test_setting_the_epoch_again_clears_the_skip():
    s = EpochSampler(12, 0)
    s.set_epoch(1, 8)
    assert len(list(s)) == 4
    s.set_epoch(2)  # the next epoch starts at its beginning
    assert list(s) == order(12, 0, 2)


@pytest.mark.parametrize("world", [2, 3, 4])
def test_ranks_split_every_global_batch_disjointly_and_together_see_it_all(world):
    size, batch = 26, 8  # three full global batches and a ragged one of 2, which is left out
    whole = EpochSampler(size, 5).batched(batch)
    whole.set_epoch(4)
    reference = indices(whole)
    assert len(reference) == 24 and whole.dropped == 2

    ranks = []
    for rank in range(world):
        s = EpochSampler(size, 5).batched(batch, rank, world)
        s.set_epoch(4)
        ranks.append(list(s))
    assert len({len(r) for r in ranks}) == 1  # every rank takes the same number of steps
    per_batch = -(-batch // world)
    for b in range(len(reference) // batch):
        seen = [i for r in ranks for i, _ in r[b * per_batch:(b + 1) * per_batch] if i != -1]
        assert sorted(seen) == sorted(reference[b * batch:(b + 1) * batch])  # the same images, each once


def test_an_epoch_shorter_than_one_batch_is_shared_out_and_padded():
    ranks = []
    for rank in range(4):
        s = EpochSampler(5, 0).batched(8, rank, 4)
        s.set_epoch(1)
        ranks.append(list(s))
    assert [len(r) for r in ranks] == [2, 2, 2, 2]  # padded so no rank waits for another
    real = [i for r in ranks for i, _ in r if i != -1]
    assert sorted(real) == list(range(5)) and sum(i == -1 for r in ranks for i, _ in r) == 3


def test_resuming_on_several_ranks_skips_whole_global_batches():
    for rank in range(2):
        full = EpochSampler(32, 1).batched(8, rank, 2)
        full.set_epoch(3)
        resumed = EpochSampler(32, 1).batched(8, rank, 2)
        resumed.set_epoch(3, 16)  # two global batches trained before the stop
        assert list(resumed) == list(full)[8:]


def test_a_balanced_draw_follows_the_weights():
    # 100 rare images at weight 3 and 300 common ones at 1: each group should fill about half of the epoch
    weights = [3.0] * 100 + [1.0] * 300
    drawn = Counter(i < 100 for i in indices(order(400, 0, 1, weights=weights)))
    assert drawn[True] + drawn[False] == 400
    assert 0.42 < drawn[True] / 400 < 0.58
    plain = Counter(i < 100 for i in indices(order(400, 0, 1)))
    assert plain[True] == 100  # unweighted: each image once, so the rare group keeps its quarter


def test_validation_shards_cover_every_position_once():
    shards = [list(Shard(11, rank, 3)) for rank in range(3)]
    assert sorted(i for s in shards for i in s) == list(range(11))
    assert [len(Shard(11, rank, 3)) for rank in range(3)] == [len(s) for s in shards]


class _Noise(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return torch.rand(3)  # stands in for a random augmentation


def test_a_samples_augmentation_depends_on_its_seed_only_and_leaves_the_global_rng_alone():
    data = SeededDataset(_Noise())
    torch.manual_seed(0)
    before = torch.random.get_rng_state()
    first = data[(2, 123)]
    data[(1, 999)]
    assert torch.equal(data[(2, 123)], first)  # the same seed, whenever and wherever it is loaded
    assert not torch.equal(data[(2, 124)], first)
    assert torch.equal(torch.random.get_rng_state(), before)
