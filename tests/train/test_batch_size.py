"""train.batch_size auto: a power of two found on real steps, recorded in recipe.yaml and said; the search trains
nothing (the run with auto is the run with the size it found, bit for bit); on CUDA the largest size that fits by a
binary search that survives running out of memory; on the CPU the most images/s; resume never searches again."""

import math

import pytest
import torch
import yaml
from torch import nn

from finetune.checkpoint import Checkpoint
from finetune.config import build_recipe
from finetune.console import quiet_console, stderr_console
from finetune.errors import ConfigError
from finetune.runtime.device import Compute
from finetune.train import batch_size
from finetune.train.batch_size import find_batch_size, largest_fitting, untouched
from finetune.train.loop import fit
from finetune.train.resume import load_run_recipe
from finetune.train.setup import prepare


def searched_tree(tree: dict, **train) -> dict:
    """The tiny recipe where the search runs: the whole model trains (nothing stored), with dropout and random
    augmentation so that the RNG matters."""
    tree = {**tree, "strategy": {"name": "full", "lr": {"head": 0.05, "last_stage": 0.01, "backbone": 0.01}},
            "data": {**tree["data"], "augment": "standard"}, "train": {**tree["train"], **train}}
    tree["model"] = {**tree["model"], "head": {"dropout": 0.3}}
    return tree


@pytest.fixture
def one_timed_step(monkeypatch):
    """The search with one timed step per size: for tests of what it leaves behind, not of what it picks."""
    monkeypatch.setattr(batch_size, "TIMED_STEPS", 1)


def recorded_batch(run_dir) -> int:
    return yaml.safe_load((run_dir / "recipe.yaml").read_text())["train"]["batch_size"]


def test_the_recipe_takes_auto_or_a_number_of_images(tiny_tree):
    assert build_recipe({**tiny_tree, "train": {"batch_size": "auto"}}).train.batch_size == "auto"
    for bad in (0, "big", 100_000):
        with pytest.raises(ConfigError, match="batch_size"):
            build_recipe({**tiny_tree, "train": {"batch_size": bad}})


@pytest.mark.slow  # a run or two
def test_auto_is_a_power_of_two_written_to_recipe_yaml_and_said(tiny_tree, capsys, one_timed_step):
    run_dir = fit(build_recipe(searched_tree(tiny_tree, batch_size="auto", epochs=1)))
    size = recorded_batch(run_dir)
    assert size in (2, 4, 8, 16)  # 16 train images: no batch beyond them
    assert f"train.batch_size auto: {size} (" in capsys.readouterr().err
    assert Checkpoint.load(run_dir / "last.pt").recipe["train"]["batch_size"] == size  # what --resume checks against


def test_the_search_leaves_model_optimizer_and_rng_as_without_it(tiny_tree, one_timed_step):
    auto = prepare(build_recipe(searched_tree(tiny_tree, batch_size="auto")), quiet_console())
    after_auto = torch.rand(4)
    size = auto.recipe.train.batch_size
    fixed = prepare(build_recipe(searched_tree(tiny_tree, batch_size=size)), quiet_console())
    after_fixed = torch.rand(4)
    assert auto.loaders.batch_size == size and len(auto.loaders.train) == len(fixed.loaders.train)
    a, b = auto.step.model.state_dict(), fixed.step.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # weights and BatchNorm statistics
    assert all(p.grad is None for p in auto.step.model.parameters())
    assert auto.step.optimizer.state_dict() == fixed.step.optimizer.state_dict()
    assert auto.step.scheduler.state_dict() == fixed.step.scheduler.state_dict()
    assert torch.equal(after_auto, after_fixed)  # the global RNG: dropout's draws from here on


@pytest.mark.slow
def test_a_run_with_auto_is_the_run_with_the_size_it_found_bit_for_bit(tiny_tree, tmp_path, one_timed_step):
    auto = fit(build_recipe(searched_tree(tiny_tree, batch_size="auto", epochs=2)))
    size = recorded_batch(auto)
    tree = searched_tree(tiny_tree, batch_size=size, epochs=2)
    fixed = fit(build_recipe({**tree, "run": {"output": str(tmp_path / "fixed")}}))
    for name in ("best.pt", "last.pt"):
        wa, wb = (torch.load(d / name, weights_only=True)["model"] for d in (auto, fixed))
        assert all(torch.equal(wa[k], wb[k]) for k in wa), name
    rows = [[line.split(",")[:-1] for line in (d / "metrics.csv").read_text().splitlines()] for d in (auto, fixed)]
    assert rows[0] == rows[1]  # every score; the seconds differ


def test_untouched_puts_back_weights_buffers_gradients_modes_and_rng():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Dropout(0.5), nn.Linear(4, 2))
    model[1].eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = torch.get_rng_state()
    with untouched(model):
        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=0.1)
        for _ in range(3):
            model(torch.randn(8, 4)).sum().backward()
            opt.step()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert not model[1].training and model[0].training
    assert torch.equal(torch.get_rng_state(), state)


class OutOfMemoryAbove:
    """A training step that runs out of CUDA memory above `limit` images, and otherwise 'uses' 1 GiB per image."""

    def __init__(self, limit: int):
        self.limit, self.tried, self.peak = limit, [], 0
        self.model = nn.Linear(3, 2)

    def train_mode(self):
        pass

    def __call__(self, batches):
        n = len(batches[0][1])
        self.tried.append(n)
        if n > self.limit:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory trying {n}")
        self.peak = max(self.peak, n * 2**30)
        return 0.0, 0, n


def fake_cuda(monkeypatch, step: OutOfMemoryAbove, gib: float):
    """torch.cuda's memory readings as a `gib` GiB device would give them, with `step` the only user."""
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (int(gib * 2**30), int(gib * 2**30)))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 0)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: setattr(step, "peak", 0))
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda device=None: step.peak)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)


class Images:
    """Stands in for the run's ImageDataset: `n` tiny (image, label) samples (enough for 8 steps of 1024)."""

    def __init__(self, n: int = 10_000):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return torch.zeros(3, 4, 4), i % 2


def test_cuda_search_is_a_binary_search_that_backs_off_when_memory_runs_out(monkeypatch, capsys):
    step = OutOfMemoryAbove(limit=300)
    fake_cuda(monkeypatch, step, gib=1000)  # the margin is no limit here: only running out is
    size = find_batch_size(lambda: step, Images(), None, False, Compute(torch.device("cuda")), 0, stderr_console())
    assert size == 256  # the largest power of two under 300
    assert sorted(set(step.tried)) == [32, 256, 512]  # a binary search over 2..1024: 3 sizes of 10, one ran out
    said = capsys.readouterr().err
    assert "train.batch_size auto: 256 (" in said and "512 did not fit" in said


def test_the_batch_leaves_eight_steps_an_epoch_so_the_ragged_batch_dropped_stays_small(monkeypatch, capsys):
    step = OutOfMemoryAbove(limit=10_000)
    fake_cuda(monkeypatch, step, gib=1000)
    size = find_batch_size(lambda: step, Images(450), None, False, Compute(torch.device("cuda")), 0, quiet_console())
    assert size == 32 and max(step.tried) == 32  # 450 // 8 = 56: 64 is never tried (256 left out 194 images)
    assert 450 % size < 450 / batch_size.MIN_STEPS
    assert find_batch_size(lambda: step, Images(15), None, False, Compute(torch.device("cuda")), 0,
                           stderr_console()) == 2  # never 1, which a BatchNorm layer cannot train on
    assert "too few train images per process for 8 steps" in capsys.readouterr().err


def test_cuda_search_leaves_the_margin_free(monkeypatch):
    step = OutOfMemoryAbove(limit=10_000)
    fake_cuda(monkeypatch, step, gib=70)  # 63 GiB within the margin: 32 images fit, 64 would not (without it, 64)
    size = find_batch_size(lambda: step, Images(), None, False, Compute(torch.device("cuda")), 0, quiet_console())
    assert size == 32


def test_not_even_the_smallest_batch_fitting_is_a_user_error(monkeypatch):
    step = OutOfMemoryAbove(limit=1)
    fake_cuda(monkeypatch, step, gib=100)
    with pytest.raises(batch_size.ResourceError, match="not even a batch of 2"):
        find_batch_size(lambda: step, Images(), None, False, Compute(torch.device("cuda")), 0, quiet_console())


def test_largest_fitting_treats_out_of_memory_as_too_large():
    def peak(n):
        if n >= 64:
            raise torch.cuda.OutOfMemoryError("out of memory")
        return float(n)

    assert largest_fitting(peak, [2, 4, 8, 16, 32, 64, 128], budget=1e9)[0] == 32
    assert largest_fitting(peak, [2, 4, 8, 16, 32, 64, 128], budget=10.0)[0] == 8
    best, measured = largest_fitting(peak, [64, 128], budget=1e9)
    assert best is None and math.isnan(measured[64]) and 128 not in measured  # nothing above a size that ran out


class Timed:
    """A CPU step that takes `seconds_per_step` x (1 + n/16) seconds of a fake clock for n images (images/s levels
    off) and holds
    `per_image` bytes of memory per image."""

    def __init__(self, clock: list, per_image: int = 0, seconds_per_step: float = 0.1):
        self.clock, self.per_image, self.tried, self.held = clock, per_image, [], 0
        self.fixed = seconds_per_step
        self.model = nn.Linear(3, 2)

    def train_mode(self):
        pass

    def __call__(self, batches):
        n = len(batches[0][1])
        self.tried.append(n)
        self.clock[0] += self.fixed * (1 + n / 16)
        self.held = max(self.held, n * self.per_image)
        return 0.0, 0, n


def test_cpu_search_takes_the_most_images_per_second_and_stops_when_it_levels_off(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(batch_size, "perf_counter", lambda: clock[0])
    step = Timed(clock)
    size = find_batch_size(lambda: step, Images(), None, False, Compute(torch.device("cpu")), 0, quiet_console())
    # images/s: 128 -> 142, 256 -> 151 (+6%), 512 -> 155 and 1024 -> 158 (+3%, +4.5%: under RISE twice in a row):
    # 256, and nothing beyond 1024 is timed
    assert size == 256 and max(step.tried) == 1024
    assert step.tried.count(256) == 1 + batch_size.TIMED_STEPS  # a warm-up step, then the timed ones


def test_cpu_search_stops_before_a_size_whose_steps_would_take_minutes(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(batch_size, "perf_counter", lambda: clock[0])
    step = Timed(clock, seconds_per_step=5.0)  # 5 + 5n/16 s: 128 images 2.8/s, so 256's four steps would take 360 s
    size = find_batch_size(lambda: step, Images(), None, False, Compute(torch.device("cpu")), 0, quiet_console())
    assert size == 128 and max(step.tried) == 128  # without the bound: 256 (3.0/s, +6%)


def test_cpu_search_stops_before_a_batch_would_take_too_much_of_the_ram(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(batch_size, "perf_counter", lambda: clock[0])
    step = Timed(clock, per_image=1 << 20)  # 1 MiB an image
    monkeypatch.setattr(batch_size, "available_memory", lambda: 100 << 20)  # 100 MiB free: half is 50
    monkeypatch.setattr(batch_size, "resident_memory", lambda: 0)
    monkeypatch.setattr(batch_size, "peak_resident_memory", lambda: step.held)
    size = find_batch_size(lambda: step, Images(), None, False, Compute(torch.device("cpu")), 0, quiet_console())
    assert size == 32 and max(step.tried) == 32  # 64 would need 64 MiB


@pytest.mark.slow  # a run or two
def test_the_head_alone_on_stored_features_takes_the_default_without_a_search(tiny_tree, monkeypatch, capsys):
    monkeypatch.setattr(batch_size, "Trials", None)  # any search would fail here
    run_dir = fit(build_recipe({**tiny_tree, "train": {**tiny_tree["train"], "batch_size": "auto", "epochs": 1}}))
    assert recorded_batch(run_dir) == batch_size.STORED_FEATURES_BATCH
    assert "the head trains on stored features" in capsys.readouterr().err


@pytest.mark.slow  # a run or two
def test_resume_uses_the_recorded_size_and_never_searches_again(tiny_tree, monkeypatch, capsys, one_timed_step):
    run_dir = fit(build_recipe(searched_tree(tiny_tree, batch_size="auto", epochs=1)))
    size = recorded_batch(run_dir)
    capsys.readouterr()
    monkeypatch.setattr(batch_size, "Trials", None)
    recipe = load_run_recipe(run_dir)
    assert recipe.train.batch_size == size
    fit(recipe, resume_dir=run_dir)
    assert "train.batch_size auto" not in capsys.readouterr().err
    assert recorded_batch(run_dir) == size
