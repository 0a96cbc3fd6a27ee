"""Out-of-fold heads on the cached embeddings: every image's class probabilities from a head that never saw it,
and the head's accuracy with its spread over repeated stratified k-fold.

The heads are the L-BFGS linear probe (train.head_solver). Its L2 strength is chosen once, by the solver's own
k-fold sweep over all the images (every second decade from 1e-4 to 1e4, 3 folds: the choice is flat near the
optimum, and the weakest strengths of the solver's grid cost the most iterations on separable data),
then every fold's head is fitted at it: one scalar chosen on the same images (a small optimistic bias, far below
the spread between folds on small data) instead of a nested sweep per fold.

The 95% interval of the mean fold accuracy uses the corrected resampled t statistic (Nadeau & Bengio 2003,
"Inference for the Generalization Error"; Bouckaert & Frank 2004 for repeated k-fold): folds share most of
their training images, so their accuracies are correlated and the naive std/sqrt(n) interval is too narrow;
the variance is inflated by n_test/n_train = 1/(k-1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import DataError
from ..runtime.threads import one_thread
from ..train.head_solver import COARSE_GRID, fit_linear_head, stratified_folds, sweep_l2

FOLDS = 5
REPEATS = 3
SELECT_GRID = tuple(l2 for l2 in COARSE_GRID[::2] if l2 >= 1e-4)  # 1e-4, 1e-2, ..., 1e4
SELECT_FOLDS = 3
# two-sided 95% quantiles of Student's t by degrees of freedom (beyond the table: the normal's 1.96)
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
        20: 2.086, 24: 2.064, 29: 2.045, 39: 2.023, 49: 2.010, 99: 1.984}


@dataclass
class Accuracy:
    """The head's accuracy over `repeats` x `folds` held-out folds: their mean, std and a 95% interval."""
    folds: int
    repeats: int
    per_fold: list[float]
    l2: float
    mean: float = 0.0
    std: float = 0.0
    interval: tuple[float, float] = (0.0, 0.0)
    pooled: float = 0.0  # accuracy of the repeat-averaged out-of-fold probabilities
    per_class_recall: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"folds": self.folds, "repeats": self.repeats, "l2": self.l2, "mean": self.mean, "std": self.std,
                "interval95": list(self.interval), "pooled_out_of_fold": self.pooled,
                "per_class_recall": self.per_class_recall, "per_fold": self.per_fold,
                "interval_method": "corrected resampled t (Nadeau & Bengio 2003)"}


def t975(df: int) -> float:
    below = [d for d in T975 if d <= df]
    return T975[max(below)] if df <= 99 else 1.96


def resampled_interval(accs: list[float], folds: int) -> tuple[float, float, tuple[float, float]]:
    """(mean, std, 95% interval clipped to [0, 1]) of fold accuracies from repeated `folds`-fold."""
    a = np.asarray(accs, dtype=np.float64)
    mean = float(a.mean())
    std = float(a.std(ddof=1)) if len(a) > 1 else 0.0
    half = t975(len(a) - 1) * math.sqrt((1 / len(a) + 1 / (folds - 1)) * std ** 2) if len(a) > 1 else 0.0
    return mean, std, (max(0.0, mean - half), min(1.0, mean + half))


def out_of_fold(features: np.ndarray, labels: np.ndarray, class_names: list[str], folds: int = FOLDS,
                repeats: int = REPEATS, seed: int = 0, progress=None) -> tuple[np.ndarray, Accuracy]:
    """(N x C out-of-fold probabilities, averaged over the repeats; the accuracy over every fold)."""
    num_classes = len(class_names)
    x, y = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)), torch.from_numpy(labels).long()
    counts = np.bincount(labels, minlength=num_classes)
    small = [f"{class_names[c]} ({counts[c]})" for c in range(num_classes) if 0 < counts[c] < 2]
    if small or (counts > 0).sum() < 2:
        raise DataError("out-of-fold heads need at least two classes with two images each"
                        + (f"; too few: {', '.join(small)}" if small else ""))
    folds = int(min(folds, counts[counts > 0].min()))
    with one_thread():  # tiny full-batch problems: a thread pool's synchronisation costs more than the maths
        probs, accs, l2 = _fit_folds(x, y, num_classes, folds, repeats, seed, progress)
    mean, std, interval = resampled_interval(accs, folds)
    predicted = probs.argmax(1)
    recall = {class_names[c]: float((predicted[labels == c] == c).mean()) for c in range(num_classes) if counts[c]}
    return probs, Accuracy(folds, repeats, accs, l2, mean, std, interval, float((predicted == labels).mean()), recall)


def _fit_folds(x: torch.Tensor, y: torch.Tensor, num_classes: int, folds: int, repeats: int, seed: int, progress):
    sweep = sweep_l2(x, y, None, None, num_classes, grid=SELECT_GRID, fine=False, folds=min(folds, SELECT_FOLDS),
                     seed=seed)
    labels = y.numpy()
    probs = np.zeros((len(y), num_classes), dtype=np.float64)
    accs = []
    for r in range(repeats):
        for fit_idx, held in stratified_folds(y, folds, seed + 1 + r):
            head = fit_linear_head(x[fit_idx], y[fit_idx], num_classes, sweep.chosen)
            p = torch.softmax(head.logits(x[held]).double(), 1).numpy()
            probs[held.numpy()] += p / repeats
            accs.append(float((p.argmax(1) == labels[held.numpy()]).mean()))
            if progress is not None:
                progress()
    return probs, accs, sweep.chosen
