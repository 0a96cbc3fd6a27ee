"""Near-duplicate pairs: the blocked top-k search finds what an all-pairs comparison finds, and each pair gets
the kind its splits and labels say."""

import numpy as np
import torch

from finetune.audit.duplicates import find_duplicates, similar_pairs
from finetune.audit.embeddings import Embeddings


def planted(n=53, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    for a, b in ((0, 40), (5, 6), (17, 52)):  # near copies, in different tiles of a 7-row block
        x[b] = x[a] + 0.05 * torch.randn(d, generator=g)
    return torch.nn.functional.normalize(x, dim=1)


def test_blocked_search_matches_all_pairs():
    x = planted()
    lo, hi, s = similar_pairs(x, 0.9, k=3, block=7)
    full = x @ x.T
    expected = {(i, j) for i in range(len(x)) for j in range(i + 1, len(x)) if full[i, j] >= 0.9}
    assert {(int(i), int(j)) for i, j in zip(lo, hi)} == expected == {(0, 40), (5, 6), (17, 52)}
    assert np.allclose(s, [float(full[i, j]) for i, j in zip(lo, hi)], atol=1e-5)
    assert list(s) == sorted(s, reverse=True)


def test_each_pair_has_its_kind_and_exact_copies_are_left_to_inspect():
    x = planted().numpy()
    n = len(x)
    split, labels = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    split[40] = 1  # 0 in train, 40 in val
    labels[6] = 1  # 5 and 6 in one split, two classes
    emb = Embeddings(x, labels, [f"p{i}" for i in range(n)], split, ["a", "b"], [])
    kinds = {(p.first, p.second): p.kind for p in find_duplicates(emb, 0.9)}
    assert kinds == {(0, 40): "leakage", (5, 6): "conflicting-labels", (17, 52): "near-duplicate"}
    digests = [str(i) for i in range(n)]
    digests[52] = digests[17]  # the same bytes: finetune inspect's finding
    assert (17, 52) not in {(p.first, p.second) for p in find_duplicates(emb, 0.9, digests)}
