"""Nearest neighbours by cosine similarity: for each query row, the k most similar rows of a bank (both
L2-normalised, so a dot product is a cosine). The audit's pair search (a set against itself) and the
out-of-distribution score (val or new images against the training set) both ask this one question.

Two ways to answer it, one result type:
- exact: blocked matrix products with a running top-k, so memory stays at a few BLOCK x BLOCK tiles; time grows
  as queries x bank x dim (100k x 100k x 1280 took 721 s on 2 busy cores, docs/audit.md);
- approximate, when the problem is larger than EXACT_LIMIT and faiss (faiss-cpu, in the audit extra) is
  installed: an HNSW graph over inner product (Malkov & Yashunin 2018), built once over the bank, searched with
  every query. Its similarities are exact dot products of the vectors it returns; what it may miss is a true
  neighbour the graph walk does not reach (benchmarks/audit_scale.py measures how often, against exact).
"""

from __future__ import annotations

import importlib.util

import numpy as np
import torch

from .errors import ConfigError

BLOCK = 4096
# Exact up to this many multiply-adds (queries x bank x dim): 20k x 20k embeddings of 1280 dims, about 4-25 s on
# 2 cores (the 20k point of the N^2 line in docs/audit.md); past it the exact search grows as N^2 while the
# graph grows as about N log N. 64-bit hashes (dim 64) stay exact up to ~90k images.
EXACT_LIMIT = 20_000 * 20_000 * 1280
HNSW_M = 32  # graph degree: faiss's usual value for high-recall search of dense vectors
EF_CONSTRUCTION = 80
EF_SEARCH = 128  # candidates kept during a search (at least 2k)


def faiss_installed() -> bool:
    return importlib.util.find_spec("faiss") is not None


def uses_approximate(n_queries: int, n_bank: int, dim: int, approximate: bool | None = None) -> bool:
    """Whether nearest() answers this problem by the faiss graph: `approximate` when given, else when the problem is
    past EXACT_LIMIT and faiss is installed."""
    if approximate is None:
        return n_queries * n_bank * dim > EXACT_LIMIT and faiss_installed()
    return approximate


def nearest(queries: torch.Tensor, bank: torch.Tensor, k: int, *, exclude_self: bool = False, block: int = BLOCK,
            approximate: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(similarities, indices), each len(queries) x k, most similar first: the k rows of `bank` with the highest
    dot product with each row of `queries`. exclude_self: row i of the queries is not a neighbour of row i of the
    bank (queries *are* the bank, or a view of each of its rows). k is cut to what the bank has. approximate:
    None chooses by size (uses_approximate), True forces the faiss graph, False the exact search."""
    n = len(bank)
    k = min(k, n - 1 if exclude_self else n)
    if len(queries) == 0 or k <= 0:
        return torch.zeros((len(queries), max(k, 0))), torch.zeros((len(queries), max(k, 0)), dtype=torch.long)
    if uses_approximate(len(queries), n, bank.shape[1], approximate):
        return _graph_search(queries, bank, k, exclude_self)
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


def _graph_search(queries, bank, k, exclude_self):
    try:
        import faiss
    except ImportError as exc:
        raise ConfigError("the approximate neighbour search needs faiss: pip install 'finetune[audit]' "
                          "(or faiss-cpu)") from exc
    b = _float32(bank)
    q = b if queries is bank else _float32(queries)
    index = faiss.IndexHNSWFlat(b.shape[1], HNSW_M, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = EF_CONSTRUCTION
    index.add(b)
    want = k + 1 if exclude_self else k
    index.hnsw.efSearch = max(EF_SEARCH, 2 * want)
    s, i = index.search(q, want)
    if exclude_self:  # drop the row itself where the walk returned it, else the last (the (k+1)-th) result
        keep = i != np.arange(len(q))[:, None]
        keep[keep.all(1), -1] = False
        s, i = s[keep].reshape(len(q), k), i[keep].reshape(len(q), k)
    s[i < 0] = -2.0  # fewer than k reached (a tiny or disconnected graph): the exact search's "nothing" value
    return torch.from_numpy(np.ascontiguousarray(s)), torch.from_numpy(i.astype(np.int64))


def _float32(x: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
