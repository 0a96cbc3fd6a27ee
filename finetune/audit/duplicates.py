"""Near-duplicates and leakage: pairs of different files whose embeddings are nearly identical.

Cosine similarity of L2-normalised pooled embeddings, found by neighbors.nearest (BLOCK x BLOCK tiles of
torch.mm, a running top-k per row), so memory stays at a few tiles and time grows as N^2 / BLOCK^2 fast matrix
products, never an N^2 Python loop: 100k embeddings of dimension 1280 took 721 s on 2 busy CPU cores with
1.5 GiB peak memory (benchmarks/audit_scale.py, docs/audit.md). Each image keeps its TOP_K most similar others,
which is all a duplicate group of up to TOP_K + 1 copies needs.

THRESHOLD was measured on hymenoptera with EfficientNet-Lite0's ImageNet weights (benchmarks/audit_threshold.py,
docs/audit.md): no photo of the 398 has a *different* photo above 0.806 (99th percentile 0.797), while its
JPEG-q40 and 90%-centre-crop copies score at least 0.834 and 0.838, and its half-size and 80%-corner-crop copies
score from 0.726 up (78% of them above 0.82). 0.82 sits just above every distinct pair; thumbnails a quarter
the size (0.28 to 0.73) are out of reach of any threshold that keeps distinct photos apart.
Exact byte copies are `finetune inspect`'s finding (data.doctor), and training already leaves out the ones that
leak or conflict; pairs with the same content are not reported again here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..neighbors import BLOCK, nearest
from .embeddings import Embeddings
from .hashes import BITS, Hashes, as_vectors, hamming

THRESHOLD = 0.82
TOP_K = 10
MAX_DISTANCE = 10  # bits of 64: measured, see docs/audit.md
MIRRORED = True  # also hash each image mirrored

KINDS = {
    "leakage": "nearly the same photo in train and val: it inflates validation accuracy; keep one, in one split",
    "conflicting-labels": "nearly the same photo under two classes: at most one label is right",
    "near-duplicate": "nearly the same photo twice in one class: it counts double in training; keep one",
}


@dataclass
class Pair:
    kind: str
    first: int  # indices into the Embeddings
    second: int
    similarity: float  # cosine of the two embeddings, whichever detector found the pair
    detector: str = "embedding"  # which found it: "embedding" (cosine >= threshold), "phash" (hamming <= max), "both"
    distance: int | None = None  # pHash bits that differ, the smaller of as saved and one mirrored; None: no hashes
    mirrored: bool = False  # the pHashes are close only with one photo mirrored left-right


def similar_pairs(x: torch.Tensor, threshold: float, k: int = TOP_K, block: int = BLOCK,
                  views: torch.Tensor | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, similarity) for i < j whose rows of `x` (L2-normalised) have cosine >= threshold, j among the k most
    similar rows to i or i among those of j; most similar first. views: another view of each row of x (its
    mirrored hash), matched against the other rows of x instead of x itself."""
    n = len(x)
    best_v, best_i = nearest(x if views is None else views, x, k, exclude_self=True, block=block)
    keep = best_v >= threshold
    r = torch.arange(n).unsqueeze(1).expand_as(best_i)[keep].numpy()
    c, s = best_i[keep].numpy(), best_v[keep].numpy()
    lo, hi = np.minimum(r, c), np.maximum(r, c)
    _, first = np.unique(lo.astype(np.int64) * n + hi, return_index=True)  # (i, j) and (j, i) once
    order = first[np.argsort(-s[first], kind="stable")]
    return lo[order], hi[order], s[order]


def hash_pairs(hashes: Hashes, max_distance: int = MAX_DISTANCE) -> dict[tuple[int, int], bool]:
    """{(i, j): mirrored} for i < j whose pHashes differ in at most max_distance bits, as saved (False) or only
    with one of the two mirrored (True). Found by the same neighbour search on the hashes as +-1 vectors."""
    cut = 1 - 2 * max_distance / BITS - 1e-6  # the cosine of two such vectors at max_distance bits
    unreadable = ~torch.from_numpy(hashes.readable)
    v = as_vectors(hashes.bits)
    v[unreadable] = 0.0  # an unreadable image is near nothing
    out = {}
    if hashes.mirrored is not None:
        views = as_vectors(hashes.mirrored)
        views[unreadable] = 0.0
        for i, j, _ in zip(*similar_pairs(v, cut, views=views)):
            out[(int(i), int(j))] = True
    for i, j, _ in zip(*similar_pairs(v, cut)):
        out[(int(i), int(j))] = False
    return out


def find_duplicates(emb: Embeddings, threshold: float = THRESHOLD, digests: list[str] | None = None,
                    hashes: Hashes | None = None, max_distance: int = MAX_DISTANCE) -> list[Pair]:
    """The near-duplicate pairs found by either detector (embedding cosine >= threshold; pHash within max_distance
    bits, when `hashes` are given), each of one kind: leakage (train and val), conflicting-labels (one split, two
    classes), near-duplicate (one class); most similar embeddings first. Pairs with the same `digests` (exact byte
    copies) are left to inspect."""
    x = emb.normalised()
    lo, hi, _ = similar_pairs(x, threshold)
    found = {(int(i), int(j)): {"embedding"} for i, j in zip(lo, hi)}
    by_hash = hash_pairs(hashes, max_distance) if hashes is not None else {}
    for ij in by_hash:
        found.setdefault(ij, set()).add("phash")
    out = []
    for (i, j), detectors in found.items():
        if digests is not None and digests[i] == digests[j]:
            continue
        if emb.split[i] != emb.split[j]:
            kind = "leakage"
        elif emb.labels[i] != emb.labels[j]:
            kind = "conflicting-labels"
        else:
            kind = "near-duplicate"
        distance = None
        if hashes is not None and hashes.readable[i] and hashes.readable[j]:
            b, m = hashes.bits, hashes.mirrored if hashes.mirrored is not None else hashes.bits
            distance = int(min(hamming(b[i], b[j]), hamming(m[i], b[j]), hamming(b[i], m[j])))
        detector = "both" if len(detectors) == 2 else detectors.pop()
        out.append(Pair(kind, i, j, min(1.0, float(x[i] @ x[j])), detector, distance, by_hash.get((i, j), False)))
    return sorted(out, key=lambda p: -p.similarity)
