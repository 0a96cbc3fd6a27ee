"""predict: one row per path in the order given, unreadable files reported with a reason, top-k most likely first,
temperature-calibrated, rejection; expand_paths: folders, globs and named files, in a stable order. No training:
the checkpoint is a tiny untrained model whose head says the same thing for every image."""

import math
import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import COLORS, make_image

from finetune.checkpoint import Calibration, Checkpoint, Rejection
from finetune.config import ModelSpec
from finetune.deploy.predict import UNKNOWN, expand_paths, predict
from finetune.deploy.reject import resolve_reject
from finetune.errors import CheckpointError, ConfigError, DataError
from finetune.models.registry import create_model

CLASSES = ["cat", "dog", "fox"]
BIAS = [1.0, 3.0, 2.0]  # the head's only say: dog, then fox, then cat, whatever the image


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """best.pt of a tiny timm model whose head's weights are zero: its logits are BIAS for every image."""
    spec = ModelSpec(source="timm", name="test_efficientnet", weights=None)
    torch.manual_seed(0)
    model, info = create_model(spec, len(CLASSES), 32)
    state = model.state_dict()
    state[f"{info.head_name}.weight"].zero_()
    state[f"{info.head_name}.bias"].copy_(torch.tensor(BIAS))
    path = tmp_path_factory.mktemp("predict") / "best.pt"
    Checkpoint(spec, CLASSES, info.preprocessing, info.head_name, "feature-extract", state=state).save(path)
    return path


def softmax(logits, temperature=1.0) -> list[float]:
    e = [math.exp(v / temperature) for v in logits]
    return [v / sum(e) for v in e]


def images(folder: Path, n: int = 3) -> list[Path]:
    return [make_image(folder / f"{i}.png", list(COLORS.values())[i % 2], size=40, seed=i) for i in range(n)]


def run(checkpoint, paths, **kw):
    return predict(checkpoint, paths, workers=0, engine="torch", **kw)


def test_every_path_gets_a_row_in_order_and_unreadable_ones_say_why(checkpoint, tmp_path):
    good = images(tmp_path / "good")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "page.jpg").write_text("<html>404</html>")
    cut = tmp_path / "cut.png"
    cut.write_bytes(good[0].read_bytes()[:60])
    paths = [good[0], tmp_path / "empty.png", good[1], tmp_path / "page.jpg", cut, good[2]]
    results = run(checkpoint, paths, batch_size=2)
    assert [r.path for r in results] == [str(p) for p in paths]
    bad = {r.path: r for r in results if r.error}
    assert set(bad) == {str(tmp_path / "empty.png"), str(tmp_path / "page.jpg"), str(cut)}
    for r in bad.values():
        assert r.top == [] and r.label is None and ":" in r.error  # "ErrorType: what went wrong"
        assert r.to_dict() == {"path": r.path, "top": [], "error": r.error}
    assert all(r.top and r.label == "dog" for r in results if not r.error)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_is_reported_not_waited_on(checkpoint, tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    good = images(tmp_path / "good", 1)
    results = run(checkpoint, [fifo, *good])
    assert "not a regular file" in results[0].error and results[1].top


def test_top_k_is_most_likely_first_and_at_most_the_number_of_classes(checkpoint, tmp_path):
    path = images(tmp_path, 1)
    expected = softmax(BIAS)
    top = run(checkpoint, path, top_k=10)[0].top
    assert [t.label for t in top] == ["dog", "fox", "cat"]
    assert [t.index for t in top] == [1, 2, 0]
    assert [t.prob for t in top] == pytest.approx([expected[1], expected[2], expected[0]], abs=1e-5)
    assert [t.label for t in run(checkpoint, path, top_k=2)[0].top] == ["dog", "fox"]
    assert len(run(checkpoint, path, top_k=0)[0].top) == 1  # always the top class at least


def test_probabilities_are_calibrated_by_the_checkpoint_temperature_unless_raw(checkpoint, tmp_path):
    calibrated = replace(Checkpoint.load(checkpoint), calibration=Calibration(temperature=2.0))
    path = images(tmp_path, 1)
    probs = [t.prob for t in run(calibrated, path, top_k=3)[0].top]
    assert probs == pytest.approx(sorted(softmax(BIAS, 2.0), reverse=True), abs=1e-5)
    raw = [t.prob for t in run(calibrated, path, top_k=3, raw=True)[0].top]
    assert raw == pytest.approx(sorted(softmax(BIAS), reverse=True), abs=1e-5)
    assert run(calibrated, path)[0].logits == pytest.approx(BIAS, abs=1e-5)


def test_the_batch_size_does_not_change_the_answer(checkpoint, tmp_path):
    paths = images(tmp_path, 5)
    one = run(checkpoint, paths, batch_size=1, top_k=3)
    many = run(checkpoint, paths, batch_size=4, top_k=3)
    for a, b in zip(one, many):
        assert [t.label for t in a.top] == [t.label for t in b.top]
        assert [t.prob for t in a.top] == pytest.approx([t.prob for t in b.top], abs=1e-5)


def test_reject_marks_images_below_the_threshold_unknown(checkpoint, tmp_path):
    paths = images(tmp_path, 2)
    top1 = max(softmax(BIAS))
    rejected = run(checkpoint, paths, reject=min(1.0, top1 + 0.01))
    assert all(r.rejected and r.label == UNKNOWN for r in rejected)
    assert rejected[0].to_dict()["label"] == UNKNOWN and rejected[0].top[0].label == "dog"  # top-k still there
    kept = run(checkpoint, paths, reject=top1 - 0.01)
    assert all(r.rejected is False and r.label == "dog" for r in kept)
    assert "rejected" not in run(checkpoint, paths)[0].to_dict()  # without --reject, no such field


def test_reject_auto_uses_the_stored_threshold_and_refuses_without_one(checkpoint):
    ckpt = Checkpoint.load(checkpoint)
    auto = resolve_reject("auto", replace(ckpt, calibration=Calibration(reject=Rejection(0.4))))
    assert (auto.score, auto.threshold) == ("probability", 0.4)
    assert resolve_reject(None, ckpt) is None and resolve_reject("0.25", ckpt).threshold == 0.25
    with pytest.raises(CheckpointError, match="stores no rejection threshold"):
        resolve_reject("auto", ckpt)
    for bad in ("1.5", "-0.1", "often"):
        with pytest.raises(ConfigError, match="auto or a probability from 0 to 1"):
            resolve_reject(bad, ckpt)


def test_expand_paths_takes_folders_globs_and_named_files_in_a_stable_order(tmp_path):
    b, a = make_image(tmp_path / "d" / "sub" / "b.png", (1, 2, 3)), make_image(tmp_path / "d" / "a.jpg", (1, 2, 3),
                                                                               fmt="JPEG")
    (tmp_path / "d" / "notes.txt").write_text("not an image")
    named = tmp_path / "notes.txt"
    named.write_text("named on the command line")
    assert expand_paths([str(tmp_path / "d")]) == [a, b]  # recursive, image names only, sorted
    assert expand_paths([str(named)]) == [named]  # a file named as such is kept: predict reports it
    assert expand_paths([str(tmp_path / "d" / "**" / "*.png")]) == [b]
    assert expand_paths([str(a), str(tmp_path / "d"), str(a)]) == [a, b]  # each once, first mention first
    with pytest.raises(DataError, match="no such file, folder or matching glob"):
        expand_paths([str(tmp_path / "missing-*.png")])
