"""Nearest neighbours by cosine similarity: for each query row, the k most similar rows of a bank (both
L2-normalised, so a dot product is a cosine). The audit's pair search (a set against itself) and the
out-of-distribution score (val or new images against the training set) both ask this one question.

Two ways to answer it, one result type:
- exact: blocked matrix products with a running top-k, so memory stays at a few BLOCK x BLOCK tiles; time grows
  as queries x bank x dim (100k x 100k x 1280 took 350 s on 2 quiet cores; benchmarks/audit_scale.py);
- approximate, when the problem is larger than EXACT_LIMIT and faiss (faiss-cpu, in the audit extra) is
  installed: an inverted file over inner product (faiss IndexIVFFlat; Jegou et al. 2011): the bank's rows
  clustered into ~4 sqrt(N) cells by k-means, each query compared with the rows of its NPROBE nearest cells only.
  Its similarities are exact dot products of the rows it returns; what it can miss is a neighbour in a cell it
  did not probe (benchmarks/audit_scale.py measures how often, against exact). Chosen over an HNSW graph by
  measurement: on 20k random 1280-d rows the graph (M 16) took longer than the exact search and missed 2 of 100
  planted near copies; the inverted file took 40% of the exact time and found all 100.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import torch

from .errors import ConfigError

BLOCK = 4096
# Exact up to this many multiply-adds (queries x bank x dim): 20k x 20k embeddings of 1280 dims, about 4-25 s on
# 2 cores (the 20k point of the N^2 line in docs/audit.md); past it the inverted file compares each query with the
# rows of PROBES cells, plus 4 sqrt(N) centroids. 64-bit hashes (dim 64) stay exact up to ~90k images.
EXACT_LIMIT = 20_000 * 20_000 * 1280
CELLS_PER_ROOT = 4  # cells: 4 sqrt(N) (faiss's guideline), at most N / 40 so k-means has 40 rows a cell
# Cells each query looks into: on 100k random 1280-d rows with 100 planted near copies, 8 of 1265 cells found all
# 100 in 27 s, 20 cells all 100 in 56 s, 4 cells 99, 2 cells 97 (the search's time is the scan of those cells).
PROBES = 8
TRAIN_PER_CELL = 40  # k-means runs on this many rows a cell (a seeded sample; faiss warns under 39), 10 iterations

def faiss_installed() -> bool:
    return importlib.util.find_spec("faiss") is not None


def uses_approximate(n_queries: int, n_bank: int, dim: int, approximate: bool | None = None) -> bool:
    """Whether nearest() answers this problem by the faiss index: `approximate` when given, else when the problem is
    past EXACT_LIMIT and faiss is installed."""
    if approximate is None:
        return n_queries * n_bank * dim > EXACT_LIMIT and faiss_installed()
    return approximate


def nearest(queries: torch.Tensor, bank: torch.Tensor, k: int, *, exclude_self: bool = False, block: int = BLOCK,
            approximate: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(similarities, indices), each len(queries) x k, most similar first: the k rows of `bank` with the highest
    dot product with each row of `queries`. exclude_self: row i of the queries is not a neighbour of row i of the
    bank (queries *are* the bank, or a view of each of its rows). k is cut to what the bank has. approximate:
    None chooses by size (uses_approximate), True forces the faiss index, False the exact search."""
    n = len(bank)
    k = min(k, n - 1 if exclude_self else n)
    if len(queries) == 0 or k <= 0:
        return torch.zeros((len(queries), max(k, 0))), torch.zeros((len(queries), max(k, 0)), dtype=torch.long)
    if uses_approximate(len(queries), n, bank.shape[1], approximate):
        return _index_search(queries, bank, k, exclude_self)
    return _exact(queries, bank, k, exclude_self, block)


def _exact(queries, bank, k, exclude_self, block):
    n = len(bank)
    sims, idx = [], []
    with torch.inference_mode():
        for start in range(0, len(queries), block):
            a = queries[start:start + block]
            best_v = torch.full((len(a), k), -2.0)
            best_i = torch.zeros((len(a), k), dtype=torch.long)
            for col in range(0, n, block):
                s = torch.mm(a, bank[col:col + block].T)
                if exclude_self:  # the diagonal of the whole matrix, where it crosses this tile
                    rows = torch.arange(start, start + len(a))
                    inside = (rows >= col) & (rows < col + s.shape[1])
                    s[inside.nonzero().squeeze(1), rows[inside] - col] = -2.0
                v, i = s.topk(min(k, s.shape[1]), dim=1)
                best_v, pick = torch.cat([best_v, v], 1).topk(k, dim=1)
                best_i = torch.cat([best_i, i + col], 1).gather(1, pick)
            sims.append(best_v)
            idx.append(best_i)
    return torch.cat(sims), torch.cat(idx)


def _index_search(queries, bank, k, exclude_self):
    try:
        import faiss
    except ImportError as exc:
        raise ConfigError("the approximate neighbour search needs faiss: pip install 'finetune[audit]' "
                          "(or faiss-cpu)") from exc
    b = _float32(bank)
    q = b if queries is bank else _float32(queries)
    n, dim = b.shape
    cells = max(1, min(round(CELLS_PER_ROOT * np.sqrt(n)), n // 40))
    quantizer = faiss.IndexFlatIP(dim)  # kept referenced while the index lives
    if cells < 2:  # under 80 rows: one cell is the whole bank (and k-means on it would print a warning)
        index = quantizer
    else:
        index = faiss.IndexIVFFlat(quantizer, dim, cells, faiss.METRIC_INNER_PRODUCT)
        index.cp.niter, index.cp.seed = 10, 0
        train = np.sort(np.random.default_rng(0).choice(n, min(n, TRAIN_PER_CELL * cells), replace=False))
        index.train(b[train])
        index.nprobe = min(cells, PROBES)
    index.add(b)
    want = k + 1 if exclude_self else k
    s, i = index.search(q, want)
    if exclude_self:  # drop the row itself where it was returned, else the last (the (k+1)-th) result
        keep = i != np.arange(len(q))[:, None]
        keep[keep.all(1), -1] = False
        s, i = s[keep].reshape(len(q), k), i[keep].reshape(len(q), k)
    s[i < 0] = -2.0  # fewer than k rows in the probed cells: the exact search's "nothing" value
    return torch.from_numpy(np.ascontiguousarray(s)), torch.from_numpy(i.astype(np.int64))


def _float32(x: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
