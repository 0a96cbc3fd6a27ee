"""The L-BFGS head: the optimum of its convex objective, a sweep that picks a sensible strength."""

import math

import pytest
import torch
import torch.nn.functional as F

from finetune.train.head_solver import COARSE_GRID, fit_linear_head, objective, sweep_l2


def blobs(n_per_class=40, dim=16, classes=3, spread=1.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g) * spread
    y = torch.arange(classes).repeat_interleave(n_per_class)
    x = centres[y] + torch.randn(len(y), dim, generator=g)
    return x, y


def sgd_head(x, y, classes, l2, epochs=100, lr=0.05, seed=0):
    """Today's head: Adam over mini-batches on the same objective."""
    torch.manual_seed(seed)
    linear = torch.nn.Linear(x.shape[1], classes)
    opt = torch.optim.Adam(linear.parameters(), lr=lr)
    for _ in range(epochs):
        for idx in torch.randperm(len(y)).split(16):
            opt.zero_grad()
            loss = F.cross_entropy(linear(x[idx]), y[idx]) + 0.5 * l2 * (linear.weight ** 2).sum()
            loss.backward()
            opt.step()
    return linear.weight.detach(), linear.bias.detach()


@pytest.mark.slow
def test_lbfgs_loss_is_at_most_the_sgd_heads_and_accuracy_matches():
    x, y = blobs()
    vx, vy = blobs(seed=1)
    for l2 in (1e-3, 1e-1):
        head = fit_linear_head(x, y, 3, l2)
        sgd = sgd_head(x, y, 3, l2)
        assert objective(head, x, y, l2) <= objective(sgd, x, y, l2) + 1e-6
        acc_lbfgs = float((head.logits(vx).argmax(1) == vy).float().mean())
        acc_sgd = float(((vx @ sgd[0].T + sgd[1]).argmax(1) == vy).float().mean())
        assert abs(acc_lbfgs - acc_sgd) <= 0.1  # within noise on 120 images


def test_the_gradient_vanishes_at_the_solution():
    x, y = blobs()
    head = fit_linear_head(x, y, 3, 1e-2)
    w, b = head.weight.double().requires_grad_(True), head.bias.double().requires_grad_(True)
    loss = F.cross_entropy(x.double() @ w.T + b, y) + 0.5 * 1e-2 * (w * w).sum()
    loss.backward()
    assert w.grad.abs().max() < 1e-4 and b.grad.abs().max() < 1e-4


def test_sweep_chooses_the_lowest_val_loss_and_refits():
    x, y = blobs(n_per_class=10, dim=40, spread=0.6)  # few images, many dimensions: overfits without L2
    vx, vy = blobs(n_per_class=50, dim=40, spread=0.6, seed=1)
    sweep = sweep_l2(x, y, vx, vy, 3)
    losses = {p.l2: p.val_loss for p in sweep.points}
    assert sweep.selected_by == "val"
    assert losses[sweep.chosen] == min(losses.values())
    assert 1e-5 < sweep.chosen < 1e4  # neither end of the grid: the sweep found an interior optimum
    assert set(COARSE_GRID) <= set(losses) and len(losses) > len(COARSE_GRID)  # coarse, then fine
    assert math.isclose(sweep.head.l2, sweep.chosen)
    assert objective(sweep.head, x, y, sweep.chosen) <= objective(fit_linear_head(x, y, 3, sweep.chosen, max_iter=5),
                                                                  x, y, sweep.chosen) + 1e-9


def test_sweep_without_val_uses_k_fold():
    x, y = blobs(n_per_class=10)
    sweep = sweep_l2(x, y, None, None, 3, grid=(1e-3, 1e-1, 10.0), fine=False)
    assert sweep.selected_by == "k-fold" and sweep.chosen in (1e-3, 1e-1, 10.0)
    assert all(math.isfinite(p.val_loss) for p in sweep.points)
