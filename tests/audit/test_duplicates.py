"""Near-duplicate pairs: the blocked top-k search finds what an all-pairs comparison finds, each pair gets the
kind its splits and labels say, and a pair found by either detector (embedding, pHash) says which found it."""

import numpy as np
import pytest
import torch

from finetune import neighbors
from finetune.audit.duplicates import MAX_DISTANCE, find_duplicates, similar_pairs
from finetune.audit.embeddings import Embeddings
from finetune.audit.hashes import BITS, Hashes


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


def hashed(n, seed=1):
    """Random 64-bit hashes (distinct rows differ in ~32 bits), and their mirrors as other random hashes."""
    rng = np.random.default_rng(seed)
    return rng.random((n, BITS)) < 0.5, rng.random((n, BITS)) < 0.5


def near(bits, flips, seed=2):
    out = bits.copy()
    out[np.random.default_rng(seed).choice(BITS, flips, replace=False)] ^= True
    return out


def detector_case():
    x = planted().numpy()  # embedding pairs (0, 40), (5, 6), (17, 52)
    n = len(x)
    bits, mirrored = hashed(n)
    bits[6] = near(bits[5], 3)  # both detectors
    bits[9] = near(bits[8], MAX_DISTANCE)  # the hashes only: a small copy the embedding misses
    bits[31] = near(mirrored[30], 2)  # 31 is 30 mirrored
    bits[12] = near(bits[11], MAX_DISTANCE + 1)  # just too far
    readable = np.ones(n, bool)
    bits[45], readable[44] = bits[44], False  # 44 could not be read: its zeros pair with nothing
    mirrored[44] = bits[20]
    emb = Embeddings(x, np.zeros(n, dtype=np.int64), [f"p{i}" for i in range(n)], np.zeros(n, dtype=np.int64),
                     ["a"], [])
    return emb, Hashes(bits, mirrored, readable)


def test_a_pair_is_reported_by_either_detector_and_says_which():
    emb, hashes = detector_case()
    bits, readable = hashes.bits, hashes.readable
    pairs = {(p.first, p.second): p for p in find_duplicates(emb, 0.9, hashes=hashes)}
    assert set(pairs) == {(0, 40), (5, 6), (17, 52), (8, 9), (30, 31)}
    assert {ij: p.detector for ij, p in pairs.items()} == {(0, 40): "embedding", (5, 6): "both", (17, 52): "embedding",
                                                         (8, 9): "phash", (30, 31): "phash"}
    assert (pairs[(8, 9)].distance, pairs[(8, 9)].mirrored) == (MAX_DISTANCE, False)
    assert (pairs[(30, 31)].distance, pairs[(30, 31)].mirrored) == (2, True)
    assert pairs[(8, 9)].similarity < 0.9 <= pairs[(0, 40)].similarity  # the cosine, whoever found it
    without_mirrors = find_duplicates(emb, 0.9, hashes=Hashes(bits, None, readable))
    assert (30, 31) not in {(p.first, p.second) for p in without_mirrors}
    assert all(p.distance is None for p in find_duplicates(emb, 0.9))


def test_the_approximate_search_reports_the_same_pairs(monkeypatch):
    pytest.importorskip("faiss")
    emb, hashes = detector_case()
    exact = [(p.first, p.second, p.detector, p.distance, p.mirrored) for p in find_duplicates(emb, 0.9, hashes=hashes)]
    monkeypatch.setattr(neighbors, "EXACT_LIMIT", 0)  # both detectors' searches through faiss
    assert neighbors.uses_approximate(len(emb), len(emb), BITS)
    assert [(p.first, p.second, p.detector, p.distance, p.mirrored)
            for p in find_duplicates(emb, 0.9, hashes=hashes)] == exact
