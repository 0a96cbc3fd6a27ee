"""predict --reject: images of a class the model never saw are `unknown`, known ones rarely are, in every output
format and with either engine; the threshold chosen at the end of training travels in best.pt and the .onnx."""

import csv
import io
import json
from dataclasses import replace

import pytest
import torch
from conftest import make_folder
from typer.testing import CliRunner

from finetune.checkpoint import Checkpoint
from finetune.cli import app
from finetune.config import build_recipe
from finetune.deploy.export import export
from finetune.deploy.predict import expand_paths, predict
from finetune.errors import CheckpointError, ConfigError
from finetune.train.calibration import FALSE_REJECTION
from finetune.train.loop import fit

pytestmark = pytest.mark.slow  # every test here trains, or reads a fixture that does

KNOWN = {"blue": (30, 60, 220), "red": (220, 40, 30), "yellow": (220, 210, 30)}
HELD_OUT = {"green": (30, 200, 40), "gray": (128, 128, 128)}  # never in training


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("reject")
    tree = {"model": {"source": "timm", "name": "test_efficientnet", "weights": None},
            "data": {"root": str(make_folder(root / "data", {"train": 12, "val": 8}, classes=KNOWN)),
                     "image_size": 32, "augment": "none", "workers": 0},
            "strategy": {"name": "feature-extract"},  # the default head solver (lbfgs)
            "features": {"dir": str(root / "cache")},
            "train": {"seed": 0}, "run": {"output": str(root / "run")}}
    best = fit(build_recipe(tree)) / "best.pt"
    return {"best": best, "unknown": make_folder(root / "unknown", {"test": 10}, classes=HELD_OUT) / "test",
            "known": make_folder(root / "known", {"test": 10}, classes=KNOWN) / "test"}


def rejected_share(checkpoint, folder, **kw) -> float:
    results = predict(checkpoint, expand_paths([str(folder)]), reject="auto", **kw)
    assert all(r.label == ("unknown" if r.rejected else r.top[0].label) for r in results)
    return sum(r.rejected for r in results) / len(results)


def test_held_out_classes_are_unknown_and_known_ones_rejected_at_about_the_stated_rate(world):
    reject = Checkpoint.load(world["best"]).calibration.reject
    assert reject.false_rejection == FALSE_REJECTION and 0 < reject.threshold <= 1
    assert reject.rejected_correct <= FALSE_REJECTION  # on val, by construction
    assert rejected_share(world["best"], world["unknown"]) >= 0.7
    assert rejected_share(world["best"], world["known"]) <= 0.25  # fresh known images: about 5%, loosely on 30
    # a number instead of auto: 0 rejects nothing, 1 everything
    paths = expand_paths([str(world["unknown"])])
    assert not any(r.rejected for r in predict(world["best"], paths, reject=0.0))
    assert all(r.rejected for r in predict(world["best"], paths, reject="1"))
    assert all(r.rejected is None and "label" not in r.to_dict() for r in predict(world["best"], paths))


def test_unknown_in_every_output_format(world):
    runner = CliRunner()
    args = ["predict", str(world["best"]), str(world["unknown"]), "--reject", "auto"]
    listed = json.loads(runner.invoke(app, [*args, "--format", "json"]).stdout)
    assert sum(r["label"] == "unknown" and r["rejected"] for r in listed) >= 14
    rows = list(csv.DictReader(io.StringIO(runner.invoke(app, [*args, "--format", "csv"]).stdout)))
    assert sum(r["prediction"] == "unknown" for r in rows) >= 14 and {"rank", "label", "prob"} <= set(rows[0])
    table = runner.invoke(app, args)
    assert table.exit_code == 0 and table.stdout.count("unknown") >= 14
    bad = runner.invoke(app, [*args[:3], "--reject", "often"])
    assert bad.exit_code == 1 and "--reject takes auto or a probability" in bad.output


def test_the_threshold_travels_in_the_onnx_export_and_works_with_onnxruntime(world, tmp_path):
    pytest.importorskip("onnxruntime")
    onnx = export(world["best"], "onnx", tmp_path / "model.onnx").path
    torch_share = rejected_share(world["best"], world["unknown"])
    assert rejected_share(onnx, world["unknown"]) == torch_share
    assert rejected_share(world["best"], world["unknown"], engine="onnxruntime") == torch_share


def test_old_checkpoints_load_and_say_what_to_do_for_auto(world, tmp_path):
    ckpt = Checkpoint.load(world["best"])
    old = tmp_path / "old.pt"
    ckpt.calibration = replace(ckpt.calibration, reject=None)  # as before thresholds
    ckpt.save(old)
    assert Checkpoint.load(old).reject_threshold is None
    with pytest.raises(CheckpointError, match="stores no rejection threshold"):
        predict(old, expand_paths([str(world["unknown"])]), reject="auto")
    with pytest.raises(ConfigError, match="from 0 to 1"):
        predict(old, expand_paths([str(world["unknown"])]), reject=1.5)
    damaged = tmp_path / "damaged.pt"
    payload = torch.load(world["best"], weights_only=True)
    payload["meta"]["calibration"]["reject"]["threshold"] = float("nan")
    torch.save(payload, damaged)
    with pytest.raises(CheckpointError, match="rejection threshold"):
        Checkpoint.load(damaged)
