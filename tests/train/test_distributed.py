"""Data parallel on CPU with gloo and 2 processes: the same run as one process, one run folder written by
rank 0, resumable after kill -9, and one-line errors for what a user can fix."""

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

pytestmark = pytest.mark.slow  # every test here starts torchrun or finetune in subprocesses

REPO = Path(__file__).parents[2]
TOLERANCE = 1e-6  # gloo sums the ranks' gradients in another order than one process: float32 rounding only

def tree(root: Path, name="test_efficientnet", strategy="feature-extract", **train) -> dict:
    """26 train images in global batches of 8: three full ones, and a ragged one of 2 that training leaves out."""
    lr = {"head": 0.1} if strategy == "feature-extract" else {"head": 0.05, "last_stage": 0.02}
    return {"model": {"source": "timm", "name": name, "weights": None},
            "data": {"root": str(root), "image_size": 32, "augment": "flip", "workers": 0},
            "strategy": {"name": strategy, "lr": lr, "head_solver": "sgd"}, "optim": {"name": "sgd", "momentum": 0.9},
            "features": {"views": 2},
            "train": {"epochs": 2, "batch_size": 8, "seed": 0, **train}}


def finetune(*args, env=None, **kw):
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "finetune", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=300, **kw)


def rows(run: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader((run / "metrics.csv").open())]


def assert_same(a: Path, b: Path, tolerance: float = TOLERANCE) -> None:
    for name in ("best.pt", "last.pt"):
        wa, wb = (torch.load(d / name, weights_only=True)["model"] for d in (a, b))
        worst = max((wa[k].double() - wb[k].double()).abs().max().item() for k in wa)
        assert worst <= tolerance, f"{name}: max |difference| {worst:.3g}"
    ra, rb = rows(a), rows(b)
    assert len(ra) == len(rb) and all(x.keys() == y.keys() for x, y in zip(ra, rb))
    for x, y in zip(ra, rb):
        for k in x:
            assert float(x[k]) == pytest.approx(float(y[k]), abs=1e-6), k


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("ddp") / "colors", {"train": 13, "val": 5})


@pytest.mark.parametrize("model, strategy", [("test_efficientnet", "feature-extract"),
                                             ("test_convnext", "last-stage")],
                         ids=["feature-extract", "last-stage"])
def test_two_processes_train_as_one_and_rank_0_writes_the_one_run_folder(data, tmp_path, model, strategy):
    # last-stage on a model without BatchNorm: per-rank batch statistics would differ from one process's
    recipe = write_yaml(tmp_path / "r.yaml", tree(data, model, strategy))
    one = finetune("train", recipe, "--output", tmp_path / "one", "--set", f"features.dir={tmp_path / 'f1'}")
    two = finetune("train", recipe, "--output", tmp_path / "two", "--nproc", "2",
                   "--set", f"features.dir={tmp_path / 'f2'}")  # computed again, the pass shared by the two
    assert one.returncode == 0 and two.returncode == 0, two.stderr
    if strategy == "feature-extract":
        assert "features: train's pass shared by the 2 processes of this machine, up to 13 images each" in two.stderr
    assert two.stdout.strip().splitlines() == [str(tmp_path / "two")]  # rank 0 prints the run folder, once
    assert_same(tmp_path / "one", tmp_path / "two")
    made = sorted(p.name for p in tmp_path.iterdir() if p.name not in ("finetune-cache", "f1", "f2"))
    assert made == ["one", "r.yaml", "two"]  # no second run folder, nothing else
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
    assert torch.load(tmp_path / "two" / "last.pt", weights_only=True)["resume"]["progress"]["world"] == 2


def test_last_stage_of_a_batchnorm_resnet_on_two_processes_with_a_ragged_last_batch(data, tmp_path):
    # 26 images in global batches of 8 over 2 ranks: the ragged batch of 2 would give each rank one image, which
    # crashed layer4's BatchNorm (one value per channel at 32 px). It is left out, on every rank alike.
    spec = tree(data, "resnet18", "last-stage", epochs=1)
    spec["model"]["source"] = "torchvision"
    two = finetune("train", write_yaml(tmp_path / "r.yaml", spec), "--output", tmp_path / "two", "--nproc", "2")
    assert two.returncode == 0, two.stderr[-3000:]
    assert "each epoch leaves out its last 2 train image(s)" in two.stderr
    progress = torch.load(tmp_path / "two" / "last.pt", weights_only=True)["resume"]["progress"]
    assert (progress["world"], progress["global_step"]) == (2, 3)


def test_batch_size_auto_on_two_processes_gives_a_batchnorm_model_two_images_a_process(data, tmp_path):
    # 26 images are too few for 8 steps an epoch of 2 a process: auto had then taken 1, which the run refused
    spec = tree(data, "resnet18", "last-stage", epochs=1, batch_size="auto")
    spec["model"]["source"] = "torchvision"
    two = finetune("train", write_yaml(tmp_path / "r.yaml", spec), "--output", tmp_path / "two", "--nproc", "2")
    assert two.returncode == 0, two.stderr[-3000:]
    assert "train.batch_size auto: 4 (2 per process, the smallest of 2 processes' searches" in two.stderr
    assert "each epoch leaves out its last 2 train image(s)" in two.stderr


def killed_mid_epoch_2(recipe: Path, tmp_path: Path, out: Path) -> None:
    """`finetune train recipe` on 2 processes, the launcher killed (kill -9) while both ranks hold at step 5."""
    driver, marker = tmp_path / "paused.py", tmp_path / "paused-rank"
    driver.write_text(PAUSED_CLI)
    env = {**os.environ, "PYTHONPATH": str(REPO), "PAUSE_AT": "5", "PAUSE_MARKER": str(marker)}
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             str(driver), "train", str(recipe), "--output", str(out)],
                            env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.monotonic() + 240
    while not all(Path(f"{marker}{r}").exists() for r in (0, 1)):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the ranks never reached step 5: {proc.communicate()[1][-2000:]}")
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)  # the launcher, mid-epoch 2: its ranks are told (SIGTERM) and stop
    proc.wait()
    lock = out / ".lock"
    while lock.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    saved = torch.load(out / "last.pt", weights_only=True)["resume"]["progress"]
    assert (saved["epoch"], saved["step"], saved["world"]) == (2, 2, 2)  # the step in flight finished and saved


def test_kill_9_of_the_launcher_mid_epoch_then_resume_on_as_many_processes_is_exact(data, tmp_path):
    recipe = write_yaml(tmp_path / "r.yaml", tree(data, save_every=1))
    reference = finetune("train", recipe, "--output", tmp_path / "reference", "--nproc", "2")
    assert reference.returncode == 0, reference.stderr
    killed_mid_epoch_2(recipe, tmp_path, tmp_path / "killed")
    alone = finetune("train", "--resume", tmp_path / "killed")
    assert alone.returncode == 1 and "resume it on 2 (torchrun --nproc_per_node=2)" in alone.stderr
    resumed = finetune("train", "--resume", tmp_path / "killed", "--nproc", "2")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming epoch 2 after step 2" in resumed.stderr
    assert_same(tmp_path / "reference", tmp_path / "killed", tolerance=0.0)  # the same two processes: exact


def test_two_processes_on_shards_killed_mid_shard_and_resumed_train_as_on_the_folder(data, tmp_path):
    # the shards of `data` (3 train shards of 10, 10, 6): step 5 is mid-epoch 2, inside a shard. The images come
    # in the folder's order (data.shard_reader), so the run equals the folder's, bit for bit, resume included
    from finetune.data.shards import ShardLimit, write_shards

    write_shards(data, tmp_path / "shards", ShardLimit(images=10), 0.2, 0)
    folder = finetune("train", write_yaml(tmp_path / "f.yaml", tree(data)), "--output", tmp_path / "folder",
                      "--nproc", "2")
    assert folder.returncode == 0, folder.stderr
    recipe = write_yaml(tmp_path / "r.yaml", tree(tmp_path / "shards", save_every=1))
    killed_mid_epoch_2(recipe, tmp_path, tmp_path / "shards-run")
    resumed = finetune("train", "--resume", tmp_path / "shards-run", "--nproc", "2")
    assert resumed.returncode == 0 and "resuming epoch 2 after step 2" in resumed.stderr, resumed.stderr
    assert_same(tmp_path / "folder", tmp_path / "shards-run", tolerance=0.0)


def test_two_processes_streaming_shards_with_mixup_killed_mid_shard_resume_bit_for_bit(data, tmp_path):
    # data.shuffle_buffer: each rank reads its own shards (3 of 10, 10, 6 train images: dealt 2 and 1, again each
    # epoch) through a buffer, 12 images a rank an epoch; resumed at step 5 it is the uninterrupted run exactly
    from finetune.data.shards import ShardLimit, write_shards

    write_shards(data, tmp_path / "shards", ShardLimit(images=10), 0.2, 0)
    spec = tree(tmp_path / "shards", save_every=1)
    spec["data"].update(shuffle_buffer=4, mixup=0.2)
    recipe = write_yaml(tmp_path / "r.yaml", spec)
    reference = finetune("train", recipe, "--output", tmp_path / "reference", "--nproc", "2")
    assert reference.returncode == 0, reference.stderr[-3000:]
    assert "streamed: each process trains on 12 images an epoch, read from its own shards" in reference.stderr
    killed_mid_epoch_2(recipe, tmp_path, tmp_path / "killed")
    resumed = finetune("train", "--resume", tmp_path / "killed", "--nproc", "2")
    assert resumed.returncode == 0 and "resuming epoch 2 after step 2" in resumed.stderr, resumed.stderr
    assert_same(tmp_path / "reference", tmp_path / "killed", tolerance=0.0)


def test_what_a_user_can_fix_is_one_line(data, tmp_path):
    recipe = write_yaml(tmp_path / "r.yaml", tree(data))
    half = {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}  # torchrun's variables, without the rendezvous
    out = finetune("train", recipe, env=half)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "MASTER_ADDR, MASTER_PORT is not set: start distributed training with torchrun" in out.stderr
    out = finetune("train", recipe, "--nproc", "2", "--set", "train.dist_backend=nccl")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "train.dist_backend nccl needs CUDA devices" in out.stderr
    out = finetune("train", recipe, "--nproc", "3")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.count("train.batch_size 8 is the batch over all 3 processes") == 1  # said once, by rank 0
    assert not (REPO / "runs").exists() or not any((REPO / "runs").glob("r*"))


RANK_1_DIES = '''
import os, signal, sys
from finetune.train import state
original = state.RunState.after_step
def after_step(self):
    if os.environ.get("RANK") == "1" and self.progress.global_step == 2:  # killed, as by the OOM killer
        os.kill(os.getpid(), signal.SIGKILL)
    original(self)
state.RunState.after_step = after_step
from finetune.cli import app
app(sys.argv[1:], prog_name="finetune")
'''


def test_a_rank_that_dies_is_said_in_words_not_as_a_bug(data, tmp_path):
    recipe = write_yaml(tmp_path / "r.yaml", tree(data, save_every=1))
    driver = tmp_path / "dies.py"
    driver.write_text(RANK_1_DIES)
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(driver), "train", str(recipe), "--output", str(tmp_path / "run")],
                         env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    ours = [line for line in out.stderr.splitlines() if line.startswith(("error:", "unexpected error:"))]
    assert out.returncode != 0 and len(ours) == 1 and "This is a bug" not in ours[0], out.stderr[-3000:]
    assert ours[0].startswith("error: another process of this 2-process run stopped"), ours  # said by rank 0
    assert "holds the run as of epoch 1 step 2" in out.stderr and "--resume" in out.stderr
    assert not (tmp_path / "run" / "crash.log").exists()
