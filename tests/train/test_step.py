"""One optimizer step: gradient accumulation is the mean over all its batches, clipping bounds the update, the
moving average is the textbook one, soft targets score against their dominant class, compile fails in words."""

import pytest
import torch
from torch import nn

from finetune.errors import ConfigError
from finetune.runtime.device import Compute
from finetune.train.step import TrainStep, compiled, moving_average


def make_step(model, lr=0.1, **kw):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    return TrainStep(model=model, net=model, criterion=nn.CrossEntropyLoss(), optimizer=opt, scheduler=sched,
                     scaler=scaler, compute=Compute(torch.device("cpu")), **kw)


def batch(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g)


def test_accumulated_batches_give_the_mean_gradient_of_all_their_images():
    torch.manual_seed(0)
    one, two = nn.Linear(4, 3), nn.Linear(4, 3)
    two.load_state_dict(one.state_dict())
    (x1, y1), (x2, y2) = batch(4, 1), batch(2, 2)  # unequal sizes: each batch weighs by its images
    loss_whole, correct_whole, n_whole = make_step(one)([(torch.cat([x1, x2]), torch.cat([y1, y2]))])
    loss_acc, correct_acc, n_acc = make_step(two, accumulate=2)([(x1, y1), (x2, y2)])
    assert (n_whole, correct_whole) == (n_acc, correct_acc) == (6, correct_whole)
    assert loss_acc == pytest.approx(loss_whole, rel=1e-6)
    for a, b in zip(one.parameters(), two.parameters()):
        assert torch.allclose(a, b, atol=1e-7)


def test_gradient_clipping_bounds_the_update():
    model = nn.Linear(4, 3)
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    x, y = batch(8, 3)
    make_step(model, lr=1.0, grad_clip=0.01)([(x * 1e4, y)])  # a huge gradient
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert (after - before).norm() == pytest.approx(0.01, rel=1e-4)  # lr 1 x a gradient of norm 0.01


def test_the_moving_average_is_updated_every_step_as_the_formula_says():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    decay = 0.9
    ema = moving_average(model, decay)
    step = make_step(model, ema=ema, ema_net=ema.module)
    expected = None
    for i in range(3):
        step([batch(8, 10 + i)])
        w = model.weight.detach().clone()
        expected = w if expected is None else decay * expected + (1 - decay) * w  # the first update copies
    assert torch.allclose(ema.module.weight, expected, atol=1e-7)
    assert not torch.allclose(ema.module.weight, model.weight) and step.scored is ema.module


def test_soft_targets_train_and_score_against_their_dominant_class():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    x, y = batch(6, 4)
    targets = torch.nn.functional.one_hot(y, 3).float() * 0.7 + 0.1  # mixed: 0.7 + 0.1 on the true class
    logits = model(x).detach()
    loss, correct, n = make_step(model)([(x, y, targets)])
    assert n == 6 and correct == int((logits.argmax(1) == targets.argmax(1)).sum())
    assert loss == pytest.approx(nn.functional.cross_entropy(logits, targets).item(), rel=1e-5)


def test_an_unreadable_image_is_left_out_of_the_loss():
    torch.manual_seed(0)
    a, b = nn.Linear(4, 3), nn.Linear(4, 3)
    b.load_state_dict(a.state_dict())
    x, y = batch(4, 5)
    marked = y.clone()
    marked[1] = -2  # data.images.missing_label(1)
    loss, _, n = make_step(a)([(x, marked)])
    keep = torch.tensor([0, 2, 3])
    loss_b, _, _ = make_step(b)([(x[keep], y[keep])])
    assert n == 3 and loss == pytest.approx(loss_b)
    assert torch.equal(a.weight, b.weight)


def test_compile_that_is_not_supported_is_one_line(monkeypatch):
    def unsupported(*a, **k):
        raise RuntimeError("Dynamo is not supported on this Python\nmore detail")

    monkeypatch.setattr(torch, "compile", unsupported)
    with pytest.raises(ConfigError, match=r"train.compile: torch.compile is not supported here \(Dynamo is not "
                                          r"supported on this Python\); set train.compile: false"):
        compiled(nn.Linear(2, 2))
