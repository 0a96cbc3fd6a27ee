"""distill: the loss is Hinton et al.'s formula, alpha 0 is plain training, the teacher's logits of fixed inputs are
computed once per image and looked up by the right index, a teacher of other classes is refused, and a killed run
resumes bit-identical with the teacher on."""

import copy
import csv
import json
import math
import os
import signal

import pytest
import torch
from conftest import make_folder, train_tiny, write_yaml

from finetune.config import build_recipe
from finetune.data.loading import EpochBatches
from finetune.data.sampling import EpochSampler
from finetune.errors import CheckpointError, ConfigError
from finetune.preprocessing import Preprocessing
from finetune.runtime.device import Compute
from finetune.train.distill import CachedTeacherBatches, Teacher, distillation_loss
from finetune.train.loop import fit


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """best.pt of a tiny run on the blue/red colours (the classes of conftest's image_folder)."""
    return train_tiny(tmp_path_factory.mktemp("teacher"))[0]


def distilled(tree: dict, teacher, **spec) -> dict:
    tree = copy.deepcopy(tree)
    tree["distill"] = {"teacher": str(teacher), **spec}
    return tree


def weights(run_dir):
    return torch.load(run_dir / "last.pt", weights_only=True)["model"]


def test_the_loss_is_hintons_formula_computed_by_hand():
    student, teacher = [[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]], [[1.0, 3.0, 0.0], [0.0, 0.0, 2.0]]
    alpha, t, hard = 0.3, 4.0, 0.7

    def softmax(row):
        e = [math.exp(v / t) for v in row]
        return [v / sum(e) for v in e]

    kl = sum(p * math.log(p / q) for s_row, t_row in zip(student, teacher)
             for p, q in zip(softmax(t_row), softmax(s_row))) / len(student)  # KL(teacher || student), batch mean
    expected = (1 - alpha) * hard + alpha * t * t * kl
    got = distillation_loss(torch.tensor(hard), torch.tensor(student), torch.tensor(teacher), alpha, t)
    assert float(got) == pytest.approx(expected, rel=1e-6)


@pytest.mark.slow
def test_alpha_zero_trains_exactly_as_without_distill_and_alpha_half_does_not(tiny_tree, teacher, tmp_path, capsys):
    plain = copy.deepcopy(tiny_tree)
    plain["run"] = {"output": str(tmp_path / "plain")}
    zero = distilled(plain, teacher, alpha=0.0)
    zero["run"] = {"output": str(tmp_path / "zero")}
    half = distilled(plain, teacher, alpha=0.5)
    half["run"] = {"output": str(tmp_path / "half")}
    runs = [fit(build_recipe(tree)) for tree in (plain, zero, half)]
    a, b, c = map(weights, runs)
    assert all(torch.equal(a[k], b[k]) for k in a)  # the teacher draws nothing from the RNG and adds 0 * KL
    assert not all(torch.equal(a[k], c[k]) for k in a)  # ... and with alpha 0.5 its logits reach the loss
    record = json.loads((runs[2] / "distill.json").read_text())
    assert record["alpha"] == 0.5 and record["teacher_logits"] == "once per train image"
    rows = list(csv.DictReader((runs[2] / "metrics.csv").open()))
    assert 0 <= record["teacher_val_acc"] <= 1 and record["student_val_acc"] == pytest.approx(
        max(float(r["val_acc"]) for r in rows), abs=1e-4)
    assert "--set distill=null" in record["without"]
    assert "without the teacher" in capsys.readouterr().err  # the summary compares teacher and student


@pytest.mark.slow
@pytest.mark.parametrize("augment, passes", [("none", 1), ("flip", 2)])
def test_teacher_runs_once_per_image_when_the_inputs_are_fixed(tiny_tree, teacher, monkeypatch, augment, passes):
    """16 train images, 2 epochs: the teacher sees each once with augment none, each epoch with random flips
    (and val's 8 once, for its score)."""
    seen = []
    original = Teacher.logits
    monkeypatch.setattr(Teacher, "logits", lambda self, images: seen.append(len(images)) or original(self, images))
    tree = distilled(tiny_tree, teacher)
    tree["data"]["augment"] = augment
    fit(build_recipe(tree))
    assert sum(seen) == 8 + passes * 16


def test_cached_logits_follow_the_sampler_order_also_when_resumed_mid_epoch():
    """Each image's stored logits come with that image, whatever the epoch's order and where it resumes."""
    images = torch.arange(10.0)[:, None]

    class Images(torch.utils.data.Dataset):  # item (index, seed), as data.sampling.SeededDataset takes it
        def __len__(self):
            return 10

        def __getitem__(self, item):
            return images[item[0]], 0

    sampler = EpochSampler(10, seed=3).batched(4)
    batches = EpochBatches(torch.utils.data.DataLoader(Images(), batch_size=4, sampler=sampler), sampler)
    taught = CachedTeacherBatches(batches, images * 100, sampler)  # image i's "logits": 100 i
    for epoch, skip in ((1, 0), (2, 0), (2, 4)):
        taught.set_epoch(epoch, skip)
        got = list(taught)
        assert sum(len(b[1]) for b in got) == 8 - skip  # the ragged last 2 are left out
        for inputs, _, targets, logits in got:
            assert targets is None and torch.equal(logits, inputs * 100)


def test_the_teacher_sees_the_students_batch_in_its_own_normalisation_and_size():
    student = Preprocessing(8, 8, "bilinear", (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    own = Preprocessing(12, 14, "bicubic", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    pixels = torch.rand(2, 3, 8, 8)
    batch = (pixels - 0.5) / 0.25
    checkpoint = type("Ckpt", (), {"preprocessing": own})()
    seen = Teacher(torch.nn.Identity(), checkpoint, None, student, Compute(torch.device("cpu")), True) \
        .as_teacher_sees(batch)
    assert seen.shape == (2, 3, 12, 12)
    expected = torch.nn.functional.interpolate((pixels - torch.tensor(own.mean).view(1, 3, 1, 1))
                                               / torch.tensor(own.std).view(1, 3, 1, 1), size=(12, 12),
                                               mode="bicubic", antialias=True, align_corners=False)
    assert torch.allclose(seen, expected, atol=1e-5)


@pytest.mark.slow
def test_a_teacher_of_other_classes_a_missing_file_or_not_a_checkpoint_is_refused(tiny_tree, teacher, tmp_path):
    other = make_folder(tmp_path / "other", {"train": 4, "val": 2},
                        classes={"blue": (30, 60, 220), "green": (30, 200, 40)})
    tree = distilled(tiny_tree, teacher)
    tree["data"]["root"] = str(other)
    with pytest.raises(ConfigError, match=r"trained on the classes blue, red, this data has blue, green"):
        fit(build_recipe(tree))
    with pytest.raises(CheckpointError, match=r"^distill.teacher: checkpoint not found: .*nowhere.pt"):
        fit(build_recipe(distilled(tiny_tree, tmp_path / "nowhere.pt")))
    torch.save({"weight": torch.zeros(2, 2)}, tmp_path / "weights.pt")  # a state dict, not a checkpoint
    with pytest.raises(CheckpointError, match=r"^distill.teacher: .*weights.pt is not a finetune checkpoint"):
        fit(build_recipe(distilled(tiny_tree, tmp_path / "weights.pt")))
    assert not (tmp_path / "runs").exists()  # refused before the run folder


def test_the_recipe_says_which_head_solver_and_which_cached_views_distill_cannot_use(tiny_tree, tmp_path):
    teacher = tmp_path / "best.pt"  # the recipe is checked before any file is read
    tree = distilled(tiny_tree, teacher)
    del tree["strategy"]["head_solver"]
    assert build_recipe(tree).strategy.head_solver == "sgd"  # lbfgs would be the default without distill
    tree["strategy"]["head_solver"] = "lbfgs"
    with pytest.raises(ConfigError, match="head_solver lbfgs cannot run with distill"):
        build_recipe(tree)
    views = distilled(tiny_tree, teacher)
    views["data"]["augment"], views["features"] = "flip", {"views": 2}
    with pytest.raises(ConfigError, match="distill cannot run with features.views 2"):
        build_recipe(views)
    with pytest.raises(ConfigError, match="did you mean 'alpha'"):
        build_recipe(distilled(tiny_tree, teacher, alhpa=0.1))


@pytest.mark.slow
def test_sigkill_and_resume_stay_bit_identical_with_distill_on(teacher, tmp_path):
    """The teacher on each batch of random crops and flips (the resume test's recipe), killed after step 7 with
    last.pt at step 6."""
    from test_resume import assert_same_run, finetune, progress, start_paused, tiny_resume_tree

    root = make_folder(tmp_path / "colors", {"train": 8, "val": 4})
    tree = distilled(tiny_resume_tree(root, tmp_path / "runs"), teacher, alpha=0.7, temperature=2.0)
    tree["strategy"]["head_solver"] = "sgd"
    recipe = write_yaml(tmp_path / "distill.yaml", tree)
    out = finetune("train", recipe, "--output", tmp_path / "reference")
    assert out.returncode == 0, out.stderr
    run = tmp_path / "killed"
    proc, _ = start_paused(tmp_path, 7, "train", recipe, "--output", run, "--set", "train.save_every=2")
    assert (progress(run)["epoch"], progress(run)["step"]) == (2, 2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    out = finetune("train", "--resume", run)
    assert out.returncode == 0, out.stderr
    assert_same_run(tmp_path / "reference", run)
    assert json.loads((run / "distill.json").read_text())["teacher_logits"] == "each batch"

