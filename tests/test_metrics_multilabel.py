"""Multi-label metrics in finetune.metrics against values worked out by hand."""

import numpy as np
import pytest

from finetune.metrics import (
    average_precision,
    epoch_rank,
    f1_thresholds,
    mean_average_precision,
    multilabel_f1,
    sigmoid,
)


def test_average_precision_by_hand():
    # ranked: pos, neg, pos, neg -> precision at the positives 1/1 and 2/3: AP = (1 + 2/3) / 2
    assert average_precision([0.9, 0.8, 0.7, 0.1], [1, 0, 1, 0]) == pytest.approx(5 / 6)
    # a tie between a positive and a negative counts them together: precision 1/2 at recall 1
    assert average_precision([0.5, 0.5], [1, 0]) == pytest.approx(0.5)
    assert average_precision([0.2, 0.9, 0.4], [1, 1, 1]) == pytest.approx(1.0)
    assert np.isnan(average_precision([0.2, 0.9], [0, 0]))


def test_map_leaves_out_a_class_without_positives():
    scores = np.array([[0.9, 0.1, 0.3], [0.8, 0.6, 0.2], [0.7, 0.9, 0.1], [0.1, 0.2, 0.4]])
    targets = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
    mean, per_class = mean_average_precision(scores, targets)
    # class 0 ranked 1,1,0,0 -> 1... (0.9 pos, 0.8 neg, 0.7 pos) = (1 + 2/3)/2; class 1 ranked 0.9 pos, 0.6 pos = 1
    assert per_class[0] == pytest.approx(5 / 6) and per_class[1] == pytest.approx(1.0) and np.isnan(per_class[2])
    assert mean == pytest.approx((5 / 6 + 1) / 2)


def test_micro_and_macro_f1_by_hand():
    predicted = np.array([[1, 0], [1, 1], [0, 0], [0, 1]])
    targets = np.array([[1, 0], [0, 1], [1, 0], [0, 0]])
    s = multilabel_f1(predicted, targets)
    # class 0: tp 1, fp 1, fn 1 -> F1 1/2; class 1: tp 1, fp 1, fn 0 -> F1 2/3; pooled: tp 2, fp 2, fn 1 -> 4/7
    assert s["f1"] == pytest.approx([0.5, 2 / 3])
    assert s["macro_f1"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert s["micro_f1"] == pytest.approx(4 / 7)
    assert list(s["support"]) == [2, 1]


def test_thresholds_are_f1_optimal_per_class():
    rng = np.random.default_rng(0)
    targets = rng.random((40, 3)) < 0.4
    probs = np.clip(targets * 0.3 + rng.random((40, 3)) * 0.7, 0, 1)
    chosen = f1_thresholds(probs, targets)
    def f1_at(k: int, t: float) -> float:
        return multilabel_f1(probs[:, [k]] >= t, targets[:, [k]])["f1"][0]

    for k in range(3):
        best = max(f1_at(k, t) for t in np.r_[probs[:, k], 0.0])  # every distinct decision rule
        assert f1_at(k, chosen[k]) == pytest.approx(best)
        assert 0 <= chosen[k] <= 1
    # keeping the top 1 or all 4 both give F1 2/3: the higher threshold wins; no positives: the default
    probs = np.array([[0.9, 0.3], [0.8, 0.2], [0.7, 0.1], [0.6, 0.1]])
    assert f1_thresholds(probs, np.array([[1, 0], [0, 0], [0, 0], [1, 0]])) == pytest.approx([0.85, 0.5])
    assert f1_thresholds(probs, np.array([[1, 0], [1, 0], [1, 0], [1, 0]]))[0] == pytest.approx(0.3)  # all: to 0


def test_sigmoid_and_epoch_rank_of_multilabel_rows():
    assert sigmoid(np.array([0.0, 1000.0, -1000.0])) == pytest.approx([0.5, 1.0, 0.0])
    rows = [{"val_acc": 0.9, "val_loss": 0.1, "val_map": 0.5}, {"val_acc": 0.1, "val_loss": 0.9, "val_map": 0.6}]
    assert max(rows, key=epoch_rank) is rows[1]  # mAP chooses, not the exact-match accuracy
