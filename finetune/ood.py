"""Out-of-distribution scores ("none of these"): how familiar an image looks to the model, higher is more familiar.

- `probability`: the calibrated top-1 probability, softmax(logits / T).max() (Hendrycks & Gimpel, ICLR 2017).
- `energy`: T * logsumexp(logits / T), the negative free energy (Liu et al., NeurIPS 2020): it keeps the size of
  the logits that the softmax normalises away.
- `knn`: the cosine similarity of the image's embedding (the head's input, L2-normalised) to its k-th nearest
  training embedding (Sun et al., ICML 2022, "Out-of-distribution detection with deep nearest neighbors"): far
  from everything the model was trained on is unfamiliar, however confident the head is.

A threshold turns a score into a rejection: below it, `unknown`. Training chooses it on val (train.calibration);
predict and the server apply it (deploy.reject). Pure tensor functions, shared by both and by benchmarks/.
"""

from __future__ import annotations

import torch

from .neighbors import nearest

SCORES = ("probability", "energy", "knn")
PROBABILITY, ENERGY, KNN = SCORES
KNN_K = 1  # which neighbour the knn score uses; by measurement (benchmarks/ood_scores.py, docs/data.md)


def max_probability(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    return (logits.float() / temperature).softmax(1).amax(1)


def energy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    return temperature * torch.logsumexp(logits.float() / temperature, dim=1)


def normalised(embeddings: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit length, float32: a dot product of two is their cosine similarity."""
    return torch.nn.functional.normalize(embeddings.float().flatten(1), dim=1)


def knn_similarity(embeddings: torch.Tensor, bank: torch.Tensor, k: int) -> torch.Tensor:
    """Cosine similarity of each embedding (not yet normalised) to its k-th most similar row of `bank` (unit rows;
    k is cut to the bank's size)."""
    if len(embeddings) == 0:
        return torch.zeros(0)
    sims, _ = nearest(normalised(embeddings), bank.float(), k)
    return sims[:, -1]


def score(name: str, logits: torch.Tensor, temperature: float = 1.0, embeddings: torch.Tensor | None = None,
          bank: torch.Tensor | None = None, k: int = 1) -> torch.Tensor:
    """The score `name` of each row: logits (and for knn the embeddings and the training bank) in, N scores out."""
    if name == PROBABILITY:
        return max_probability(logits, temperature)
    if name == ENERGY:
        return energy(logits, temperature)
    if name == KNN:
        if embeddings is None or bank is None:
            raise ValueError("the knn score needs the images' embeddings and the training embeddings")
        return knn_similarity(embeddings, bank, k)
    raise ValueError(f"unknown out-of-distribution score {name!r}; known: {', '.join(SCORES)}")


def keeping_threshold(familiar: torch.Tensor, false_rejection: float) -> float:
    """The largest threshold that rejects (score < threshold) at most `false_rejection` of `familiar`'s scores."""
    ranked = familiar.float().sort().values
    return float(ranked[int(false_rejection * len(ranked))])


def auroc(familiar: torch.Tensor, strange: torch.Tensor) -> float:
    """The probability that a familiar image scores above a strange one (ties count half): 1 separates them
    perfectly, 0.5 is chance. By ranks (Mann-Whitney U), so it holds for any score's scale."""
    both = torch.cat([familiar.double(), strange.double()])
    order = both.argsort()
    ranks = torch.empty_like(both)
    ranks[order] = torch.arange(1, len(both) + 1, dtype=torch.float64)
    for value in both.unique()[torch.unique(both, return_counts=True)[1] > 1]:  # ties: their mean rank
        tied = both == value
        ranks[tied] = ranks[tied].mean()
    n, m = len(familiar), len(strange)
    return float((ranks[:n].sum() - n * (n + 1) / 2) / (n * m))
