"""Near-duplicates and leakage: pairs of different files that either of two detectors calls the same photo.

- embedding: the cosine similarity of the L2-normalised pooled embeddings is at least THRESHOLD. Finds crops
  and flips; misses strong resizes of small photos (the pooled features of an upscaled blur change).
- phash: the 64-bit perceptual hashes (audit.hashes) differ in at most MAX_DISTANCE bits, as saved or with one
  of the two mirrored. Finds resized and re-encoded copies at any size; misses crops.

Both searches are neighbors.nearest (exact blocked matrix products, or the faiss inverted file when the problem
is large), the hashes as +-1 vectors whose dot product counts agreeing bits. Each image keeps its TOP_K most
similar others, which is all a duplicate group of up to TOP_K + 1 copies needs.

The thresholds were measured with benchmarks/audit_threshold.py (docs/audit.md) on four datasets (hymenoptera,
its 160-px crops, the 32-px textures of data/sample, 32-px cifar5) and three backbones (EfficientNet-Lite0/1/2):
- no pair of different natural photos reaches a cosine of 0.851 with any of the three backbones (Lite0 0.806,
  Lite1 0.844, Lite2 0.851 on hymenoptera; 0.845-0.849 on the crops), so 0.86, one value for all three (0.82,
  set on Lite0 and hymenoptera alone, reports 2 to 15 distinct pairs elsewhere). On synthetic textures distinct
  images reach 0.966: no embedding threshold separates them there, the hash does;
- every resized (50-90%) or re-encoded (JPEG q40-q90) copy of a photo is within 4 bits of it, small sources
  included, while two different photos are at least 12 apart (10 with a mirror); 32-px images move more (JPEG
  q40 up to 16 bits) and distinct textures of one pattern in two colours come as close as 4 (pHash is grey).
  8 keeps a 4-bit margin on photos and finds 86-100% of the resized and re-encoded 32-px copies;
- the mirrored hash finds the flips the embedding misses on 32-px images (cifar5: 92% -> 100%) and adds no
  distinct pair of photos within 8 bits (7 of textures), so it is on (MIRRORED).
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

THRESHOLD = 0.86
TOP_K = 10
MAX_DISTANCE = 8  # bits of 64
MIRRORED = True  # also hash each image mirrored left-right

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
