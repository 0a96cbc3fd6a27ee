"""Which unlabelled photos to label next: the selection rule of `finetune suggest`, pure tensors in, choices out.

Uncertainty first, then diversity (the "diverse mini-batch" scheme of Zhdanov 2019, arXiv:1901.05954):

1. margin: each photo's top-1 minus top-2 calibrated probability; a small margin is a photo the model cannot
   decide on (Scheffer et al. 2001), the best single uncertainty score in most comparisons (Settles 2009).
2. pool: the POOL x n photos of smallest margin (POOL = 2). The most uncertain photos of a set are often near
   copies of one another (the same scene, the same confusing pair of classes); labelling ten of them teaches one thing.
3. spread: the pool's L2-normalised embeddings (the head's input) in n clusters by k-means, started from a
   k-center greedy pick (the pool photo farthest from those picked so far; deterministic, no random seed);
   from each cluster the photo of smallest margin.

Ranked by margin, smallest first; ties by position in the input (the order of the files), so the same
inputs always give the same answer. benchmarks/active_learning.py measured the pool factor and this rule
against margin alone, k-center alone and random picks (docs/suggest.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

POOL = 2  # pool = the POOL x n most uncertain photos (2 against 3 and 5 measured: docs/suggest.md)
KMEANS_STEPS = 20  # Lloyd iterations after the k-center start; a pool of a few hundred settles well before


@dataclass(frozen=True)
class Choice:
    """One photo to label next: its position in the input, rank (1 first), margin, and the cluster it speaks for."""
    index: int
    rank: int
    margin: float  # top-1 minus top-2 calibrated probability
    uncertainty_rank: int  # 1: the smallest margin of all the photos
    cluster: int  # which of the pool's clusters (0..n-1); -1 when every photo was taken (n >= photos)
    cluster_size: int  # pool photos in that cluster: how many similar uncertain photos this one stands for


def margins(probs: torch.Tensor) -> torch.Tensor:
    """Top-1 minus top-2 probability per row (1 for a one-class row)."""
    if probs.shape[1] < 2:
        return torch.ones(len(probs))
    top = probs.float().topk(2, dim=1).values
    return top[:, 0] - top[:, 1]


def by_margin(margin: torch.Tensor) -> torch.Tensor:
    """Indices from the smallest margin up; equal margins in input order (a stable sort)."""
    return torch.sort(margin, stable=True).indices


def kcenter_greedy(x: torch.Tensor, k: int, first: int = 0) -> list[int]:
    """k rows of `x` (L2-normalised) spread out: `first`, then each time the row farthest (in cosine distance)
    from all those taken so far (Gonzalez 1985; Sener & Savarese 2018 for active learning). Ties: the lower row."""
    k = min(k, len(x))
    if k <= 0:
        return []
    taken = [first]
    nearest = 1 - x @ x[first]  # each row's distance to its closest taken row
    for _ in range(k - 1):
        nearest[taken[-1]] = -1.0  # a taken row is never taken again (argmax returns the first maximum)
        nxt = int(torch.argmax(nearest))
        taken.append(nxt)
        nearest = torch.minimum(nearest, 1 - x @ x[nxt])
    return taken


def kmeans(x: torch.Tensor, k: int, first: int = 0, steps: int = KMEANS_STEPS) -> torch.Tensor:
    """Each row's cluster (0..k-1) by spherical k-means on L2-normalised rows, started from `kcenter_greedy`
    centres (so deterministic); a cluster left empty keeps its centre."""
    centres = x[kcenter_greedy(x, k, first)].clone()
    assign = torch.argmax(x @ centres.T, dim=1)
    for _ in range(steps):
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        filled = torch.bincount(assign, minlength=len(centres)) > 0
        centres[filled] = torch.nn.functional.normalize(sums[filled], dim=1)
        new = torch.argmax(x @ centres.T, dim=1)
        if torch.equal(new, assign):
            break
        assign = new
    return assign


def select(probs: torch.Tensor, embeddings: torch.Tensor, n: int, pool: int = POOL) -> list[Choice]:
    """The n photos to label next (all of them, by margin, when n >= their number): see the module's doc.
    probs: N x C calibrated probabilities; embeddings: N x D, the head's input (normalised here)."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if len(probs) != len(embeddings):
        raise ValueError(f"{len(probs)} rows of probabilities but {len(embeddings)} embeddings")
    margin = margins(probs)
    order = by_margin(margin)
    place = torch.empty_like(order)
    place[order] = torch.arange(1, len(order) + 1)
    if n >= len(order):
        return [_choice(int(i), r, margin, place, -1, 0) for r, i in enumerate(order.tolist(), 1)]
    candidates = order[:min(len(order), pool * n)]
    x = torch.nn.functional.normalize(embeddings[candidates].float(), dim=1)
    assign = kmeans(x, n)
    sizes = torch.bincount(assign, minlength=n)
    picked: dict[int, int] = {}  # candidate position -> cluster; candidates are in margin order, so the first
    for pos, c in enumerate(assign.tolist()):  # member met of each cluster is its most uncertain
        if c not in picked.values():
            picked[pos] = c
    for pos in range(len(candidates)):  # clusters left empty: the most uncertain photos not yet taken fill in
        if len(picked) >= n:
            break
        picked.setdefault(pos, int(assign[pos]))
    chosen = sorted(picked)  # positions in margin order = rank order
    return [_choice(int(candidates[pos]), r, margin, place, picked[pos], int(sizes[picked[pos]]))
            for r, pos in enumerate(chosen, 1)]


def _choice(index: int, rank: int, margin: torch.Tensor, place: torch.Tensor, cluster: int, size: int) -> Choice:
    return Choice(index, rank, round(float(margin[index]), 6), int(place[index]), cluster, size)
