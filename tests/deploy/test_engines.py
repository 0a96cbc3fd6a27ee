"""`--engine onnxruntime` gives what torch gives: the same top-1 and calibrated probabilities in every output
format, TTA, unreadable files reported, evaluate's figures; an .onnx file alone is enough; refusals are one line."""

import csv
import io
import json
from dataclasses import replace

import pytest
import torch
from conftest import invoke as cli
from conftest import train_tiny

from finetune.checkpoint import Checkpoint
from finetune.deploy.evaluate import evaluate
from finetune.deploy.export import export
from finetune.deploy.predict import predict
from finetune.errors import CheckpointError, ConfigError

pytestmark = pytest.mark.slow  # every test here trains, or reads a fixture that does

TEMPERATURE = 2.5


@pytest.fixture(autouse=True)
def _untuned(monkeypatch):
    import finetune.runtime.process

    monkeypatch.setattr(finetune.runtime.process, "tune_process", lambda imports=(): None)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny trained checkpoint with a temperature that changes every probability, its fp32 ONNX export, and
    images to predict (with one unreadable file among them)."""
    root = tmp_path_factory.mktemp("engines")
    best, data = train_tiny(root)
    ckpt = Checkpoint.load(best)
    calibrated = root / "calibrated.pt"
    replace(ckpt, calibration={"temperature": TEMPERATURE}).save(calibrated)
    onnx = export(calibrated, "onnx").path
    (data / "val" / "red" / "broken.png").write_bytes(b"not a png")
    return {"pt": calibrated, "onnx": onnx, "images": data / "val"}


def test_onnxruntime_predicts_what_torch_predicts_with_the_temperature_and_tta(model, monkeypatch):
    import finetune.deploy.predict as module

    sessions = []  # onnxruntime really runs (not torch under another name)
    real = module.onnxruntime_runner
    monkeypatch.setattr(module, "onnxruntime_runner", lambda source: sessions.append(source) or real(source))
    paths = sorted(model["images"].rglob("*.png"))
    runs = {"torch": predict(model["pt"], paths, top_k=2),
            "onnxruntime, checkpoint": predict(model["pt"], paths, top_k=2, engine="onnxruntime"),
            "onnxruntime, .onnx": predict(model["onnx"], paths, top_k=2)}
    for name, results in runs.items():
        broken = [r for r in results if r.path.endswith("broken.png")]
        assert len(broken) == 1 and broken[0].error and broken[0].top == [], name  # reported, not dropped
        for r, t in zip(results, runs["torch"]):
            assert r.path == t.path and [x.label for x in r.top] == [x.label for x in t.top], name
            if r.logits is not None:
                probs = (torch.tensor(r.logits) / TEMPERATURE).softmax(0)  # calibrated, as torch's
                assert r.top[0].prob == pytest.approx(float(probs.max()), abs=1e-5)
                assert r.top[0].prob == pytest.approx(t.top[0].prob, abs=1e-4), name
    assert len(sessions) == 2
    tta = {e: predict(model["pt"], paths, tta=True, engine=e) for e in ("torch", "onnxruntime")}
    plain = runs["onnxruntime, checkpoint"]
    for a, b in zip(tta["torch"], tta["onnxruntime"]):
        assert (a.logits is None) == (b.logits is None)
        if a.logits is not None:
            assert torch.allclose(torch.tensor(a.logits), torch.tensor(b.logits), atol=1e-4)
    assert any(b.logits != c.logits for b, c in zip(tta["onnxruntime"], plain))  # the mirror was averaged in


@pytest.mark.parametrize("fmt", ["json", "csv", "table"])
def test_every_output_format_is_the_same_with_either_engine(model, fmt):
    outputs = {}
    engines = {"torch": [model["pt"]], "onnx": [model["onnx"]]}
    if fmt == "json":  # the checkpoint exported on the fly: the same runner, compared once
        engines["on the fly"] = [model["pt"], "--engine", "onnxruntime"]
    for name, args in engines.items():
        code, out, err = cli("predict", *args, model["images"], "--format", fmt, "--top-k", "2")
        assert code == 0, err
        outputs[name] = out
    if fmt == "json":
        parsed = {k: json.loads(v) for k, v in outputs.items()}
        for k, v in parsed.items():
            assert [(p["path"], [t["label"] for t in p["top"]], bool(p.get("error"))) for p in v] == \
                   [(p["path"], [t["label"] for t in p["top"]], bool(p.get("error"))) for p in parsed["torch"]], k
    elif fmt == "csv":
        rows = {k: list(csv.DictReader(io.StringIO(v))) for k, v in outputs.items()}
        for k, v in rows.items():
            assert [(r["path"], r["rank"], r["label"], bool(r["error"])) for r in v] == \
                   [(r["path"], r["rank"], r["label"], bool(r["error"])) for r in rows["torch"]], k
            assert any(r["error"] for r in v)
    else:
        for k, v in outputs.items():
            assert "unreadable" in v and v.count("red") == outputs["torch"].count("red"), k


def test_evaluate_with_onnxruntime_scores_what_torch_scores(model, tmp_path):
    reports = {e: evaluate(model["pt"], model["images"], output=tmp_path / e, engine=e)
               for e in ("torch", "onnxruntime")}
    reports["onnx"] = evaluate(model["onnx"], model["images"], output=tmp_path / "onnx")
    for name, report in reports.items():
        assert report.confusion_matrix == reports["torch"].confusion_matrix, name
        assert report.top1 == reports["torch"].top1 and len(report.unreadable) == 1, name
        assert report.calibration["temperature"] == TEMPERATURE
        assert report.ece == pytest.approx(reports["torch"].ece, abs=1e-4)
    assert [reports[k].engine for k in ("torch", "onnxruntime", "onnx")] == ["torch", "onnxruntime", "onnxruntime"]
    code, out, err = cli("evaluate", model["onnx"], model["images"], "--output", tmp_path / "cli", "--format", "json")
    assert code == 0 and json.loads(out)["top1"] == reports["torch"].top1, err


def test_engine_refusals_are_one_line(model, tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="is an ONNX file, which onnxruntime runs"):
        predict(model["onnx"], [], engine="torch")
    with pytest.raises(ConfigError, match="runs on the CPU"):
        predict(model["pt"], [], engine="onnxruntime", device="cuda")
    foreign = tmp_path / "foreign.onnx"
    import onnx

    proto = onnx.load(str(model["onnx"]))
    del proto.metadata_props[:]
    onnx.save(proto, str(foreign))
    code, _, err = cli("predict", foreign, model["images"])
    assert code == 1 and "not an ONNX model exported by finetune" in err.strip().splitlines()[-1]
    (tmp_path / "garbage.onnx").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="not a valid ONNX model"):
        predict(tmp_path / "garbage.onnx", [])
    import finetune.deploy.engines as engines

    monkeypatch.setattr(engines.importlib.util, "find_spec", lambda name: None)
    code, _, err = cli("predict", model["pt"], model["images"], "--engine", "onnxruntime")
    assert code == 1 and "needs onnxruntime, which is not installed" in err and "Traceback" not in err


def test_an_onnx_whose_class_names_disagree_with_its_outputs_is_refused_in_one_line(model, tmp_path):
    import onnx

    for names, why in ((["blue", "red", "green"], "names 3 classes, the model has 2 outputs"),
                       (["blue"], "not an ONNX model exported by finetune")):  # fewer: no IndexError later
        proto = onnx.load(str(model["onnx"]))
        entry = next(p for p in proto.metadata_props if p.key == "finetune")
        entry.value = json.dumps({**json.loads(entry.value), "class_names": names})
        path = tmp_path / f"{len(names)}-names.onnx"
        onnx.save(proto, str(path))
        code, _, err = cli("predict", path, model["images"])
        assert code == 1 and len(err.strip().splitlines()) == 1 and why in err, err
