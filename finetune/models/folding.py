"""BatchNorm folded into the convolution that feeds it: one pass over the activations fewer per BatchNorm.

Used wherever a model runs frozen in eval mode: predict's forward pass, the frozen prefix of training
and its feature cache. Every fold is checked against the model's own output and undone where it would
change it (a conv whose output feeds something besides the BatchNorm, say).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def folded_copy(model: nn.Module, images: torch.Tensor) -> nn.Module:
    """A frozen eval-mode copy of `model` with its BatchNorms folded where that keeps its output (`fold_checked`)."""
    return fold_checked(copy.deepcopy(model), images)


def fold_checked(model: nn.Module, images: torch.Tensor) -> nn.Module:
    """`model`, frozen and in eval mode, with its BatchNorms folded in place (`fold_batchnorm`) and checked to
    give the same output on `images`; put back as it was where folding would change it."""
    model.eval().requires_grad_(False)
    with torch.no_grad():
        expected, replaced = fold_batchnorm(model, images)
        if replaced and not same_output(model(images).float(), expected):
            for name, module in replaced:
                model.set_submodule(name, module)
    return model


def same_output(got: torch.Tensor, expected: torch.Tensor) -> bool:
    """Equal up to float rounding (folding reorders the arithmetic), relative to the output's scale."""
    return got.shape == expected.shape and torch.allclose(
        got, expected, rtol=1e-3, atol=1e-3 * float(expected.abs().max()) + 1e-5)


def fold_batchnorm(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, list[tuple[str, nn.Module]]]:
    """Fold each eval-mode BatchNorm2d into the Conv2d whose output it reads directly (as seen in one
    forward pass on `images`), in place. Returns that pass's output (the model's before folding) and the
    (name, module) pairs it replaced, two per fold: setting them back undoes it."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    names = {m: n for n, m in model.named_modules()}
    outputs: dict[int, tuple[torch.Tensor, nn.Module]] = {}
    pairs: list[tuple[nn.Module, nn.Module]] = []

    def after_conv(conv, args, out):
        outputs[id(out)] = (out, conv)

    def before_bn(bn, args):
        seen = outputs.get(id(args[0]))
        if seen is not None and seen[0] is args[0]:
            pairs.append((seen[1], bn))

    # exactly Conv2d, or timm's Conv2dSame (pads its input, then the same conv): a subclass that transforms its
    # weight (weight standardisation) would undo the fold
    hooks = [m.register_forward_hook(after_conv) for m in model.modules()
             if type(m) is nn.Conv2d or type(m).__name__ == "Conv2dSame"]
    hooks += [m.register_forward_pre_hook(before_bn) for m in model.modules()
              if isinstance(m, nn.BatchNorm2d) and not m.training and m.track_running_stats]
    try:
        with torch.no_grad():
            output = model(images).float()
    finally:
        for h in hooks:
            h.remove()
    convs = [c for c, _ in pairs]
    bns = [b for _, b in pairs]
    replaced = []
    for conv, bn in pairs:
        if convs.count(conv) > 1 or bns.count(bn) > 1:  # shared modules: folding would change other calls
            continue
        if type(bn) is nn.BatchNorm2d:
            after = nn.Identity()
        elif hasattr(bn, "act") and hasattr(bn, "drop"):  # timm's BatchNormAct2d: norm, then drop and act
            after = nn.Sequential(bn.drop, bn.act)
        else:
            continue
        model.set_submodule(names[conv], fuse_conv_bn_eval(conv, bn))  # a new conv: `conv` is left as it was
        model.set_submodule(names[bn], after)
        replaced += [(names[conv], conv), (names[bn], bn)]
    model.to(memory_format=torch.channels_last)
    return output, replaced
