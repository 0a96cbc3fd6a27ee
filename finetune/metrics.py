"""Classification metrics as pure functions of NumPy arrays: no model, no files, easy to check by hand.

Conventions (those of scikit-learn, so figures compare): the confusion matrix has true classes as
rows and predicted classes as columns; a precision, recall or F1 whose denominator is zero is 0;
the macro average runs over the classes that occur in the truth or the predictions.
"""

from __future__ import annotations

import numpy as np

ECE_BINS = 15  # Guo et al. 2017, "On Calibration of Modern Neural Networks", use 15 equal-width bins


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the true class under softmax(logits / temperature)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    m = z.max(axis=1, keepdims=True)
    log_norm = m[:, 0] + np.log(np.exp(z - m).sum(axis=1))
    return float(np.mean(log_norm - z[np.arange(len(z)), labels]))


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """cm[i, j] = how many images of true class i were predicted as class j."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(labels, dtype=np.int64), np.asarray(predicted, dtype=np.int64)), 1)
    return cm


def per_class_scores(cm: np.ndarray) -> dict[str, np.ndarray]:
    """precision, recall, f1 and support per class from a confusion matrix."""
    tp = np.diag(cm).astype(np.float64)
    predicted, support = cm.sum(axis=0), cm.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def averaged_scores(cm: np.ndarray) -> dict[str, dict[str, float]]:
    """{"macro": {...}, "weighted": {...}} of precision, recall and f1 (support = all images)."""
    s = per_class_scores(cm)
    present = (s["support"] > 0) | (cm.sum(axis=0) > 0)
    total = s["support"].sum()
    out = {}
    for name, w in (("macro", present / max(1, present.sum())), ("weighted", s["support"] / max(1, total))):
        out[name] = {k: float((s[k] * w).sum()) for k in ("precision", "recall", "f1")}
        out[name]["support"] = int(total)
    return out


def top_k_accuracy(probs: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Share of images whose true class is among the k most probable."""
    if len(labels) == 0:
        return 0.0
    top = np.argsort(-np.asarray(probs), axis=1, kind="stable")[:, :k]
    return float(np.mean((top == np.asarray(labels)[:, None]).any(axis=1)))


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE: sum over equal-width confidence bins of |bin|/N * |accuracy(bin) - mean confidence(bin)|.

    Confidence is the top-1 probability; bin b holds confidences in (b/bins, (b+1)/bins].
    """
    probs = np.asarray(probs, dtype=np.float64)
    if len(probs) == 0:
        return 0.0
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == np.asarray(labels)).astype(np.float64)
    which = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The Wilson score interval for a rate (successes out of n); z = 1.96 is the two-sided 95% interval.

    Unlike the textbook p +- z*sqrt(p(1-p)/n) it stays inside [0, 1] and keeps close to its stated coverage
    for small n and rates near 0 or 1 (Brown, Cai & DasGupta 2001, "Interval Estimation for a Binomial
    Proportion"): 50 of 50 right gives 0.929-1.000, not 1.000-1.000. n = 0 gives (0, 1): nothing is known.
    """
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * np.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def epoch_rank(row: dict) -> tuple:
    """How epochs compare for best.pt: val accuracy (multi-label runs: val mAP, their rows' val_map) first, a tie
    goes to the lower val loss."""
    return row.get("val_map", row["val_acc"]), -row["val_loss"]


# ---- multi-label: scores (N x K, higher = more likely) against multi-hot targets (N x K of 0/1)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    return np.exp(-np.logaddexp(0.0, -z))  # 1 / (1 + e^-z) without overflow


def average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """AP of one class: the mean, over its positive images, of the precision among the images scored at least as
    high (scikit-learn's average_precision_score: sum of (R_n - R_{n-1}) P_n, tied scores taken together).
    NaN when the class has no positive image."""
    scores, targets = np.asarray(scores, dtype=np.float64), np.asarray(targets) > 0.5
    positives = int(targets.sum())
    if positives == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    s, t = scores[order], targets[order]
    last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]  # the last index of each run of tied scores
    tp = np.cumsum(t)[last]
    precision = tp / (last + 1)
    recall_gain = np.diff(np.r_[0, tp]) / positives
    return float((recall_gain * precision).sum())


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> tuple[float, np.ndarray]:
    """(mAP over the classes that have a positive image, per-class AP with NaN for those that have none)."""
    per_class = np.array([average_precision(scores[:, k], targets[:, k]) for k in range(targets.shape[1])])
    present = ~np.isnan(per_class)
    return (float(per_class[present].mean()) if present.any() else float("nan")), per_class


def multilabel_f1(predicted: np.ndarray, targets: np.ndarray) -> dict:
    """Micro F1 (every image-label decision pooled), macro F1 (the mean of the per-class F1s, over the classes
    that occur in the truth or the predictions, as averaged_scores does) and the per-class precision, recall, F1
    and support, of 0/1 decisions against 0/1 targets."""
    p, t = np.asarray(predicted) > 0.5, np.asarray(targets) > 0.5
    tp, fp, fn = (p & t).sum(0).astype(np.float64), (p & ~t).sum(0).astype(np.float64), \
        (~p & t).sum(0).astype(np.float64)
    precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=tp + fp > 0)
    recall = np.divide(tp, tp + fn, out=np.zeros_like(tp), where=tp + fn > 0)
    f1 = np.divide(2 * tp, 2 * tp + fp + fn, out=np.zeros_like(tp), where=2 * tp + fp + fn > 0)
    present = (tp + fp + fn) > 0
    micro_den = 2 * tp.sum() + fp.sum() + fn.sum()
    return {"micro_f1": float(2 * tp.sum() / micro_den) if micro_den else 0.0,
            "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
            "precision": precision, "recall": recall, "f1": f1, "support": t.sum(0).astype(np.int64)}


def f1_thresholds(probs: np.ndarray, targets: np.ndarray, default: float = 0.5) -> np.ndarray:
    """Per class, the threshold on its probability (0..1) that maximises its F1 on these images (a label is
    predicted when prob >= threshold): the midpoint between the lowest probability kept and the next one below,
    or 0 (a tie in F1: the higher threshold, fewer false alarms). `default` for a class with no positive image,
    where no threshold scores any F1."""
    scores, targets = np.asarray(probs, dtype=np.float64), np.asarray(targets) > 0.5
    out = np.full(scores.shape[1], float(default))
    for k in range(scores.shape[1]):
        s, t = scores[:, k], targets[:, k]
        positives = int(t.sum())
        if positives == 0:
            continue
        order = np.argsort(-s, kind="stable")
        s, t = s[order], t[order]
        last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]  # keep everything scored >= s[last]
        tp = np.cumsum(t)[last]
        f1 = 2 * tp / (positives + last + 1)
        best = int(np.flatnonzero(f1 >= f1.max() - 1e-12)[0])  # the first (highest threshold) of the best
        below = s[last[best] + 1] if last[best] + 1 < len(s) else 0.0
        out[k] = (s[last[best]] + below) / 2
    return out
