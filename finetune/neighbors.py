"""Nearest neighbours by cosine similarity: for each query row, the k most similar rows of a bank (both
L2-normalised, so a dot product is a cosine), by blocked matrix products with a running top-k, so memory stays at
a few BLOCK x BLOCK tiles. The audit's pair search (a set against itself) and the out-of-distribution score (val
or new images against the training set) both ask this one question.
"""

from __future__ import annotations

import torch

BLOCK = 4096


def nearest(queries: torch.Tensor, bank: torch.Tensor, k: int, *, exclude_self: bool = False, block: int = BLOCK
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(similarities, indices), each len(queries) x k, most similar first: the k rows of `bank` with the highest
    dot product with each row of `queries`. exclude_self: queries *are* the bank (same rows, same order), and a
    row is not its own neighbour. k is cut to what the bank has."""
    n = len(bank)
    k = min(k, n - 1 if exclude_self else n)
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
    if not sims:
        return torch.zeros((0, k)), torch.zeros((0, k), dtype=torch.long)
    return torch.cat(sims), torch.cat(idx)
