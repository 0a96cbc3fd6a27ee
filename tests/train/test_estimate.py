"""The time estimate printed before the work: priced from timed images, with the cheaper setting when long."""

import re

import pytest
import torch

from finetune.config import build_recipe
from finetune.runtime.device import resolve_compute
from finetune.train.estimate import Workload, estimate_line, estimate_seconds, seconds_per_image
from finetune.train.loop import fit


def work(**change) -> Workload:
    base = dict(train_images=1000, val_images=200, epochs=10, strategy="full", cached=False, views=1,
                image_size=224, device="cpu")
    return Workload(**{**base, **change})


def test_the_estimate_counts_the_passes_by_hand():
    # full: 10 epochs x (1000 x max(0.01, 3 x 0.02) + 200 x max(0.01, 0.02)) = 640 s (decoding overlaps)
    assert estimate_seconds(work(), 0.01, 0.02) == pytest.approx(640)
    # cached feature-extract: one pass over every train view and val image, whatever the epochs
    assert estimate_seconds(work(strategy="feature-extract", cached=True), 0.01, 0.02) == pytest.approx(24)
    assert estimate_seconds(work(strategy="feature-extract", cached=True, views=3), 0.01, 0.02) == pytest.approx(64)


def test_a_long_cpu_run_names_the_cheaper_setting_and_a_short_or_gpu_one_does_not():
    line = estimate_line(work(), 0.01, 0.02)
    assert line.startswith("estimate: about 11 min on this machine (cpu)")
    assert "cheaper: strategy.name feature-extract" in line and "about 24 s" in line
    assert "data.image_size 160: about 5 min" in line  # 640 s x (160/224)^2
    assert "cheaper" not in estimate_line(work(epochs=1), 0.01, 0.02)  # 64 s
    assert "cheaper" not in estimate_line(work(device="cuda"), 0.01, 0.02)


def test_probe_times_a_few_images_and_leaves_the_model_as_it_was():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2)).train()
    dataset = [(torch.randn(3, 2, 2), 0)] * 20
    decode, forward = seconds_per_image(model, dataset, resolve_compute("cpu", True))
    assert decode >= 0 and 0 < forward < 1 and model.training


@pytest.mark.slow
def test_train_prints_the_estimate_before_the_feature_pass(tiny_tree, capsys):
    fit(build_recipe(tiny_tree))
    err = capsys.readouterr().err
    assert re.search(r"estimate: about \d+ s on this machine \(cpu\) for the feature pass over 24 images", err)
    assert err.index("estimate: about") < err.index("features: the frozen part")
