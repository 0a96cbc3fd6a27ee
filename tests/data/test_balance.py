"""Class balance: inverse-frequency loss weights and a seeded balanced sampler, recorded in the run."""

import json
from collections import Counter

import pytest
from conftest import make_folder

from finetune.data.balance import resolve_balance


def test_off_by_default_and_inverse_frequency_when_asked():
    labels = [0] * 30 + [1] * 10
    off = resolve_balance(labels, 2, None, None, seed=0)
    assert off.loss_weights is None and off.sampler is None
    on = resolve_balance(labels, 2, "auto", None, seed=0)
    assert on.loss_weights.tolist() == pytest.approx([40 / (2 * 30), 40 / (2 * 10)])  # the rare class weighs 3x more


def test_balanced_sampler_draws_classes_equally_and_is_seeded():
    labels = [0] * 90 + [1] * 10
    draws = lambda seed: [i for i, _ in resolve_balance(labels, 2, None, "balanced", seed).sampler]  # noqa: E731
    first = draws(0)
    assert len(first) == len(labels) and first == draws(0) and first != draws(1)
    share = Counter(labels[i] for seed in range(5) for i in draws(seed))
    assert 0.4 < share[1] / (share[0] + share[1]) < 0.6  # 10% of the data, about half the draws


@pytest.mark.slow
def test_training_with_both_records_them_in_the_run_folder(tmp_path, tiny_tree):
    from finetune.config import build_recipe
    from finetune.train.loop import fit

    root = make_folder(tmp_path / "skewed", {"train": 2, "val": 2})
    make_folder(root, {"train": 8}, classes={"blue": (30, 60, 220)})  # blue 8, red 2 in train
    tiny_tree["data"].update(root=str(root), class_weights="auto", sampler="balanced")
    tiny_tree["train"]["epochs"] = 1
    summary = json.loads((fit(build_recipe(tiny_tree)) / "data.json").read_text())
    assert summary["train"] == {"blue": 8, "red": 2} and summary["sampler"] == "balanced"
    assert summary["class_weights"] == {"blue": 10 / 16, "red": 10 / 4} and summary["skipped"] == []
