"""The frozen-feature cache: same result as running the backbone every step, computed once, keyed honestly."""

import csv
import os

import numpy as np
import pytest
import torch
from torch import nn

from finetune.config import build_recipe
from finetune.errors import ConfigError
from finetune.train.features.store import FeatureSet
from finetune.train.loop import fit
from finetune.train.prefix import random_in_training


def _fit(tree, tmp_path, **sections):
    tree = {k: dict(v) for k, v in tree.items()}
    for key, value in sections.items():
        section, field = key.split("__")
        tree.setdefault(section, {})[field] = value
    tree["features"] = {"dir": str(tmp_path / "cache"), **tree.get("features", {})}
    run = fit(build_recipe(tree))
    return list(csv.DictReader((run / "metrics.csv").open())), run


def _entries(tmp_path) -> set[str]:
    root = tmp_path / "cache"
    return {p.name for p in root.iterdir() if not p.name.startswith(".")} if root.is_dir() else set()


def _same_as_uncached(tree, tmp_path, cached, run_c, epochs, rel):
    """Train the same recipe with features.cache off: every epoch's accuracies equal, losses within rel.
    Returns both runs' last.pt weights and the uncached run's folder."""
    uncached, run_u = _fit(tree, tmp_path, train__epochs=epochs, features__cache="off")
    assert len(cached) == len(uncached) == epochs
    for c, u in zip(cached, uncached):
        assert c["val_acc"] == u["val_acc"] and c["train_acc"] == u["train_acc"]
        for col in ("train_loss", "val_loss"):
            assert float(c[col]) == pytest.approx(float(u[col]), rel=rel), col
    states = [torch.load(run / "last.pt", weights_only=True)["model"] for run in (run_c, run_u)]
    return *states, run_u


@pytest.mark.slow
def test_cached_and_uncached_training_reach_the_same_result(tiny_tree, tmp_path):
    # Same seed, same batches (the cached path reuses the image loader's sampler); the only differences are
    # fp16 storage of the features and the frozen BatchNorm folded into its conv. Tolerance: identical
    # accuracy, losses within 0.1% relative, head weights within 1e-3 (1.4e-4 on this fixture; Adam can turn the
    # rounding of a near-zero gradient into a larger step, so other images have reached 1.2e-3).
    tiny_tree["model"]["head"] = {"dropout": 0.2}  # the head's own dropout must draw the same masks
    cached, run_c = _fit(tiny_tree, tmp_path, train__epochs=3)
    assert len(_entries(tmp_path)) == 2  # train + val
    sc, su, run_u = _same_as_uncached(tiny_tree, tmp_path, cached, run_c, epochs=3, rel=1e-3)
    assert torch.allclose(sc["classifier.1.weight"], su["classifier.1.weight"], atol=1e-3)
    assert torch.equal(sc["conv_stem.weight"], su["conv_stem.weight"])  # the backbone never moved
    # calibration runs the head on the cached val features, not the backbone again, to the same temperature
    tc = torch.load(run_c / "best.pt", weights_only=True)["meta"]["calibration"]
    tu = torch.load(run_u / "best.pt", weights_only=True)["meta"]["calibration"]
    assert tc["temperature"] == pytest.approx(tu["temperature"], rel=1e-2)


@pytest.mark.slow
def test_cache_hit_miss_and_invalidation(tiny_tree, image_folder, tmp_path, monkeypatch):
    from finetune.train.features.store import FeatureStore

    computed = []
    real = FeatureStore.begin
    monkeypatch.setattr(FeatureStore, "begin", lambda self, key, *a, **k: (computed.append(key),
                                                                           real(self, key, *a, **k))[1])
    _fit(tiny_tree, tmp_path, train__epochs=1)
    first = _entries(tmp_path)
    assert len(computed) == 2 and first == set(computed)

    _fit(tiny_tree, tmp_path, train__epochs=1)  # hit: nothing recomputed
    assert len(computed) == 2 and _entries(tmp_path) == first

    victim = image_folder / "train" / "red" / "red0.png"  # touch one training file: only train recomputes
    st = victim.stat()
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    _fit(tiny_tree, tmp_path, train__epochs=1)
    assert len(computed) == 3 and len(_entries(tmp_path)) == 3

    _fit(tiny_tree, tmp_path, train__epochs=1, data__image_size=40)  # other preprocessing: both recompute
    assert len(computed) == 5

    # a weights file is keyed by its content, not its name
    weights = tmp_path / "w.pt"
    from finetune.config import ModelSpec
    from finetune.models.registry import create_model

    model, _ = create_model(ModelSpec(source="timm", name="test_efficientnet", weights=None), 1000)
    torch.save(model.state_dict(), weights)
    tiny_tree["model"] = {**tiny_tree["model"], "weights": str(weights)}
    _fit(tiny_tree, tmp_path, train__epochs=1)
    assert len(computed) == 7
    state = model.state_dict()
    state["conv_stem.weight"] = state["conv_stem.weight"] * 2
    torch.save(state, weights)
    _fit(tiny_tree, tmp_path, train__epochs=1)
    assert len(computed) == 9


@pytest.mark.slow
def test_shards_are_stored_an_entry_a_shard_and_a_run_on_some_of_them_reuses_theirs(tiny_tree, image_folder,
                                                                                     tmp_path, monkeypatch):
    from finetune.data.shard_reader import read_shard_set
    from finetune.data.shards import ShardLimit, write_shards
    from finetune.train.features.store import FeatureStore

    computed = []
    real = FeatureStore.begin
    monkeypatch.setattr(FeatureStore, "begin", lambda self, key, *a, **k: (computed.append(key),
                                                                           real(self, key, *a, **k))[1])
    write_shards(image_folder, tmp_path / "shards", ShardLimit(images=5), 0.2, 0)  # train 5+5+5+1, val 5+3
    on_folder, _ = _fit(tiny_tree, tmp_path / "folder", train__epochs=2)
    sharded = {**tiny_tree, "data": {**tiny_tree["data"], "root": str(tmp_path / "shards")}}
    on_shards, _ = _fit(sharded, tmp_path, train__epochs=2)
    shards = read_shard_set(tmp_path / "shards").splits
    assert len(computed) - 2 == len(_entries(tmp_path)) == len(shards["train"]) + len(shards["val"]) == 6
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in on_folder]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in on_shards] == strip  # the folder's run
    computed.clear()
    some = {**sharded, "data": {**sharded["data"], "root": str(tmp_path / "shards" / "train-{000000..000001}.tar")}}
    rows, _ = _fit(some, tmp_path, train__epochs=1)
    assert computed == [] and len(rows) == 1  # two train shards and the val shards: every entry read, none computed


@pytest.mark.slow
def test_last_stage_caches_the_last_stages_input_with_the_same_result(tiny_tree, tmp_path):
    # The frozen part before the last stage runs once per image; every step trains the last stage and head
    # on its stored output. That output is stored in fp16 (relative rounding 5e-4) and the prefix's BatchNorm is
    # folded, and the last stage amplifies both over training. Tolerance: identical accuracy, losses within 1%.
    tiny_tree["strategy"] = {"name": "last-stage", "lr": {"head": 0.01, "last_stage": 0.002}}
    cached, run_c = _fit(tiny_tree, tmp_path, train__epochs=2)
    shapes = {np.load(tmp_path / "cache" / n / "features.npy", mmap_mode="r").shape for n in _entries(tmp_path)}
    assert {s[1] for s in shapes} == {16, 8} and all(len(s) == 5 for s in shapes)  # views x images x C x H x W
    sc, su, _ = _same_as_uncached(tiny_tree, tmp_path, cached, run_c, epochs=2, rel=1e-2)
    assert sc.keys() == su.keys()
    assert torch.equal(sc["blocks.0.0.conv.weight"], su["blocks.0.0.conv.weight"])  # frozen: never moved
    # (trained weights are compared through the losses: Adam turns a gradient of 1e-8 that differs in rounding,
    # like a last-stage BatchNorm bias's here, into a full lr-sized step either way)


@pytest.mark.slow
def test_features_are_fp16_and_memory_mapped(tiny_tree, tmp_path):
    _fit(tiny_tree, tmp_path, train__epochs=1)
    for name in _entries(tmp_path):
        arr = np.load(tmp_path / "cache" / name / "features.npy", mmap_mode="r")
        assert arr.dtype == np.float16 and isinstance(arr, np.memmap)
        assert arr.shape[0] == 1 and arr.shape[1] in (16, 8) and arr.shape[2] > 0  # views x images x dim
        assert np.isfinite(arr).all() and np.abs(arr).sum() > 0
        fs = FeatureSet(arr, np.load(tmp_path / "cache" / name / "labels.npy"))
        x, y = fs[0]
        assert x.dtype == torch.float32 and y in (0, 1)


@pytest.mark.slow
def test_augmentation_recomputes_by_default_or_caches_k_views(tiny_tree, tmp_path):
    rows, _ = _fit(tiny_tree, tmp_path, train__epochs=1, data__augment="flip")
    # default views 0: train's frozen part runs every epoch on fresh augmentations; val (fixed transform) is cached
    (val,) = _entries(tmp_path)
    assert np.load(tmp_path / "cache" / val / "features.npy", mmap_mode="r").shape[:2] == (1, 8) and len(rows) == 1
    rows, _ = _fit(tiny_tree, tmp_path, train__epochs=3, data__augment="flip", features__views=2)
    assert len(_entries(tmp_path)) == 2  # val: the same entry again
    shapes = sorted(np.load(tmp_path / "cache" / n / "features.npy", mmap_mode="r").shape for n in _entries(tmp_path))
    assert shapes[0][0] == 1 and shapes[1][:2] == (2, 16)  # val: one view; train: two views of 16 images
    train = np.load(tmp_path / "cache" / max(_entries(tmp_path), key=lambda n: np.load(
        tmp_path / "cache" / n / "features.npy", mmap_mode="r").shape[0]) / "features.npy")
    assert not np.array_equal(train[0], train[1])  # the views really differ
    assert len(rows) == 3 and float(rows[-1]["val_acc"]) > 0.5


@pytest.mark.slow
def test_only_feature_extract_uses_the_cache(tiny_tree, tmp_path):
    tiny_tree["strategy"] = {"name": "full", "lr": {"head": 0.01, "last_stage": 0.01, "backbone": 0.01}}
    _fit(tiny_tree, tmp_path, train__epochs=1)
    assert _entries(tmp_path) == set()


def test_a_backbone_that_is_random_in_training_is_not_cached():
    prefix = ["0", "1"]
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.Linear(4, 2))
    for p in model[0].parameters():
        p.requires_grad_(False)
    assert random_in_training(model, prefix) == ["1"]
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4, affine=False), nn.Linear(4, 2))
    for p in model[0].parameters():
        p.requires_grad_(False)
    assert random_in_training(model, prefix) == ["1"]
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    for p in model[:2].parameters():
        p.requires_grad_(False)
    assert random_in_training(model, prefix) == []  # frozen BN stays in eval: deterministic


def test_cache_inside_the_dataset_is_refused(tiny_tree, image_folder, tmp_path):
    tiny_tree["features"] = {"dir": str(image_folder / "cache")}
    with pytest.raises(ConfigError, match="inside the dataset"):
        fit(build_recipe(tiny_tree))
    assert not (image_folder / "cache").exists()


def test_last_stage_records_no_autograd_graph_for_the_frozen_prefix():
    from finetune.config import ModelSpec, StrategySpec
    from finetune.models.registry import create_model
    from finetune.train.freeze import plan_freeze

    model, info = create_model(ModelSpec(source="scratch", name="resnet18", weights=None), 2)
    plan_freeze(model, info, StrategySpec(name="last-stage", lr={"head": 0.1, "last_stage": 0.1})).apply(model)
    seen = {}
    model.layer3.register_forward_hook(lambda m, i, o: seen.update(layer3=o.requires_grad))
    model.layer4.register_forward_hook(lambda m, i, o: seen.update(layer4=o.requires_grad))
    model(torch.randn(2, 3, 32, 32))
    assert seen == {"layer3": False, "layer4": True}
