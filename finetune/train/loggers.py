"""The loggers people already run, beside metrics.csv (always written): TensorBoard and MLflow, as
`run.loggers` asks. Each gets the recipe, the per-epoch scores and each group's lr; at the end the curves
and the confusion matrix as images (TensorBoard) or best.pt as an artifact (MLflow).

Both are optional extras (`pip install 'finetune[loggers]'`); a missing one is one line before any work.
MLflow goes through its client API, never its process-global active run, to a local tracking store by
default (`mlruns/` in the working folder: an SQLite database and the artifacts beside it, no server), or to
$MLFLOW_TRACKING_URI. A resumed run continues the same TensorBoard log and the same MLflow run.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np

from ..checkpoint import Calibration
from ..config import RunSpec
from ..data.folders import dataset_folders
from ..errors import ConfigError, first_line
from ..files import refuse_inside, write_text

PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow"}  # logger -> the module it needs


PROBE_SECONDS = 5.0  # an MLflow tracking server that does not answer in this long is taken as unreachable


def check_loggers(spec: RunSpec) -> None:
    """Before any work: every logger asked for can be imported, and an MLflow tracking URI can be reached (mlflow's
    own client retries an unreachable server for minutes, and fails late in its own words)."""
    missing = [name for name in spec.loggers if name in PACKAGES and importlib.util.find_spec(PACKAGES[name]) is None]
    if missing:
        raise ConfigError(f"run.loggers has {', '.join(missing)}, which is not installed: "
                          "pip install 'finetune[loggers]'")
    uri = spec.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if "mlflow" in spec.loggers and uri:
        _check_tracking_uri(uri)


def _check_tracking_uri(uri: str) -> None:
    """An http(s) tracking server answers MLflow's REST API within PROBE_SECONDS (or asks for credentials, which
    mlflow's client sends); any other store (a folder, a database, databricks) answers one cheap query."""
    if uri.startswith(("http://", "https://")):
        import urllib.error
        import urllib.request

        api = uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1"
        try:
            urllib.request.urlopen(api, timeout=PROBE_SECONDS).close()
        except urllib.error.HTTPError as exc:
            if exc.code not in (401, 403):
                raise ConfigError(f"run.loggers mlflow: {uri} answers HTTP {exc.code} to MLflow's REST API: not an "
                                  "MLflow tracking server? Fix run.mlflow_uri / $MLFLOW_TRACKING_URI, or drop mlflow "
                                  "from run.loggers") from None
        except (OSError, ValueError) as exc:  # URLError is an OSError: refused, no such host, timed out
            reason = getattr(exc, "reason", exc)
            raise ConfigError(f"run.loggers mlflow: the tracking server {uri} cannot be reached ({reason}, within "
                              f"{PROBE_SECONDS:g} s); start it, fix run.mlflow_uri / $MLFLOW_TRACKING_URI, or drop "
                              "mlflow from run.loggers") from None
        return
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient(uri).search_experiments(max_results=1)
    except (MlflowException, OSError, ValueError) as exc:
        raise ConfigError(f"run.loggers mlflow: the tracking store {uri} cannot be used ({first_line(exc)}); fix "
                          "run.mlflow_uri / $MLFLOW_TRACKING_URI, or drop mlflow from run.loggers") from None


class Loggers:
    def __init__(self, spec: RunSpec, run_dir: Path, recipe: dict, data_root: Path | None, start_epoch: int):
        self.run_dir, self.tb, self.mlflow, self.run_id = Path(run_dir), None, None, None
        if "tensorboard" in spec.loggers:
            self.tb = _tensorboard(self.run_dir / "tensorboard", start_epoch)
        if "mlflow" in spec.loggers:
            from mlflow.exceptions import MlflowException

            try:
                self._open_mlflow(spec, recipe, data_root)
            except (MlflowException, OSError) as exc:
                raise ConfigError(f"run.loggers mlflow: cannot start the MLflow run ({first_line(exc)}); fix "
                                  "run.mlflow_uri / $MLFLOW_TRACKING_URI, or drop mlflow from run.loggers") from None

    def _open_mlflow(self, spec: RunSpec, recipe: dict, data_root: Path | None) -> None:
        from mlflow.tracking import MlflowClient

        uri = spec.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            store = Path("mlruns").absolute()
            refuse_inside(store, dataset_folders(data_root), "the MLflow store (run.mlflow_uri)")
            store.mkdir(parents=True, exist_ok=True)
            uri = f"sqlite:///{store / 'mlflow.db'}"
        self.mlflow = MlflowClient(uri)
        id_file = self.run_dir / "mlflow_run_id.txt"
        if id_file.is_file():  # --resume: the same MLflow run
            self.run_id = id_file.read_text().strip()
            return
        name = spec.name or self.run_dir.name
        experiment = self.mlflow.get_experiment_by_name("finetune")
        experiment_id = experiment.experiment_id if experiment else self.mlflow.create_experiment(
            "finetune", artifact_location=_artifacts(uri))
        self.run_id = self.mlflow.create_run(experiment_id, run_name=name).info.run_id
        write_text(id_file, self.run_id)
        params = _flatten(recipe)
        for key, value in params.items():
            self.mlflow.log_param(self.run_id, key, str(value)[:500])

    def epoch(self, row: dict) -> None:
        scores = {k: v for k, v in row.items() if k != "epoch" and isinstance(v, (int, float))}
        if self.tb is not None:
            for key, value in scores.items():
                self.tb.add_scalar(_tag(key), value, row["epoch"])
            self.tb.flush()
        if self.mlflow is not None:
            for key, value in scores.items():
                self.mlflow.log_metric(self.run_id, key, float(value), step=row["epoch"])

    def end(self, calibration: Calibration, confusion: np.ndarray | None, class_names: list[str]) -> None:
        """The run's last word: the calibration, the curves and the confusion matrix of best.pt on val."""
        if self.tb is not None:
            from PIL import Image

            curves = self.run_dir / "curves.png"
            if curves.is_file():
                self.tb.add_image("curves", np.asarray(Image.open(curves).convert("RGB")), dataformats="HWC")
            if confusion is not None:
                from ..plotting import figure

                self.tb.add_figure("confusion_matrix (best.pt, val)", _confusion_figure(confusion, class_names,
                                                                                        figure))
            self.tb.add_scalar("calibration/temperature", calibration.temperature)
            self.tb.close()
        if self.mlflow is not None:
            for key in ("temperature", "ece_before", "ece_after", "nll_before", "nll_after"):
                if getattr(calibration, key) is not None:
                    self.mlflow.log_metric(self.run_id, f"calibration_{key}", float(getattr(calibration, key)))
            for name in ("best.pt", "curves.png", "metrics.csv"):
                if (self.run_dir / name).is_file():
                    self.mlflow.log_artifact(self.run_id, str(self.run_dir / name))
            self.mlflow.set_terminated(self.run_id)


def _tensorboard(folder: Path, start_epoch: int):
    """TensorBoard's writer of RUN_DIR/tensorboard, or one line saying why that folder cannot be it."""
    from torch.utils.tensorboard import SummaryWriter

    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"run.loggers tensorboard writes into {folder}, which is a file, not a folder: move it "
                          "away, or drop tensorboard from run.loggers")
    try:  # purge_step: a resumed run drops what a killed one logged past its last.pt
        return SummaryWriter(str(folder), purge_step=start_epoch)
    except OSError as exc:
        raise ConfigError(f"run.loggers tensorboard cannot write into {folder} ({exc.strerror or exc}); drop "
                          "tensorboard from run.loggers, or choose another run folder") from None


def _confusion_figure(cm: np.ndarray, names: list[str], figure):
    fig = figure(4 + 0.4 * len(names), 3.5 + 0.4 * len(names))
    ax = fig.subplots()
    share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", color="white" if share[i, j] > 0.5 else "black")
    ax.set(xlabel="predicted", ylabel="true")
    return fig


def _tag(key: str) -> str:
    """train_loss -> loss/train, lr_head -> lr/head: TensorBoard groups the charts by their first part."""
    if key.startswith("lr_"):
        return f"lr/{key[3:]}"
    if key.startswith(("train_", "val_")):
        split, _, what = key.partition("_")
        return f"{what.removesuffix('_raw')}/{split}{'_raw' if key.endswith('_raw') else ''}"
    return key


def _artifacts(uri: str) -> str | None:
    """Artifacts of the default local store sit beside its database, in mlruns/."""
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///")).parent.as_uri()
    return None


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
