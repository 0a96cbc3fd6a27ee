"""Out-of-fold heads: each image is judged by heads that never saw it, and the accuracy comes with an interval."""

import numpy as np
import pytest

from finetune.audit.folds import out_of_fold, resampled_interval


def blobs(n_per=20, d=48, flip=(3, 30), seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(2, d)) * 1.5
    y = np.repeat([0, 1], n_per)
    x = centers[y] + rng.normal(size=(len(y), d))
    given = y.copy()
    given[list(flip)] = 1 - given[list(flip)]
    return x.astype(np.float32), y, given


@pytest.mark.slow
def test_flipped_labels_are_judged_by_heads_that_never_saw_them():
    x, truth, given = blobs()
    probs, acc = out_of_fold(x, given, ["a", "b"], folds=4, repeats=1)
    assert probs.shape == (40, 2) and np.allclose(probs.sum(1), 1)
    # a head fitted on the flipped photo itself would learn its wrong label (48 dims, 40 points); out of fold
    # the given label gets a low probability
    assert (probs[[3, 30], given[[3, 30]]] < 0.2).all()
    assert (probs.argmax(1) == truth).mean() >= 0.95
    assert len(acc.per_fold) == 4 and acc.interval[0] <= acc.mean <= acc.interval[1]
    assert set(acc.per_class_recall) == {"a", "b"}


def test_interval_is_wider_than_the_naive_one_and_zero_without_spread():
    accs = [0.9, 0.95, 0.85, 0.9, 0.92]
    mean, std, (lo, hi) = resampled_interval(accs, folds=5)
    naive = 2.776 * std / np.sqrt(5)
    assert mean == pytest.approx(0.904) and hi - lo > 2 * naive
    assert resampled_interval([0.8] * 5, 5)[2] == (0.8, 0.8)


def test_too_few_images_is_one_clear_error():
    from finetune.errors import DataError

    x, _, given = blobs()
    given[:] = 0
    given[0] = 1
    with pytest.raises(DataError, match="two images each"):
        out_of_fold(x, given, ["a", "b"])
