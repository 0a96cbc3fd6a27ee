"""TensorBoard and MLflow see what metrics.csv holds, read back with their own readers; a missing one is one line."""

import csv

import pytest

from finetune.config import build_recipe
from finetune.errors import ConfigError
from finetune.train.loop import fit


@pytest.mark.slow
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


def test_a_tensorboard_folder_that_is_a_file_is_one_line_before_the_epochs(tiny_tree, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "tensorboard").write_text("not a folder")
    tiny_tree["run"] = {**tiny_tree["run"], "output": str(run), "exist_ok": True, "loggers": ["tensorboard"]}
    with pytest.raises(ConfigError, match=r"run.loggers tensorboard writes into .*tensorboard, which is a file"):
        fit(build_recipe(tiny_tree))
    assert not (run / "metrics.csv").exists() and (run / "tensorboard").read_text() == "not a folder"


@pytest.mark.parametrize("uri, message", [
    ("http://127.0.0.1:9", r"the tracking server http://127.0.0.1:9 cannot be reached"),  # nothing listens
    ("file:///proc/finetune-mlruns", r"the tracking store file:///proc/finetune-mlruns cannot be used"),
], ids=["unreachable-server", "unwritable-store"])
def test_an_mlflow_store_that_cannot_be_used_is_one_line_before_any_work(tiny_tree, tmp_path, uri, message):
    import time

    tiny_tree["run"] = {**tiny_tree["run"], "loggers": ["mlflow"], "mlflow_uri": uri}
    start = time.monotonic()
    with pytest.raises(ConfigError, match=message):
        fit(build_recipe(tiny_tree))
    assert time.monotonic() - start < 30  # mlflow's own client retried an unreachable server for minutes
    assert not (tmp_path / "runs").exists()


def test_an_http_tracking_uri_must_answer_mlflows_api():
    import http.server
    import threading

    from finetune.config import RunSpec
    from finetune.train.loggers import check_loggers

    class Server(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # an MLflow server answers its REST API; anything else (a proxy, a web page) does not
            self.send_response(200 if self.path.startswith("/mlflow/api/2.0/mlflow/experiments/search") else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Server)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        check_loggers(RunSpec(loggers=["mlflow"], mlflow_uri=f"{base}/mlflow"))
        with pytest.raises(ConfigError, match="answers HTTP 404 to MLflow's REST API"):
            check_loggers(RunSpec(loggers=["mlflow"], mlflow_uri=base))
    finally:
        server.shutdown()
