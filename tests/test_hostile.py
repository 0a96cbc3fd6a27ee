"""Hostile and unlucky inputs, one class at a time: no traceback, no silent garbage, no lost run.

Each case is built in tmp_path and checked for the exact behaviour a user sees: the exit code, one line that
says what to do (never "Traceback"), the files that must stay intact, and nothing written inside the dataset.
"""

import csv
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import checkpoint_of, make_folder, make_image, write_yaml
from conftest import invoke as cli

from finetune.checkpoint import Checkpoint
from finetune.config import build_recipe, load_recipe
from finetune.errors import CheckpointError, ConfigError, ExportError, ResourceError, TrainingDiverged
from finetune.train.loop import fit

REPO = Path(__file__).parents[1]


@pytest.fixture(autouse=True)
def _untuned(monkeypatch):
    """The CLI runs in this process here: its process tuning (gc freeze, thread policy) would outlive the test."""
    import finetune.runtime.process

    monkeypatch.setattr(finetune.runtime.process, "tune_process", lambda imports=(): None)


def one_line_error(stderr: str, *words: str) -> str:
    """The last line of stderr is the error, and says these words; no traceback anywhere."""
    assert "Traceback" not in stderr, stderr
    line = stderr.strip().splitlines()[-1]
    assert line.startswith("error:") or line.startswith("stopped:"), stderr
    for word in words:
        assert word in line, (word, line)
    return line


def snapshot(folder: Path) -> dict:
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def trained(tree: dict, **changes) -> Path:
    tree = {k: dict(v) for k, v in tree.items()}
    for key, value in changes.items():
        section, field = key.split("__")
        tree.setdefault(section, {})[field] = value
    return fit(build_recipe(tree))


def metrics(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader((run_dir / "metrics.csv").open())]


# ---------------------------------------------------------------- recipes: bounded, exact, finite


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path):
    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 10):  # 9^10 values once expanded
        lines.append(f"{chr(97 + i)}: &{chr(97 + i)} [" + ", ".join([f"*{chr(96 + i)}"] * 9) + "]")
    path = tmp_path / "bomb.yaml"
    path.write_text("train:\n  " + "\n  ".join(lines) + "\n")
    start = time.perf_counter()
    code, _, err = cli("train", path)
    assert code == 1 and time.perf_counter() - start < 10
    one_line_error(err, "expands to more than 10,000 values")


def test_recipe_text_is_bounded_exact_and_utf8(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("train:\n  epochs: 2\nmodel:\n  name: x\ntrain:\n  epochs: 3\n")
    with pytest.raises(ConfigError, match=r"the key 'train' twice \(lines 1 and 5\)"):
        load_recipe(path)
    path.write_bytes(b"train:\n  epochs: 2 # caf\xe9\n")
    with pytest.raises(ConfigError, match=r"not UTF-8 text \(byte 0xe9 at offset 24\)"):
        load_recipe(path)
    path.write_text("run:\n  name: " + "x" * 2_000_000 + "\n")
    with pytest.raises(ConfigError, match=r"is 1.9 MiB; a recipe is a short text file"):
        load_recipe(path)
    path.write_text("optim:\n  name: " + "y" * 900_000 + "\n")
    code, _, err = cli("train", path)
    assert code == 1 and len(one_line_error(err, "optim.name", "900,002 characters")) < 400  # the value is cut


@pytest.mark.parametrize("override, message", [
    ("strategy.lr.head=.inf", "strategy.lr.head: Input should be a finite number"),
    ("strategy.lr.head=.nan", "strategy.lr.head: Input should be a finite number"),
    ("optim.weight_decay=.nan", "optim.weight_decay: Input should be a finite number"),
    ("data.workers=-3", "data.workers: must be auto or a number of worker processes"),
    ("data.image_size=100000", "data.image_size: Input should be less than or equal to 4096"),
    ("train.seed=-1", "train.seed: Input should be greater than or equal to 0"),
    ("strategy.lr.head=1e38", "learning rate for 'head' must be above 0 and at most 10"),
])
def test_numbers_are_finite_and_in_range_or_refused_before_work(tiny_tree, tmp_path, override, message):
    recipe = write_yaml(tmp_path / "r.yaml", tiny_tree)
    code, _, err = cli("train", recipe, "--set", override)
    assert code == 1
    one_line_error(err, message)
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_resume_set_is_validated_and_a_non_utf8_run_recipe_is_refused(tiny_tree, tmp_path):
    run = trained(tiny_tree, train__epochs=1)
    code, _, err = cli("train", "--resume", run, "--set", "data.workers=-3")
    assert code == 1
    one_line_error(err, "data.workers")
    (run / "recipe.yaml").write_bytes((run / "recipe.yaml").read_bytes() + b"# \xff\n")
    code, _, err = cli("train", "--resume", run)
    assert code == 1
    one_line_error(err, "not UTF-8 text")


# ---------------------------------------------------------------- the dataset is read-only to us


@pytest.mark.slow
def test_no_command_writes_inside_the_dataset(tiny_tree, image_folder, tmp_path, monkeypatch):
    before = snapshot(image_folder)
    with pytest.raises(ConfigError, match="the run folder .* is inside the dataset"):
        trained(tiny_tree, run__output=str(image_folder / "runs" / "x"))
    with pytest.raises(ConfigError, match="features.dir .* is inside the dataset"):
        trained(tiny_tree, features__dir=str(image_folder / "cache"))
    monkeypatch.setenv("FINETUNE_CACHE_DIR", str(image_folder / "cache"))  # the file checks' cache: not used there
    run = trained(tiny_tree, train__epochs=1, features__dir=str(tmp_path / "features"))
    monkeypatch.undo()
    # evaluate on a train/ + val/ root: DATA/eval is inside DATA even though val/ is what is scored
    code, _, err = cli("evaluate", run / "best.pt", image_folder, "--output", image_folder / "eval")
    assert code == 1
    one_line_error(err, "inside the dataset")
    # evaluate on its val/: the dataset is the root that holds train/ and val/, not only val/
    code, _, err = cli("evaluate", run / "best.pt", image_folder / "val", "--output", image_folder / "eval")
    assert code == 1
    one_line_error(err, "inside the dataset")
    with pytest.raises(ExportError, match="inside the dataset"):
        from finetune.deploy.export import export

        export(run / "best.pt", "torchscript", image_folder / "train" / "model.pt")
    assert snapshot(image_folder) == before


# ---------------------------------------------------------------- checkpoints: damaged, edited, oversized


def test_damaged_and_edited_checkpoints_are_not_valid(tmp_path):
    path = tmp_path / "best.pt"
    checkpoint_of({"w": torch.arange(4096.0)}).save(path)
    data = bytearray(path.read_bytes())
    start = data.find(torch.arange(4096.0).numpy().tobytes()[:64])
    data[start + 1000:start + 1016] = os.urandom(16)  # random bytes inside the tensor data, the zip intact
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"damaged \(.*fails its CRC check\)"):
        Checkpoint.load(path)

    nan = tmp_path / "nan.pt"
    checkpoint_of({"w": torch.tensor([1.0, float("nan")])}).save(nan)
    with pytest.raises(CheckpointError, match=r"not a valid finetune checkpoint: the weight w holds NaN or inf"):
        Checkpoint.load(nan)
    code, _, err = cli("predict", nan, tmp_path)
    assert code == 1
    one_line_error(err, "not a valid finetune checkpoint")


def test_a_zip_bomb_is_refused_before_it_is_inflated(tmp_path):
    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
        with z.open("archive/data/0", "w") as f:  # 256 MiB of zeros, a few hundred KiB on disk
            for _ in range(256):
                f.write(bytes(1 << 20))
    assert bomb.stat().st_size < 2 << 20
    with pytest.raises(CheckpointError, match=r"would inflate to 0.3 GiB"):
        Checkpoint.load(bomb)


# ---------------------------------------------------------------- exports never destroy a checkpoint


@pytest.mark.slow
def test_export_never_overwrites_a_checkpoint_and_says_why_it_cannot_write(tiny_tree, tmp_path):
    run = trained(tiny_tree, train__epochs=1)
    before = (run / "best.pt").read_bytes()
    code, _, err = cli("export", run / "best.pt", "--format", "torchscript", "--output", run / "best.pt")
    assert code == 1
    one_line_error(err, "is a finetune checkpoint")
    code, _, err = cli("export", run / "best.pt", "--format", "torchscript", "--output", run / "last.pt")
    assert code == 1 and (run / "best.pt").read_bytes() == before
    (tmp_path / "a-file").write_text("in the way")
    code, _, err = cli("export", run / "best.pt", "--format", "torchscript", "--output", tmp_path / "a-file" / "m.pt")
    assert code == 1
    one_line_error(err, "cannot write the export's folder", "a-file is a file, not a folder")
    fifo = tmp_path / "best.pt"
    os.mkfifo(fifo)
    for command in (["predict", fifo, tmp_path], ["train", "/dev/null"]):  # no hang, and not "not found"
        code, _, err = cli(*command)
        assert code == 1
        one_line_error(err, "is a device, a pipe or a socket, not a file")
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        code, _, err = cli("export", run / "best.pt", "--format", "torchscript", "--output", locked / "m.pt")
        assert code == 1 and "Permission denied" in one_line_error(err)


# ---------------------------------------------------------------- names are printed literally, paths never vanish


@pytest.mark.slow
def test_markup_in_names_is_printed_literally_and_named_paths_never_vanish(tiny_tree, tmp_path):
    classes = {"[bold]": (30, 60, 220), "x[/y]": (220, 40, 30)}
    root = make_folder(tmp_path / "odd", {"train": 8, "val": 4}, classes=classes)
    assert (root / "train" / "x[" / "y]").is_dir()  # a class folder "x[" holding a folder "y]"
    tiny_tree["data"]["root"] = str(root)
    run = trained(tiny_tree, train__epochs=1)
    fifo = tmp_path / "y.jpg"
    os.mkfifo(fifo)
    image = next((root / "val" / "x[").rglob("*.png"))
    code, out, err = cli("predict", run / "best.pt", image, "/dev/zero", fifo, "--format", "json")
    assert code == 0, err
    results = {r["path"]: r for r in json.loads(out)}
    assert results[str(image)]["top"] and not results[str(image)].get("error")
    for named in ("/dev/zero", str(fifo)):  # reported, not skipped, and no hang
        assert "not a regular file" in results[named]["error"] and results[named]["top"] == []
    code, out, err = cli("predict", run / "best.pt", image, "/dev/zero")  # the table: a MarkupError before
    assert code == 0 and "unreadable" in out and "x[" in out, err
    code, out, err = cli("predict", run / "best.pt", "/dev/zero", "--format", "json")  # nothing could be read
    assert code == 1 and json.loads(out)[0]["error"] and "none of the 1 image(s) could be read" in err
    code, out, _ = cli("predict", run / "best.pt", image, "--format", "csv")
    assert str(image) in out and "x[/y]" in str(image)
    code, out, err = cli("evaluate", run / "best.pt", root / "val", "--output", tmp_path / "ev")
    assert code == 0 and "[bold]" in out and "x[" in out, err


@pytest.mark.slow
def test_a_fifo_named_like_an_image_is_reported_by_inspect_train_and_predict_not_lost(tiny_tree, tmp_path):
    root = make_folder(tmp_path / "data", {"train": 8, "val": 4})
    fifo = root / "train" / "red" / "zz.jpg"
    os.mkfifo(fifo)
    code, out, err = cli("inspect", root, "--format", "json")
    assert code == 0 and any(f["path"].endswith("zz.jpg") and f["kind"] == "unreadable"
                             for f in json.loads(out)["findings"]), err
    tiny_tree["data"]["root"] = str(root)
    run = trained(tiny_tree, train__epochs=1)
    left_out = json.loads((run / "data.json").read_text())["skipped"]
    assert [Path(s["path"]).name for s in left_out] == ["zz.jpg"]
    code, out, err = cli("predict", run / "best.pt", root / "train" / "red", "--format", "json")
    assert code == 0 and "not a regular file" in {r["path"]: r for r in json.loads(out)}[str(fifo)]["error"], err


# ---------------------------------------------------------------- caches: trusted only when intact


def _entries(cache: Path) -> list[Path]:
    return [p for p in cache.iterdir() if not p.name.startswith(".")]


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["overwritten", "random", "truncated", "labels-missing"])
def test_a_damaged_feature_cache_is_recomputed_not_trusted(tiny_tree, tmp_path, damage, capsys):
    cache = tmp_path / "cache"
    clean = trained(tiny_tree, features__dir=str(cache))
    for entry in _entries(cache):
        features = entry / "features.npy"
        if damage == "overwritten":  # header intact, data garbage
            arr = np.load(features, mmap_mode="r+")
            arr[:] = np.nan
            arr.flush()
        elif damage == "random":  # plausible values: only the checksum tells
            arr = np.load(features, mmap_mode="r+")
            arr[:] = np.random.default_rng(0).normal(size=arr.shape).astype(arr.dtype)
            arr.flush()
        elif damage == "truncated":
            features.write_bytes(features.read_bytes()[:100])
        else:
            (entry / "labels.npy").unlink()
    capsys.readouterr()
    again = trained(tiny_tree, features__dir=str(cache))
    assert "damaged" in capsys.readouterr().err
    assert metrics(again) == metrics(clean)  # trained on recomputed features, not on the damage


@pytest.mark.slow
def test_an_unwritable_cache_means_training_without_it(tiny_tree, tmp_path, monkeypatch, capsys):
    (tmp_path / "a-file").write_text("in the way")
    reference = trained(tiny_tree, features__dir=str(tmp_path / "cache"))
    monkeypatch.setenv("FINETUNE_CACHE_DIR", str(tmp_path / "a-file" / "cache"))  # a folder under a file
    run = trained(tiny_tree)
    err = capsys.readouterr().err
    assert err.count("cannot be written (Not a directory): the frozen part runs every epoch instead") == 1
    assert [r["val_acc"] for r in metrics(run)] == [r["val_acc"] for r in metrics(reference)]


def test_a_damaged_file_check_row_or_database_is_checked_again(image_folder, monkeypatch):
    import sqlite3

    from finetune.cache import cache_dir
    from finetune.data import filecheck

    paths = sorted(image_folder.rglob("*.png"))
    first = filecheck.check_files(paths)
    with sqlite3.connect(cache_dir("files") / "filecheck.sqlite") as db:
        db.execute("UPDATE checks SET result = '{not json' WHERE path = ?", (os.path.abspath(paths[0]),))
        db.execute("UPDATE checks SET result = '[1, 2]' WHERE path = ?", (os.path.abspath(paths[1]),))
    assert filecheck.check_files(paths) == first
    code, _, err = cli("inspect", image_folder)
    assert code == 0, err
    (cache_dir("files") / "filecheck.sqlite").write_bytes(os.urandom(4096))  # the whole database garbage
    assert filecheck.check_files(paths) == first
    calls = []
    monkeypatch.setattr(filecheck, "check_file", lambda p: calls.append(p))
    assert filecheck.check_files(paths) == first and calls == []  # rebuilt: cached again, nothing re-read


# ---------------------------------------------------------------- runs: one per folder, never mixed, never lost


@pytest.mark.slow
def test_one_run_per_folder_and_a_stale_lock_is_taken_over(tiny_tree, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        from finetune.files import process_start

        (run / ".lock").write_text(f"{sleeper.pid} {process_start(sleeper.pid)}\n")  # as a run writes it
        with pytest.raises(ConfigError, match=rf"in use by another finetune run \(pid {sleeper.pid}\)"):
            trained(tiny_tree, run__output=str(run), run__exist_ok=True)
    finally:
        sleeper.kill()
        sleeper.wait()
    (run / ".lock").write_text("1 0\n")  # pid 1 is alive, but it started at another time: the number was reused
    trained(tiny_tree, run__output=str(run), run__exist_ok=True)
    assert "taking over" in capsys.readouterr().err
    (run / ".lock").write_text(f"{sleeper.pid}\n")  # its process is gone now
    (run / ".last.pt.abc123.tmp").write_bytes(b"half a checkpoint")  # left by a kill -9 mid-write
    trained(tiny_tree, run__output=str(run), run__exist_ok=True)
    assert "taking over" in capsys.readouterr().err
    assert not (run / ".lock").exists() and not list(run.glob(".*.tmp"))


@pytest.mark.slow
def test_a_reused_folder_never_mixes_two_runs(tiny_tree, tmp_path, monkeypatch):
    run = trained(tiny_tree, run__output=str(tmp_path / "run"))
    import finetune.train.loop as loop

    def dies(*args, **kwargs):
        raise RuntimeError("power cut")

    monkeypatch.setattr(loop, "train_epoch", dies)
    tiny_tree["train"]["seed"] = 1
    with pytest.raises(RuntimeError):
        trained(tiny_tree, run__output=str(run), run__exist_ok=True)
    assert not (run / "best.pt").exists() and not (run / "metrics.csv").exists()  # no best.pt of the other run
    assert load_recipe(run / "recipe.yaml").train.seed == 1


@pytest.mark.slow
def test_resume_refuses_data_whose_classes_changed(tiny_tree, image_folder, tmp_path):
    run = trained(tiny_tree, train__epochs=1)
    renamed = tmp_path / "renamed"
    shutil.copytree(image_folder, renamed)
    for split in ("train", "val"):
        (renamed / split / "red").rename(renamed / split / "crimson")
    code, _, err = cli("train", "--resume", run, "--data", renamed)
    assert code == 1
    one_line_error(err, "(blue, crimson) are not the ones", "(blue, red)")


# ---------------------------------------------------------------- training: a diverging run stops, honestly


@pytest.mark.slow
def test_a_diverging_run_stops_at_the_first_non_finite_loss_and_saves_no_nan(tiny_tree, tmp_path):
    tiny_tree["optim"] = {"name": "sgd", "momentum": 0.9}
    tiny_tree["strategy"] = {"name": "full", "lr": {"head": 10.0, "last_stage": 10.0, "backbone": 10.0}}
    with pytest.raises(TrainingDiverged, match=r"is nan after epoch 1: training diverged. Learning rates now: head "
                                               r".*lower strategy.lr.*Nothing was saved yet"):
        trained(tiny_tree)
    for name in ("best.pt", "last.pt"):
        assert not (tmp_path / "runs" / "t" / name).exists()
    tiny_tree["strategy"] = {"name": "feature-extract", "lr": {"head": 0.1}, "head_solver": "sgd"}

    # diverging later: the checkpoints of the last good epoch stay, finite, and predict works on them
    import finetune.train.step as step

    calls = {"n": 0}
    real = step.TrainStep.__call__

    def blows_up_in_epoch_2(self, batches):
        calls["n"] += 1
        if calls["n"] > 2:  # 2 steps per epoch here
            with torch.no_grad():
                next(self.model.parameters()).fill_(float("inf"))
        return real(self, batches)

    step.TrainStep.__call__ = blows_up_in_epoch_2
    try:
        with pytest.raises(TrainingDiverged, match=r"epoch 2.*holds the run as of epoch 1"):
            trained(tiny_tree, run__output=str(tmp_path / "later"))
    finally:
        step.TrainStep.__call__ = real
    best = Checkpoint.load(tmp_path / "later" / "best.pt")
    assert best.metrics["epoch"] == 1
    from finetune.deploy.predict import predict

    assert predict(tmp_path / "later" / "best.pt", sorted(Path(tiny_tree["data"]["root"]).rglob("*.png"))[:2],
                   workers=0)[0].top


@pytest.mark.slow
def test_an_image_that_vanishes_mid_run_is_skipped_and_listed(tiny_tree, tmp_path, monkeypatch, capsys):
    import finetune.train.setup as setup

    root = Path(tiny_tree["data"]["root"])
    gone, emptied = root / "train" / "red" / "red3.png", root / "val" / "blue" / "blue1.png"
    real_screen = setup.training_screen

    def then_vanish(*args):
        out = real_screen(*args)  # the pre-scan saw every file
        gone.unlink()
        emptied.write_bytes(b"")
        return out

    monkeypatch.setattr(setup, "training_screen", then_vanish)
    for augment in ("none", "flip"):  # cached features, and images every epoch
        run = trained(tiny_tree, data__augment=augment, run__output=str(tmp_path / augment))
        skipped = {s["path"]: s["reason"] for s in json.loads((run / "data.json").read_text())["skipped"]}
        assert set(skipped) == {str(gone), str(emptied)}, skipped
        assert "during training" in skipped[str(gone)] and "empty" in skipped[str(emptied)]
        assert len(metrics(run)) == tiny_tree["train"]["epochs"]
        make_image(gone, (220, 40, 30))
        make_image(emptied, (30, 60, 220))
    err = capsys.readouterr().err
    assert "left out 2 file(s): " in err and "empty" in err  # how many, and of which kind


def test_a_full_disk_is_said_in_words_and_the_previous_checkpoint_stays(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    good = checkpoint_of({"w": torch.ones(3)}, metrics={"epoch": 1})
    good.save(path)

    def no_space(obj, f):  # what torch 2.14's zip writer says when the disk fills, measured on a full tmpfs
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")

    import shutil

    real_usage = shutil.disk_usage
    monkeypatch.setattr(torch, "save", no_space)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real_usage(p)._replace(free=4096))
    with pytest.raises(ResourceError, match=r"the disk is full: could not write .*last.pt"):
        replace(good, metrics={"epoch": 2}).save(path)
    monkeypatch.setattr(shutil, "disk_usage", real_usage)  # room on the disk: the same error is not a full disk
    with pytest.raises(RuntimeError, match="unexpected pos"):
        replace(good, metrics={"epoch": 2}).save(path)
    monkeypatch.undo()

    from finetune.files import atomic_write

    def enospc(f):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(ResourceError, match="the disk is full"):
        atomic_write(tmp_path / "metrics.csv", enospc)
    assert Checkpoint.load(path).metrics["epoch"] == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


# ---------------------------------------------------------------- signals and bugs, through the real command line

PAUSE_IN_FEATURES = '''
import os, signal, sys
from pathlib import Path
from finetune.train.features.store import FeatureStore
real = FeatureStore.begin
def paused(*args, **kwargs):
    Path(os.environ["PAUSE_MARKER"]).touch()
    signal.pause()
    return real(*args, **kwargs)
FeatureStore.begin = paused
from finetune.cli import app
app(sys.argv[1:], prog_name="finetune")
'''

BUG_IN_TRAINING = '''
import sys
import finetune.train.loop as loop
def broken(*args, **kwargs):
    return 1 / 0
loop.train_epoch = broken
from finetune.cli import app
app(sys.argv[1:], prog_name="finetune")
'''


def run_script(script: str, *args, env=None, wait=True):
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    cmd = [sys.executable, "-c", script, *map(str, args)]
    if wait:
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


@pytest.mark.slow
def test_sigterm_while_computing_features_saves_a_resumable_run(tiny_tree, tmp_path):
    recipe = write_yaml(tmp_path / "r.yaml", tiny_tree)
    marker = tmp_path / "paused"
    proc = run_script(PAUSE_IN_FEATURES, "train", recipe, "--output", tmp_path / "run",
                      env={"PAUSE_MARKER": str(marker)}, wait=False)
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143
    one_line_error(err, "SIGTERM before training started", f"finetune train --resume {tmp_path / 'run'}")
    out = subprocess.run([sys.executable, "-m", "finetune", "train", "--resume", tmp_path / "run"],
                         capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    reference = trained(tiny_tree, run__output=str(tmp_path / "reference"))
    assert metrics(tmp_path / "run") == metrics(reference)


@pytest.mark.slow
def test_an_unexpected_error_is_one_line_and_a_crash_log(tiny_tree, tmp_path):
    recipe = write_yaml(tmp_path / "r.yaml", tiny_tree)
    out = run_script(BUG_IN_TRAINING, "train", recipe, "--output", tmp_path / "run")
    assert out.returncode == 70
    line = out.stderr.strip().splitlines()[-1]
    assert "Traceback" not in out.stderr and line.startswith("unexpected error: ZeroDivisionError")
    assert "This is a bug in finetune" in line and str(tmp_path / "run" / "crash.log") in line
    assert "ZeroDivisionError" in (tmp_path / "run" / "crash.log").read_text()
    debug = run_script(BUG_IN_TRAINING, "train", recipe, "--output", tmp_path / "run2", env={"FINETUNE_DEBUG": "1"})
    assert debug.returncode == 70 and "Traceback" in debug.stderr
