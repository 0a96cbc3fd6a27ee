"""Metrics against a hand computation on a small fixed prediction set (worked out in the comments)."""

import math

import numpy as np
import pytest

from finetune.metrics import (
    averaged_scores,
    confusion_matrix,
    expected_calibration_error,
    nll,
    per_class_scores,
    softmax,
    top_k_accuracy,
    wilson_interval,
)

# 10 images, 3 classes. Confidence 0.95 for images 0-4, 0.55 for 5-9; `second` is the runner-up class.
LABELS = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 2])
PREDICTED = np.array([0, 0, 1, 2, 1, 1, 2, 2, 0, 0])
SECOND = np.array([1, 2, 0, 1, 0, 2, 0, 1, 2, 1])
CONFIDENCE = np.array([0.95] * 5 + [0.55] * 5)


def fixed_probs() -> np.ndarray:
    probs = np.zeros((10, 3))
    for i, (p, s, c) in enumerate(zip(PREDICTED, SECOND, CONFIDENCE)):
        third = 3 - p - s
        probs[i, p], probs[i, s], probs[i, third] = c, (1 - c) * 0.6, (1 - c) * 0.4
    return probs


def test_confusion_matrix_by_hand():
    cm = confusion_matrix(LABELS, PREDICTED, 3)
    # true 0 -> predicted 0,0,1,2; true 1 -> 1,1; true 2 -> 2,2,0,0
    assert cm.tolist() == [[2, 1, 1], [0, 2, 0], [2, 0, 2]]
    assert cm.sum() == len(LABELS)


def test_per_class_and_averages_by_hand():
    cm = confusion_matrix(LABELS, PREDICTED, 3)
    s = per_class_scores(cm)
    # precision = tp / predicted as the class (column sums 4, 3, 3); recall = tp / support (4, 2, 4)
    assert s["precision"] == pytest.approx([2 / 4, 2 / 3, 2 / 3])
    assert s["recall"] == pytest.approx([2 / 4, 2 / 2, 2 / 4])
    assert s["f1"] == pytest.approx([0.5, 0.8, 4 / 7])  # 2PR/(P+R): (2/3*1)*2/(5/3) = 0.8; (1/3)*2/(7/6) = 4/7
    assert s["support"].tolist() == [4, 2, 4]
    avg = averaged_scores(cm)
    assert avg["macro"]["precision"] == pytest.approx(11 / 18)
    assert avg["macro"]["recall"] == pytest.approx(2 / 3)
    assert avg["macro"]["f1"] == pytest.approx((0.5 + 0.8 + 4 / 7) / 3)
    assert avg["weighted"]["precision"] == pytest.approx(0.4 * 0.5 + 0.2 * 2 / 3 + 0.4 * 2 / 3)  # 0.6
    assert avg["weighted"]["recall"] == pytest.approx(0.6)  # weighted recall is the accuracy
    assert avg["weighted"]["f1"] == pytest.approx(0.4 * 0.5 + 0.2 * 0.8 + 0.4 * 4 / 7)
    assert avg["macro"]["support"] == avg["weighted"]["support"] == 10


def test_undefined_scores_are_zero_and_absent_classes_leave_the_macro_average():
    cm = confusion_matrix(np.array([0, 0, 1]), np.array([0, 0, 0]), 3)  # class 1 never predicted, class 2 absent
    s = per_class_scores(cm)
    assert s["precision"].tolist() == [2 / 3, 0.0, 0.0] and s["recall"].tolist() == [1.0, 0.0, 0.0]
    assert averaged_scores(cm)["macro"]["recall"] == pytest.approx(0.5)  # over classes 0 and 1 only


def test_top_k_accuracy_by_hand():
    probs = fixed_probs()
    assert top_k_accuracy(probs, LABELS, 1) == pytest.approx(0.6)
    # wrong at top-1: images 2, 3, 8, 9; the truth is the runner-up for 2 and 8 only
    assert top_k_accuracy(probs, LABELS, 2) == pytest.approx(0.8)
    assert top_k_accuracy(probs, LABELS, 3) == 1.0


def test_expected_calibration_error_by_hand():
    # bin (14/15, 1]: images 0-4, accuracy 3/5, confidence 0.95 -> |0.6 - 0.95| * 5/10 = 0.175
    # bin (8/15, 9/15]: images 5-9, accuracy 3/5, confidence 0.55 -> |0.6 - 0.55| * 5/10 = 0.025
    assert expected_calibration_error(fixed_probs(), LABELS) == pytest.approx(0.2)
    perfect = np.eye(3)[[0, 1, 2]]
    assert expected_calibration_error(perfect, np.array([0, 1, 2])) == 0.0


def test_nll_and_softmax_by_hand():
    logits = np.array([[0.0, math.log(3)]])  # p = (1/4, 3/4)
    assert softmax(logits)[0] == pytest.approx([0.25, 0.75])
    assert nll(logits, np.array([0])) == pytest.approx(math.log(4))
    # p = (1/3, 2/3)
    assert nll(logits, np.array([1]), temperature=math.log(3) / math.log(2)) == pytest.approx(math.log(1.5))


def test_wilson_interval_by_hand_and_at_the_edges():
    lo, hi = wilson_interval(8, 10)  # the textbook example: 0.490-0.943
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    assert wilson_interval(50, 50)[0] == pytest.approx(0.9287, abs=1e-4) and wilson_interval(50, 50)[1] == 1.0
    assert wilson_interval(0, 20)[0] == 0.0
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_wilson_interval_covers_the_true_rate_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    draws = 2000
    for rate, n in ((0.9, 60), (0.5, 25), (0.97, 200)):
        hits = rng.binomial(n, rate, size=draws)
        covered = sum(lo <= rate <= hi for lo, hi in (wilson_interval(int(k), n) for k in hits))
        assert 0.93 <= covered / draws <= 0.97, (rate, n, covered / draws)
