"""A run that dies (SIGKILL), is stopped (Ctrl-C, SIGTERM) or runs out of memory loses nothing:
resumed, it ends with exactly the weights and metrics of the same run left alone."""

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import PAUSED_CLI, make_folder, write_yaml

from finetune.config import build_recipe
from finetune.console import quiet_console
from finetune.errors import ConfigError, ResourceError, RunInterrupted
from finetune.train.checkpoints import CheckpointWriter
from finetune.train.loop import fit
from finetune.train.resume import load_run_recipe
from finetune.train.state import RunState
from finetune.train.stop import StopGuard

REPO = Path(__file__).parents[2]

def tiny_resume_tree(root: Path, runs: Path) -> dict:
    """16 train images, batch 4: 4 steps per epoch; random crops, flips and dropout so RNG state matters."""
    return {
        "model": {"source": "timm", "name": "test_efficientnet", "weights": None, "head": {"dropout": 0.3}},
        "data": {"root": str(root), "image_size": 32, "augment": "standard", "workers": 0},
        "strategy": {"name": "feature-extract", "lr": {"head": 0.1}},
        "train": {"epochs": 2, "batch_size": 4, "seed": 0},
        "run": {"dir": str(runs), "name": "t"},
    }


def finetune(*args, env=None, **kw):
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "finetune", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=REPO, **kw)


def start_paused(tmp: Path, pause_at: int, *args) -> tuple[subprocess.Popen, Path]:
    driver, marker = tmp / "driver.py", tmp / f"paused-{pause_at}"
    driver.write_text(PAUSED_CLI)
    env = {**os.environ, "PYTHONPATH": str(REPO), "PAUSE_AT": str(pause_at), "PAUSE_MARKER": str(marker)}
    proc = subprocess.Popen([sys.executable, str(driver), *map(str, args)], env=env, cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 120
    while not marker.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"training never reached step {pause_at}: {proc.communicate()[1]}")
        time.sleep(0.1)
    return proc, marker


def progress(run_dir: Path) -> dict:
    # weights_only=True: last.pt with all its resume state is tensors and plain data only
    return torch.load(run_dir / "last.pt", map_location="cpu", weights_only=True)["resume"]["progress"]


def assert_same_run(a: Path, b: Path) -> None:
    for name in ("last.pt", "best.pt"):
        wa = torch.load(a / name, weights_only=True)["model"]
        wb = torch.load(b / name, weights_only=True)["model"]
        assert wa.keys() == wb.keys()
        for k in wa:
            assert torch.equal(wa[k], wb[k]), f"{name}:{k} differs by {(wa[k].double() - wb[k].double()).abs().max()}"
    rows = [[{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader((d / "metrics.csv").open())]
            for d in (a, b)]
    assert rows[0] == rows[1] and len(rows[0]) == 2


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The recipe, and the run left alone (workers=0)."""
    tmp = tmp_path_factory.mktemp("resume")
    root = make_folder(tmp / "colors", {"train": 8, "val": 4})
    recipe = write_yaml(tmp / "tiny.yaml", tiny_resume_tree(root, tmp / "runs"))
    out = finetune("train", recipe, "--output", tmp / "reference")
    assert out.returncode == 0, out.stderr
    return recipe, tmp / "reference"


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_is_bit_identical(reference, tmp_path):
    recipe, ref = reference
    run = tmp_path / "killed"
    # saves every 2 steps; paused during global step 7 (epoch 2, step 3), one step after the save at step 6.
    # Two loader workers here, none in the reference: the data order must not depend on them.
    proc, _ = start_paused(tmp_path, 7, "train", recipe, "--output", run, "--set", "train.save_every=2",
                           "--set", "data.workers=2")
    saved = progress(run)
    assert (saved["epoch"], saved["step"], saved["global_step"]) == (2, 2, 6)  # mid-epoch, not an epoch end
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()

    out = finetune("train", "--resume", run)
    assert out.returncode == 0, out.stderr
    assert "resuming epoch 2 after step 2" in out.stderr
    assert out.stdout.strip().splitlines()[-1] == str(run)
    assert_same_run(ref, run)


@pytest.mark.slow
def test_sigkill_and_resume_stay_bit_identical_with_every_technique_on(tmp_path):
    """freeze_epochs, layer decay, EMA, mixup + cutmix, random erasing, accumulation and clipping together:
    16 images in batches of 2, 2 batches per optimizer step, so 4 steps per epoch."""
    root = make_folder(tmp_path / "colors", {"train": 8, "val": 4})
    tree = tiny_resume_tree(root, tmp_path / "runs")
    tree["strategy"] = {"name": "last-stage", "lr": {"head": 0.05, "last_stage": 0.02}, "freeze_epochs": 1,
                        "layer_decay": 0.8}
    tree["data"].update(mixup=0.4, cutmix=1.0, random_erasing=0.5, augment="trivialaugment")
    tree["train"].update(batch_size=2, accumulate=2, ema=0.9, grad_clip=1.0)
    recipe = write_yaml(tmp_path / "techniques.yaml", tree)
    out = finetune("train", recipe, "--output", tmp_path / "reference")
    assert out.returncode == 0, out.stderr
    run = tmp_path / "killed"
    proc, _ = start_paused(tmp_path, 7, "train", recipe, "--output", run, "--set", "train.save_every=2",
                           "--set", "data.workers=1")
    assert (progress(run)["epoch"], progress(run)["step"]) == (2, 2)  # after the unfreezing, mid-epoch
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    out = finetune("train", "--resume", run)
    assert out.returncode == 0, out.stderr
    assert_same_run(tmp_path / "reference", run)
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert float(rows[0]["lr_last_stage"]) == 0 < float(rows[1]["lr_last_stage"]) and "val_acc_raw" in rows[0]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_finishes_the_step_saves_last_pt_and_resumes(reference, tmp_path, sig):
    recipe, ref = reference
    run = tmp_path / "stopped"
    proc, _ = start_paused(tmp_path, 3, "train", recipe, "--output", run, "--set", "data.workers=2")
    # Ctrl-C in a terminal reaches the whole process group, loader workers included
    os.killpg(proc.pid, sig) if sig == signal.SIGINT else proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, stderr
    assert "Traceback" not in stderr
    assert f"stopped: {sig.name} in epoch 1 after step 3; saved" in stderr
    assert f"finetune train --resume {run}" in stderr
    assert progress(run)["step"] == 3 and progress(run)["epoch"] == 1  # the step in flight was finished and kept

    if sig == signal.SIGINT:
        out = finetune("train", "--resume", run)
        assert out.returncode == 0, out.stderr
        assert_same_run(ref, run)


def test_sigterm_again_is_the_same_stop_and_ctrl_c_again_stops_at_once(tmp_path):
    # kill -9 of torchrun: each rank gets SIGTERM once for each launcher thread that ends, ms apart
    run = RunState(CheckpointWriter(tmp_path, None), None, StopGuard(quiet_console()))
    run.stop.training = True
    with run.running(8, 32):
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)
    assert run.stop.requested == "SIGTERM"  # still finishing the step: the loop saves and stops after it
    with pytest.raises(RunInterrupted, match="a second Ctrl-C, so at once"), run.running(8, 32):
        os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the guard put pytest's handler back


def test_a_signal_during_the_setup_stops_at_once_even_inside_code_that_catches_exception(tmp_path):
    run = RunState(CheckpointWriter(tmp_path, None), None, StopGuard(quiet_console()))  # not training yet: the
    run.save = lambda *args: None  # feature pass may be long
    with pytest.raises(RunInterrupted, match="SIGTERM before training started"), run.running(8, 32):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
        except Exception:  # as the frozen-prefix check does around a trial forward
            pass
        raise AssertionError("the stop was swallowed")


@pytest.mark.slow
def test_resume_of_a_finished_run_changes_nothing(reference, tmp_path):
    _, ref = reference
    before = (ref / "metrics.csv").read_text(), (ref / "last.pt").read_bytes()
    fit(load_run_recipe(ref), resume_dir=ref)
    assert ((ref / "metrics.csv").read_text(), (ref / "last.pt").read_bytes()) == before


@pytest.mark.slow
def test_resume_refuses_to_change_what_the_run_computes(reference):
    _, ref = reference
    with pytest.raises(ConfigError, match="--set train.batch_size would change it"):
        load_run_recipe(ref, ["train.batch_size=8"])
    assert load_run_recipe(ref, ["data.workers=1"]).data.workers == 1


@pytest.mark.slow
def test_resume_refuses_an_edited_recipe(reference, tmp_path):
    _, ref = reference
    run = tmp_path / "copy"
    run.mkdir()
    for name in ("last.pt", "recipe.yaml"):
        (run / name).write_bytes((ref / name).read_bytes())
    (run / "recipe.yaml").write_text((run / "recipe.yaml").read_text().replace("batch_size: 4", "batch_size: 8"))
    with pytest.raises(ConfigError, match=r"no longer matches.*train.batch_size: 4 -> 8"):
        load_run_recipe(run)


@pytest.mark.slow
def test_resume_reads_recipe_yaml_safely(tmp_path):
    marker = tmp_path / "pwned"
    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.yaml").write_text(f"train: !!python/object/apply:os.system ['touch {marker}']\n")
    out = finetune("train", "--resume", run)
    assert out.returncode == 1 and "cannot read recipe" in out.stderr and "Traceback" not in out.stderr
    assert not marker.exists()


@pytest.mark.slow
def test_resume_without_last_pt_says_how_to_restart(tmp_path, image_folder):
    run = tmp_path / "run"
    run.mkdir()
    write_yaml(run / "recipe.yaml", tiny_resume_tree(image_folder, tmp_path / "runs"))
    out = finetune("train", "--resume", run)
    assert out.returncode == 1 and "has no last.pt" in out.stderr and "--exist-ok" in out.stderr


@pytest.mark.slow
def test_out_of_memory_says_what_to_lower_and_keeps_last_epoch(tmp_path, image_folder, monkeypatch):
    from finetune.train import state

    original = state.RunState.after_step

    def after_step(self):
        if self.progress.epoch == 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        original(self)

    monkeypatch.setattr(state.RunState, "after_step", after_step)
    recipe = build_recipe(tiny_resume_tree(image_folder, tmp_path / "runs"))
    with pytest.raises(ResourceError, match=r"out of memory in epoch 2 \(train.batch_size 4, data.image_size 32\): "
                                            r"lower train.batch_size.*holds the run as of epoch 1"):
        fit(recipe)
    p = progress(tmp_path / "runs" / "t")
    assert (p["epoch"], p["step"], len(p["rows"])) == (2, 0, 1)


def test_best_is_the_highest_val_acc_and_ties_go_to_the_lower_val_loss(tmp_path):
    run = RunState(CheckpointWriter(tmp_path, None), None, StopGuard(quiet_console()))
    rows = [(0.90, 0.5), (0.95, 0.4), (0.95, 0.2), (0.95, 0.3), (0.93, 0.1)]
    bests = [run.end_epoch({"epoch": i, "train_loss": 1.0, "val_acc": acc, "val_loss": loss})
             for i, (acc, loss) in enumerate(rows, 1)]
    assert bests == [True, True, True, False, False]
