"""The selection rule of `finetune suggest` on constructed probabilities and embeddings: the most uncertain photos
first, one per kind of photo rather than ten of one kind, every photo when n is larger, the same answer for the
same input."""

import pytest
import torch

from finetune.deploy.selection import kcenter_greedy, kmeans, margins, select


def two_class(margin: list[float]) -> torch.Tensor:
    """Rows of two-class probabilities with these top-1 minus top-2 margins."""
    m = torch.tensor(margin)
    return torch.stack([(1 + m) / 2, (1 - m) / 2], 1)


def around(direction: int, count: int, dim: int = 8, seed: int = 0) -> torch.Tensor:
    """`count` embeddings close to the unit vector `direction` (a kind of photo)."""
    g = torch.Generator().manual_seed(seed + direction)
    return torch.nn.functional.one_hot(torch.tensor([direction] * count), dim).float() * 5 + \
        0.1 * torch.randn(count, dim, generator=g)


def test_margin_is_the_gap_between_the_two_most_likely_classes():
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8], [0.34, 0.33, 0.33]])
    assert margins(probs).tolist() == pytest.approx([0.2, 0.7, 0.01])


def test_picks_the_uncertain_photos_of_each_kind():
    # three kinds of photo, each with one photo the model cannot decide on and five it is sure of
    x = torch.cat([around(d, 6) for d in range(3)])
    margin = [0.9] * 18
    uncertain = [2, 7, 15]
    for i, m in zip(uncertain, (0.05, 0.02, 0.08)):
        margin[i] = m
    chosen = select(two_class(margin), x, 3)
    assert [c.index for c in chosen] == [7, 2, 15]  # ranked by margin, smallest first
    assert [c.rank for c in chosen] == [1, 2, 3]
    assert [c.uncertainty_rank for c in chosen] == [1, 2, 3]
    assert [c.margin for c in chosen] == pytest.approx([0.02, 0.05, 0.08])


def test_spreads_over_kinds_of_photo_instead_of_taking_the_most_uncertain_near_copies():
    # kind 0: five near copies, all very uncertain; kind 1: less uncertain photos. Margin alone takes two of kind 0.
    x = torch.cat([around(0, 5), around(1, 5)])
    probs = two_class([0.01, 0.02, 0.03, 0.04, 0.05, 0.20, 0.10, 0.30, 0.40, 0.50])
    chosen = select(probs, x, 2, pool=3)
    assert [c.index for c in chosen] == [0, 6]  # the most uncertain of each kind
    assert chosen[1].uncertainty_rank == 6  # not among the five most uncertain, chosen for being different
    # the pool: the 6 most uncertain, five near copies and one other
    assert [c.cluster_size for c in chosen] == [5, 1] and len({c.cluster for c in chosen}) == 2


def test_n_larger_than_the_photos_returns_them_all_ranked_by_margin():
    probs = two_class([0.4, 0.1, 0.3, 0.2])
    chosen = select(probs, torch.randn(4, 8), 10)
    assert [c.index for c in chosen] == [1, 3, 2, 0]
    assert [c.rank for c in chosen] == [1, 2, 3, 4] and all(c.cluster == -1 for c in chosen)


def test_ties_are_broken_by_input_order_and_the_answer_is_the_same_every_time():
    probs = two_class([0.5] * 8)  # every photo equally uncertain, all alike
    x = torch.ones(8, 4)
    first = select(probs, x, 3)
    assert [c.index for c in first] == [0, 1, 2]
    assert select(probs, x, 3) == first
    # distinct photos, equal margins: the rule depends on the data alone, not on a random draw
    y = torch.randn(30, 8, generator=torch.Generator().manual_seed(1))
    assert select(two_class([0.3] * 30), y, 5) == select(two_class([0.3] * 30), y.clone(), 5)


def test_pool_bounds_how_far_down_the_uncertainty_ranking_it_reaches():
    x = torch.cat([around(0, 6), around(1, 6)])
    probs = two_class([0.01 * (i + 1) for i in range(12)])  # kind 0 is the 6 most uncertain
    assert all(c.index < 6 for c in select(probs, x, 2, pool=3))  # the pool holds kind 0 only
    assert {c.index for c in select(probs, x, 2, pool=6)} == {0, 6}  # the pool reaches kind 1


def test_kcenter_and_kmeans_separate_clear_groups():
    x = torch.nn.functional.normalize(torch.cat([around(0, 4), around(1, 4), around(2, 4)]), dim=1)
    assert sorted(i // 4 for i in kcenter_greedy(x, 3)) == [0, 1, 2]
    assign = kmeans(x, 3)
    assert [len(set(assign[k:k + 4].tolist())) for k in (0, 4, 8)] == [1, 1, 1]
    assert len(set(assign.tolist())) == 3


def test_bad_arguments():
    with pytest.raises(ValueError, match="at least 1"):
        select(two_class([0.1]), torch.zeros(1, 2), 0)
    with pytest.raises(ValueError, match="rows"):
        select(two_class([0.1, 0.2]), torch.zeros(3, 2), 1)
