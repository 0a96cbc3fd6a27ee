"""The out-of-distribution scores: each one's formula, the knn neighbour it reads, the threshold rule and AUROC."""

import itertools

import pytest
import torch

from finetune import ood


def test_auroc_is_the_share_of_familiar_strange_pairs_ranked_right_ties_half():
    familiar, strange = torch.tensor([0.9, 0.8, 0.8, 0.3]), torch.tensor([0.8, 0.1, 0.5])
    pairs = [1.0 if f > s else 0.5 if f == s else 0.0 for f, s in itertools.product(familiar, strange)]
    assert ood.auroc(familiar, strange) == pytest.approx(sum(pairs) / len(pairs))
    assert ood.auroc(torch.tensor([2.0, 3.0]), torch.tensor([0.0, 1.0])) == 1.0
    assert ood.auroc(torch.tensor([0.0, 1.0]), torch.tensor([2.0, 3.0])) == 0.0
    assert ood.auroc(torch.ones(5), torch.ones(3)) == 0.5  # one score for everything tells nothing


def test_the_threshold_rejects_at_most_the_share_asked_of_the_familiar_scores():
    scores = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    for share in (0.0, 0.05, 0.2):
        threshold = ood.keeping_threshold(scores, share)
        assert int((scores < threshold).sum()) <= share * len(scores)
        assert int((scores <= threshold).sum()) > share * len(scores)  # the largest such: one more is over
    assert ood.keeping_threshold(torch.tensor([0.7]), 0.05) == pytest.approx(0.7)


def test_knn_reads_the_kth_most_similar_training_embedding():
    bank = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.0]]), dim=1)
    query = torch.tensor([[3.0, 0.0]])  # normalised inside: its cosines with the bank are 1, 0.8, 0, -1
    assert [float(ood.knn_similarity(query, bank, k)) for k in (1, 2, 3, 4)] == pytest.approx([1.0, 0.8, 0.0, -1.0])
    assert float(ood.knn_similarity(query, bank, 50)) == pytest.approx(-1.0)  # k is cut to the bank
    assert ood.knn_similarity(torch.zeros(0, 2), bank, 1).shape == (0,)


def test_probability_and_energy_follow_the_logits_at_the_temperature():
    logits = torch.tensor([[2.0, 0.0, 0.0], [20.0, 0.0, 0.0]])
    assert ood.score("probability", logits, 2.0).tolist() == pytest.approx(
        (logits / 2).softmax(1).amax(1).tolist())
    # the softmax saturates where the energy keeps the size of the logits
    assert ood.score("energy", logits, 1.0).tolist() == pytest.approx(torch.logsumexp(logits, 1).tolist())
    with pytest.raises(ValueError, match="needs the images' embeddings"):
        ood.score("knn", logits)
    with pytest.raises(ValueError, match="unknown out-of-distribution score"):
        ood.score("mahalanobis", logits)
