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

THRESHOLD = 0.82
TOP_K = 10

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
    similarity: float


def similar_pairs(x: torch.Tensor, threshold: float, k: int = TOP_K, block: int = BLOCK
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, similarity) for i < j whose rows of `x` (L2-normalised) have cosine >= threshold, j among the k most
    similar rows to i or i among those of j; most similar first."""
    n = len(x)
    best_v, best_i = nearest(x, x, k, exclude_self=True, block=block)
    keep = best_v >= threshold
    r = torch.arange(n).unsqueeze(1).expand_as(best_i)[keep].numpy()
    c, s = best_i[keep].numpy(), best_v[keep].numpy()
    lo, hi = np.minimum(r, c), np.maximum(r, c)
    _, first = np.unique(lo.astype(np.int64) * n + hi, return_index=True)  # (i, j) and (j, i) once
    order = first[np.argsort(-s[first], kind="stable")]
    return lo[order], hi[order], s[order]


def find_duplicates(emb: Embeddings, threshold: float = THRESHOLD, digests: list[str] | None = None) -> list[Pair]:
    """The near-duplicate pairs, each of one kind: leakage (train and val), conflicting-labels (one split, two
    classes), near-duplicate (one class). Pairs with the same `digests` (exact byte copies) are left to inspect."""
    lo, hi, s = similar_pairs(emb.normalised(), threshold)
    out = []
    for i, j, sim in zip(lo.tolist(), hi.tolist(), s.tolist()):
        if digests is not None and digests[i] == digests[j]:
            continue
        if emb.split[i] != emb.split[j]:
            kind = "leakage"
        elif emb.labels[i] != emb.labels[j]:
            kind = "conflicting-labels"
        else:
            kind = "near-duplicate"
        out.append(Pair(kind, i, j, min(1.0, sim)))
    return out
