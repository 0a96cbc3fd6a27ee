"""TensorBoard and MLflow see what metrics.csv holds, read back with their own readers; a missing one is one line."""

import csv

import pytest

from finetune.config import build_recipe
from finetune.errors import ConfigError
from finetune.train.loop import fit


def test_tensorboard_and_mlflow_get_every_epoch_and_best_pt(tiny_tree, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.chdir(tmp_path)  # the default MLflow store: ./mlruns
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tiny_tree["run"]["loggers"] = ["csv", "tensorboard", "mlflow"]
    run = fit(build_recipe(tiny_tree))
    rows = list(csv.DictReader((run / "metrics.csv").open()))

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    assert {"loss/train", "acc/val", "lr/head"} <= set(events.Tags()["scalars"])
    assert [e.value for e in events.Scalars("acc/val")] == pytest.approx([float(r["val_acc"]) for r in rows])
    assert {"curves", "confusion_matrix (best.pt, val)"} <= set(events.Tags()["images"])

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    (logged,) = client.search_runs([client.get_experiment_by_name("finetune").experiment_id])
    assert logged.info.run_id == (run / "mlflow_run_id.txt").read_text().strip()
    assert logged.data.params["strategy.name"] == "feature-extract" and logged.info.status == "FINISHED"
    history = client.get_metric_history(logged.info.run_id, "val_acc")
    assert [m.value for m in history] == pytest.approx([float(r["val_acc"]) for r in rows])
    assert {"best.pt", "metrics.csv", "curves.png"} <= {a.path for a in client.list_artifacts(logged.info.run_id)}


def test_a_logger_that_is_not_installed_is_one_line_before_any_work(tiny_tree, tmp_path, monkeypatch):
    import finetune.train.loggers as loggers

    real = loggers.importlib.util.find_spec
    monkeypatch.setattr(loggers.importlib.util, "find_spec", lambda name: None if name == "mlflow" else real(name))
    tiny_tree["run"]["loggers"] = ["mlflow"]
    with pytest.raises(ConfigError, match=r"run.loggers has mlflow, which is not installed: pip install "
                                          r"'finetune\[loggers\]'"):
        fit(build_recipe(tiny_tree))
    assert not (tmp_path / "runs").exists()
