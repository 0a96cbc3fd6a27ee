"""A multi-label checkpoint in deploy: predict gives every label at or above its threshold, evaluate reports mAP,
F1s and per-label AP on a labels CSV, the ONNX export outputs sigmoid probabilities, and the report shows the
multi-label table."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from conftest import invoke as cli
from conftest import make_multilabel_set

from finetune.checkpoint import Checkpoint
from finetune.config import build_recipe
from finetune.deploy.evaluate import evaluate
from finetune.deploy.multilabel import MultilabelEvaluation
from finetune.deploy.predict import predict
from finetune.errors import ConfigError
from finetune.metrics import mean_average_precision, sigmoid

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _untuned(monkeypatch):
    import finetune.runtime.process

    monkeypatch.setattr(finetune.runtime.process, "tune_process", lambda imports=(): None)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(best.pt, the set's folder): a head trained by SGD on a tiny model's cached features (the solved head has
    its own test in tests/train), the set given as its folder."""
    from finetune.train.loop import fit

    root = tmp_path_factory.mktemp("multilabel")
    data = make_multilabel_set(root / "set")
    tree = {"task": "multilabel", "model": {"source": "timm", "name": "test_efficientnet", "weights": None},
            "data": {"root": str(data), "image_size": 32, "augment": "none", "workers": 0},
            "strategy": {"name": "feature-extract", "head_solver": "sgd", "lr": {"head": 0.05}},
            "train": {"epochs": 4, "batch_size": 8, "seed": 0}, "run": {"output": str(root / "run")},
            "features": {"dir": str(root / "features")}}
    return fit(build_recipe(tree)) / "best.pt", data


def val_images(data):
    return sorted((data / "images").glob("val*.png"))


def test_predict_returns_every_label_at_or_above_its_threshold(trained):
    best, data = trained
    ckpt = Checkpoint.load(best)
    assert any(len(r.top) >= 2 for r in predict(ckpt, val_images(data), device="cpu"))  # two labels on one image
    # thresholds that cut through the middle of each label's probabilities, so 0.5 for all would differ
    probs = sigmoid(np.array([r.logits for r in predict(ckpt, val_images(data), device="cpu")]))
    thresholds = np.sort(probs, axis=0)[3:5].mean(0)  # between the 4th and 5th lowest of each label
    ckpt = dataclasses.replace(ckpt, calibration=dataclasses.replace(ckpt.calibration, thresholds=list(thresholds)))
    results = predict(ckpt, val_images(data), device="cpu")
    for r in results:
        probs = sigmoid(np.array(r.logits))
        assert [t.label for t in r.top] == [ckpt.class_names[k] for k in np.argsort(-probs)
                                            if probs[k] >= thresholds[k]]
        assert [t.prob for t in r.top] == pytest.approx([probs[t.index] for t in r.top], abs=1e-6)
    with pytest.raises(ConfigError, match="--reject"):
        predict(ckpt, val_images(data)[:1], device="cpu", reject="auto")


def test_evaluate_reports_map_f1_and_per_label_ap_on_the_csv(trained, tmp_path):
    best, data = trained
    ev = evaluate(best, f"@{data / 'labels.csv'}", output=tmp_path / "eval", device="cpu")
    assert isinstance(ev, MultilabelEvaluation) and ev.images == 8  # the val rows of the split column
    ckpt = Checkpoint.load(best)
    results = predict(ckpt, val_images(data), device="cpu")
    rows = [line.split(",") for line in (data / "labels.csv").read_text().splitlines()[1:] if line.endswith("val")]
    labels = {data / path: set(filter(None, cell.replace(";", "|").split("|"))) for path, cell, _ in rows}
    targets = np.array([[float(n in labels[p]) for n in ckpt.class_names] for p in val_images(data)])
    mean, per_class = mean_average_precision(sigmoid(np.array([r.logits for r in results])), targets)
    assert ev.map == pytest.approx(mean)
    assert [c["ap"] for c in ev.per_class] == pytest.approx(list(per_class))
    assert [c["threshold"] for c in ev.per_class] == pytest.approx(ckpt.thresholds)
    assert 0 <= ev.micro_f1 <= 1 and 0 <= ev.macro_f1 <= 1
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["task"] == "multilabel" and report["map"] == pytest.approx(mean)
    code, out, err = cli("evaluate", best, data, "--output", tmp_path / "eval2")  # the folder form, and the page
    assert code == 0, err
    assert "mAP" in out and "per label" in out
    page = (best.parent / "report.html").read_text()
    assert "Per label" in page and "Thresholds" in page


def test_onnx_export_outputs_sigmoid_probabilities_and_predicts_the_same_labels(trained, tmp_path):
    pytest.importorskip("onnxruntime")
    import onnxruntime

    from finetune.deploy.export import export
    from finetune.deploy.loading import load_model

    best, data = trained
    result = export(best, "onnx", tmp_path / "m.onnx")
    session = onnxruntime.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    assert session.get_outputs()[0].name == "probabilities"
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    model, _ = load_model(best)
    with torch.inference_mode():
        expected = torch.sigmoid(model(images))
    got = torch.from_numpy(session.run(None, {"images": images.numpy()})[0])
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    meta = json.loads(session.get_modelmeta().custom_metadata_map["finetune"])
    assert meta["task"] == "multilabel" and meta["thresholds"] == pytest.approx(Checkpoint.load(best).thresholds)
    by_onnx = predict(result.path, val_images(data))
    by_torch = predict(best, val_images(data), device="cpu")
    assert [[t.label for t in r.top] for r in by_onnx] == [[t.label for t in r.top] for r in by_torch]
    with pytest.raises(Exception, match="--int8"):
        export(best, "onnx", tmp_path / "q.onnx", int8=True)
