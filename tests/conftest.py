"""Shared fixtures: tiny generated image folders and a tiny-model recipe, so tests run in seconds on CPU."""

import random
import zlib
from pathlib import Path

import pytest
from PIL import Image

COLORS = {"blue": (30, 60, 220), "red": (220, 40, 30)}


def make_image(path: Path, color, size=24, seed=0, fmt=None) -> Path:
    rng = random.Random(seed)
    im = Image.new("RGB", (size, size), tuple(max(0, min(255, c + rng.randint(-40, 40))) for c in color))
    for _ in range(20):  # a little texture so batches differ
        x, y = rng.randrange(size), rng.randrange(size)
        im.putpixel((x, y), tuple(rng.randrange(256) for _ in range(3)))
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, format=fmt)
    return path


def stable_seed(*parts) -> int:
    """A seed from names that is the same in every process (hash() of a str is salted per process)."""
    return zlib.crc32("/".join(map(str, parts)).encode()) % 10_000


def make_folder(root: Path, per_class: dict[str, int], classes=COLORS, ext=".png") -> Path:
    for split, n in per_class.items():
        for name, color in classes.items():
            for i in range(n):
                make_image(root / split / name / f"{name}{i}{ext}", color, seed=stable_seed(split, name, i))
    return root


@pytest.fixture(autouse=True)
def feature_cache_dir(tmp_path, monkeypatch) -> Path:
    """The cache (features, file checks, logs) goes to tmp_path, never to the user's ~/.cache (subprocesses
    inherit the variable)."""
    monkeypatch.setenv("FINETUNE_CACHE_DIR", str(tmp_path / "finetune-cache"))
    monkeypatch.delenv("FINETUNE_CACHE", raising=False)
    return tmp_path / "finetune-cache" / "features"


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """train/ and val/ with two easily separable classes (blue, red)."""
    return make_folder(tmp_path / "colors", {"train": 8, "val": 4})


@pytest.fixture
def tiny_tree(image_folder, tmp_path) -> dict:
    """A recipe tree for a tiny timm model that trains in a second or two."""
    return {
        "model": {"source": "timm", "name": "test_efficientnet", "weights": None},
        "data": {"root": str(image_folder), "image_size": 32, "augment": "none", "workers": 0},
        # sgd: these fixtures test the epoch loop; the solved head's tests (test_solved.py) set lbfgs
        "strategy": {"name": "feature-extract", "lr": {"head": 0.1}, "head_solver": "sgd"},
        "train": {"epochs": 2, "batch_size": 8, "seed": 0},
        "run": {"dir": str(tmp_path / "runs"), "name": "t"},
    }


def write_yaml(path: Path, tree: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(tree))
    return path


def checkpoint_of(state: dict, class_names=("blue", "red"), **fields):
    """A Checkpoint holding `state`, with a plausible architecture and preprocessing, for format-level tests."""
    from finetune.checkpoint import Checkpoint
    from finetune.config import ModelSpec
    from finetune.preprocessing import Preprocessing

    pre = Preprocessing(32, 36, "bilinear", (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    return Checkpoint(ModelSpec(source="timm", name="test_efficientnet", weights=None), list(class_names), pre,
                      "classifier", "feature-extract", state=state, **fields)


def train_tiny(root: Path) -> tuple[Path, Path]:
    """(best.pt, data) of a tiny feature-extract run under `root`, for module-scoped fixtures: the per-test cache
    variable is not set yet, so its feature cache lives under `root` too."""
    from finetune.config import build_recipe
    from finetune.train.loop import fit

    data = make_folder(root / "colors", {"train": 8, "val": 4})
    tree = {"model": {"source": "timm", "name": "test_efficientnet", "weights": None},
            "data": {"root": str(data), "image_size": 32, "augment": "none", "workers": 0},
            "strategy": {"name": "feature-extract", "lr": {"head": 0.1}},
            "train": {"epochs": 2, "batch_size": 8, "seed": 0}, "run": {"output": str(root / "run")},
            "features": {"dir": str(root / "features")}}
    return fit(build_recipe(tree)) / "best.pt", data


def invoke(*args) -> tuple[int, str, str]:
    """The finetune command in this process: (exit code, stdout, stderr)."""
    from typer.testing import CliRunner

    from finetune.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def offline_torchvision_weights(tmp_path: Path, monkeypatch, weights, reference):
    """An offline stand-in for torchvision's download: `reference` filled with random values, its state dict saved
    under the weights entry's own file name in $TORCH_HOME's hub cache. Returns `reference`."""
    import torch

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with torch.no_grad():
        for p in reference.parameters():
            p.normal_()
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(reference.state_dict(), cache / Path(weights.url).name)
    return reference


# A finetune command that holds still after optimizer step $PAUSE_AT (done, not yet recorded) until a signal
# arrives, touching $PAUSE_MARKER (+ $RANK under torchrun) when it gets there: SIGKILL ends it at that step;
# SIGINT/SIGTERM run finetune's own handler, which finishes the step.
PAUSED_CLI = '''
import os, sys, time
from pathlib import Path
from finetune.train import state
pause_at, marker = int(os.environ["PAUSE_AT"]), Path(os.environ["PAUSE_MARKER"] + os.environ.get("RANK", ""))
original = state.RunState.after_step
def after_step(self):
    if self.progress.global_step + 1 == pause_at:
        marker.touch()
        while self.stop.requested is None:  # not signal.pause(): a signal may come before it would wait
            time.sleep(0.01)
    original(self)
state.RunState.after_step = after_step
from finetune.cli import app
app(sys.argv[1:], prog_name="finetune")
'''


def make_multilabel_set(root: Path, train: int = 16, val: int = 8, size: int = 32) -> Path:
    """A multi-label set: red or blue squares, some striped (labels red, blue, striped), every eighth one green
    and plain (no label at all); labels.csv in `root` with relative paths and a split column. Returns `root`."""
    rows = ["path,labels,split"]
    for split, n in (("train", train), ("val", val)):
        for i in range(n):
            rng = random.Random(stable_seed("multilabel", split, i))
            none = i % 8 == 7
            color = "green" if none else ("red", "blue")[i % 2]
            striped = not none and (i // 2) % 2 == 1
            im = Image.new("RGB", (size, size), {"red": (220, 40, 30), "blue": (30, 60, 220),
                                                 "green": (40, 200, 60)}[color])
            if striped:
                for x in range(size):
                    for y in range(0, size, 8):
                        for dy in range(3):
                            im.putpixel((x, (y + dy + rng.randrange(2)) % size), (250, 250, 250))
            for _ in range(20):
                im.putpixel((rng.randrange(size), rng.randrange(size)), tuple(rng.randrange(256) for _ in range(3)))
            name = f"images/{split}{i}.png"
            (root / "images").mkdir(parents=True, exist_ok=True)
            im.save(root / name)
            labels = [] if none else [color] + (["striped"] if striped else [])
            rows.append(f"{name},{('|' if i % 3 else ';').join(labels)},{split}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root
