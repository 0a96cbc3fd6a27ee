"""The optimal linear head on frozen features: L2-regularised multinomial logistic regression, solved by
full-batch L-BFGS (the objective is convex, so there is one optimum and no learning rate to guess), with the
regularisation strength chosen by a log-spaced sweep (the linear-probe protocol of Kornblith et al. 2019,
"Do Better ImageNet Models Transfer Better?", which sweeps 1e-6 ... 1e5).

The objective, for features X (N x D), labels y and strength l2:

    mean_i w_{y_i} * CE(X_i W^T + b, y_i) / mean_i w_{y_i}  +  l2 / 2 * ||W||^2      (the bias is not penalised)

Multi-label (labels an N x K float tensor of 0/1 targets, task: multilabel): one-vs-rest logistic regression,
each class its own binary problem with the same penalty, solved together (the sum of the K objectives is
separable, so one L-BFGS over all of W minimises each):

    sum_k mean_i BCE(X_i W_k^T + b_k, Y_ik)  +  l2 / 2 * ||W||^2

and the sweep's held-out loss is the mean BCE (what the run reports), its accuracy the exact-match share.

Pure tensors in, tensors out: no model, no files. fit() writes the chosen head into the model
(train.loop); `finetune audit` fits out-of-fold heads with fit_linear_head.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

# The coarse grid: one strength per decade over Kornblith's range; then quarter decades around the best.
COARSE_GRID = tuple(10.0 ** e for e in range(-6, 6))
FINE_STEPS = (-0.75, -0.5, -0.25, 0.25, 0.5, 0.75)
MAX_ITER = 100  # per fit: converged (loss change < 1e-10) from l2 1e-3 up on 244 x 1280 features; weaker ones stop here
FOLDS = 5  # k-fold on train when there is no validation set


@dataclass(frozen=True)
class LinearHead:
    """weight (C x D) and bias (C), float32 on the CPU, and the strength they were fitted at."""
    weight: torch.Tensor
    bias: torch.Tensor
    l2: float

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return features.to(self.weight) @ self.weight.T + self.bias


@dataclass(frozen=True)
class SweepPoint:
    l2: float
    train_loss: float  # mean cross-entropy on the images it was fitted on (no penalty)
    val_loss: float  # mean cross-entropy on held-out images (val, or the k folds' held-out parts)
    val_acc: float


@dataclass
class HeadSweep:
    """The sweep's points (sorted by l2), the chosen strength, the head refitted at it on all of train, and how
    the choice was scored: "val" or "k-fold"."""
    points: list[SweepPoint]
    chosen: float
    head: LinearHead
    selected_by: str
    seconds: float = 0.0

    @property
    def best(self) -> SweepPoint:
        return next(p for p in self.points if p.l2 == self.chosen)

    def rows(self) -> list[dict]:
        return [{"l2": p.l2, "train_loss": p.train_loss, "val_loss": p.val_loss, "val_acc": p.val_acc,
                 "chosen": int(p.l2 == self.chosen)} for p in self.points]


def _loss(logits: torch.Tensor, labels: torch.Tensor, class_weights=None, label_smoothing: float = 0.0,
          summed: bool = False) -> torch.Tensor:
    """Cross-entropy on class labels; on multi-hot targets (2-D) BCE, summed over the classes when `summed`
    (the one-vs-rest objective) else the mean over images and labels (what runs report)."""
    if labels.ndim == 2:
        loss = F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
        return loss * labels.shape[1] if summed else loss
    return F.cross_entropy(logits, labels, weight=class_weights, label_smoothing=label_smoothing)


def _correct(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Right per image: the top class, or (multi-hot) every label at probability 0.5."""
    if labels.ndim == 2:
        return ((logits > 0) == (labels > 0.5)).all(1)
    return logits.argmax(1) == labels


def objective(head: LinearHead | tuple, features: torch.Tensor, labels: torch.Tensor, l2: float,
              class_weights: torch.Tensor | None = None, label_smoothing: float = 0.0) -> float:
    """The regularised loss above, for a head (or a (weight, bias) pair) on these features."""
    weight, bias = (head.weight, head.bias) if isinstance(head, LinearHead) else head
    x = features.to(torch.float64)
    w, b = weight.detach().to(torch.float64), bias.detach().to(torch.float64)
    cw = class_weights.to(torch.float64) if class_weights is not None else None
    loss = _loss(x @ w.T + b, labels, cw, label_smoothing, summed=True)
    return float(loss + 0.5 * l2 * (w * w).sum())


def fit_linear_head(features: torch.Tensor, labels: torch.Tensor, num_classes: int, l2: float,
                    class_weights: torch.Tensor | None = None, label_smoothing: float = 0.0,
                    start: LinearHead | None = None, max_iter: int = MAX_ITER) -> LinearHead:
    """The minimiser of the objective above by full-batch L-BFGS with a strong-Wolfe line search, in float64
    on the features' device. `start` warm-starts it (a neighbouring strength's head: the sweep is faster)."""
    if l2 < 0 or not math.isfinite(l2):
        raise ValueError(f"l2 must be a finite number >= 0, got {l2}")
    x = features.detach().to(torch.float64)
    y = labels.detach().to(x.device, torch.float64 if labels.ndim == 2 else torch.long)
    cw = class_weights.detach().to(x.device, torch.float64) if class_weights is not None else None
    d = x.shape[1]
    if start is not None:
        w = start.weight.detach().to(x.device, torch.float64).clone().requires_grad_(True)
        b = start.bias.detach().to(x.device, torch.float64).clone().requires_grad_(True)
    else:
        w = torch.zeros(num_classes, d, dtype=torch.float64, device=x.device, requires_grad=True)
        b = torch.zeros(num_classes, dtype=torch.float64, device=x.device, requires_grad=True)
    optimizer = torch.optim.LBFGS([w, b], lr=1, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
                                  tolerance_grad=1e-7, tolerance_change=1e-10)

    def closure():
        optimizer.zero_grad()
        loss = _loss(x @ w.T + b, y, cw, label_smoothing, summed=True) + 0.5 * l2 * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    weight, bias = w.detach().float().cpu(), b.detach().float().cpu()
    if not (torch.isfinite(weight).all() and torch.isfinite(bias).all()):
        raise FloatingPointError(f"the L-BFGS head at l2={l2:g} is not finite (non-finite features?)")
    return LinearHead(weight, bias, float(l2))


def _scores(head: LinearHead, features: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """(mean cross-entropy, accuracy), unweighted: what the run's val columns report."""
    if len(labels) == 0:
        return float("nan"), float("nan")
    logits = head.logits(features.cpu()).double()
    y = labels.cpu().double() if labels.ndim == 2 else labels.cpu().long()
    return float(_loss(logits, y)), float(_correct(logits, y).double().mean())


def sweep_l2(train_feats: torch.Tensor, train_labels: torch.Tensor, val_feats: torch.Tensor | None,
             val_labels: torch.Tensor | None, num_classes: int, class_weights: torch.Tensor | None = None,
             label_smoothing: float = 0.0, grid: tuple[float, ...] = COARSE_GRID, fine: bool = True,
             folds: int = FOLDS, seed: int = 0, progress=None) -> HeadSweep:
    """Fit a head at each strength of `grid` (strong to weak, each warm-starting the next), then at quarter
    decades around the best; choose the strength with the lowest held-out cross-entropy (a tie: the stronger);
    refit on all of train at it. Held out: val when given and non-empty, else `folds`-fold on train (labels
    stratified by a seeded shuffle). `progress(done)` is called after each strength."""
    start = time.perf_counter()
    has_val = val_feats is not None and val_labels is not None and len(val_labels) > 0
    strata = train_labels.argmax(1) if train_labels.ndim == 2 else train_labels  # multi-hot: by its first label
    splits = [(torch.arange(len(train_labels)), None)] if has_val else \
        stratified_folds(strata, min(folds, _smallest_class(strata, num_classes)), seed)
    if not has_val and len(splits) < 2:
        raise ValueError("no validation images and a class with fewer than 2 training images: "
                         "the L2 sweep has nothing to score on")
    points: dict[float, SweepPoint] = {}
    warm: list[LinearHead | None] = [None] * len(splits)

    def score(l2: float) -> None:
        train_losses, val_losses, accs, sizes = [], [], [], []
        for k, (fit_idx, held) in enumerate(splits):
            head = fit_linear_head(train_feats[fit_idx], train_labels[fit_idx], num_classes, l2, class_weights,
                                   label_smoothing, start=warm[k])
            warm[k] = head
            train_losses.append(_scores(head, train_feats[fit_idx], train_labels[fit_idx])[0])
            vx, vy = (val_feats, val_labels) if held is None else (train_feats[held], train_labels[held])
            loss, acc = _scores(head, vx, vy)
            val_losses.append(loss)
            accs.append(acc)
            sizes.append(len(vy))
        n = np.asarray(sizes, dtype=np.float64)
        points[l2] = SweepPoint(l2, float(np.mean(train_losses)), float(np.dot(val_losses, n) / n.sum()),
                                float(np.dot(accs, n) / n.sum()))
        if progress is not None:
            progress(len(points))

    for l2 in sorted(grid, reverse=True):
        score(l2)
    if fine:
        best = _choose(points)
        for step in sorted(FINE_STEPS, reverse=True):
            l2 = float(best * 10.0 ** step)
            if l2 not in points:
                score(l2)
    chosen = _choose(points)
    # refit from zero on all of train: the result depends on the data and l2 alone, not on the sweep's path
    head = fit_linear_head(train_feats, train_labels, num_classes, chosen, class_weights, label_smoothing)
    return HeadSweep(sorted(points.values(), key=lambda p: p.l2), chosen, head, "val" if has_val else "k-fold",
                     time.perf_counter() - start)


def _choose(points: dict[float, SweepPoint]) -> float:
    """The strength with the lowest held-out loss; among equal losses (to 1e-9) the strongest (simplest head)."""
    finite = [p for p in points.values() if math.isfinite(p.val_loss)]
    if not finite:
        raise FloatingPointError("every strength of the L2 sweep gave a non-finite held-out loss")
    low = min(p.val_loss for p in finite)
    return max(p.l2 for p in finite if p.val_loss <= low + 1e-9)


def _smallest_class(labels: torch.Tensor, num_classes: int) -> int:
    counts = torch.bincount(labels.long(), minlength=num_classes)
    present = counts[counts > 0]
    return int(present.min()) if len(present) else 0


def stratified_folds(labels: torch.Tensor, k: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """k (fit, held-out) index pairs; each class's images dealt round-robin to the folds after a seeded shuffle."""
    if k < 2:
        return []
    generator = torch.Generator().manual_seed(seed)
    fold_of = torch.empty(len(labels), dtype=torch.long)
    for c in torch.unique(labels):
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=generator)]
        fold_of[idx] = torch.arange(len(idx)) % k
    return [(torch.nonzero(fold_of != f).flatten(), torch.nonzero(fold_of == f).flatten()) for f in range(k)]
