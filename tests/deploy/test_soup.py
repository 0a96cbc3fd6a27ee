"""`finetune average`: a uniform soup is the mean of the weights (of two identical checkpoints: the checkpoint), a
greedy soup leaves out a checkpoint that makes the average worse on val, mismatched models are refused, and OUT.pt
is a checkpoint predict loads."""

import shutil
from dataclasses import replace

import pytest
import timm
import torch
from conftest import checkpoint_of, invoke, train_tiny

from finetune.checkpoint import Checkpoint
from finetune.config import ModelSpec
from finetune.deploy.averaging import average_states
from finetune.deploy.predict import predict
from finetune.deploy.soup import make_soup
from finetune.errors import ConfigError, DataError


def tiny_state(seed: int) -> dict:
    torch.manual_seed(seed)
    return timm.create_model("test_efficientnet", num_classes=2).state_dict()


def test_the_average_is_the_mean_of_each_float_tensor_and_keeps_counters():
    a, b = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3)}, {"w": torch.tensor([3.0, 6.0]), "n": torch.tensor(5)}
    out = average_states([a, b])
    assert torch.equal(out["w"], torch.tensor([2.0, 4.0])) and int(out["n"]) == 3


def test_uniform_soup_of_two_identical_checkpoints_is_the_checkpoint(tmp_path):
    ckpt = checkpoint_of(tiny_state(0))
    ckpt.save(tmp_path / "a.pt")
    shutil.copy(tmp_path / "a.pt", tmp_path / "b.pt")
    soup = make_soup([tmp_path / "a.pt", tmp_path / "b.pt"], tmp_path / "soup.pt")
    out = Checkpoint.load(tmp_path / "soup.pt")
    assert out.state.keys() == ckpt.state.keys()
    for k, v in ckpt.state.items():
        assert torch.equal(out.state[k], v), k
    assert out.class_names == ckpt.class_names and out.calibration is None and len(soup.kept) == 2
    assert soup.score is None and "no data.root" in soup.notes[0]  # no val split to score on: said, not guessed
    # uniform is the mean: with a different second checkpoint it is not either one
    checkpoint_of(tiny_state(1)).save(tmp_path / "c.pt")
    make_soup([tmp_path / "a.pt", tmp_path / "c.pt"], tmp_path / "mix.pt")
    mixed = Checkpoint.load(tmp_path / "mix.pt").state["classifier.weight"]
    expected = (ckpt.state["classifier.weight"] + tiny_state(1)["classifier.weight"]) / 2
    assert torch.allclose(mixed, expected)


def test_mismatched_checkpoints_are_refused_with_what_differs(tmp_path):
    checkpoint_of(tiny_state(0)).save(tmp_path / "a.pt")
    other = replace(checkpoint_of(tiny_state(0)), model=ModelSpec(source="timm", name="resnet18", weights=None))
    other.save(tmp_path / "arch.pt")
    checkpoint_of(tiny_state(0), class_names=("cat", "dog")).save(tmp_path / "classes.pt")
    with pytest.raises(ConfigError, match=r"differ in architecture \(timm:test_efficientnet .* vs timm:resnet18"):
        make_soup([tmp_path / "a.pt", tmp_path / "arch.pt"], tmp_path / "out.pt")
    with pytest.raises(ConfigError, match="differ in classes"):
        make_soup([tmp_path / "a.pt", tmp_path / "classes.pt"], tmp_path / "out.pt")
    shutil.copy(tmp_path / "a.pt", tmp_path / "a2.pt")
    with pytest.raises(DataError, match="greedy chooses by val accuracy"):  # no val split to choose on
        make_soup([tmp_path / "a.pt", tmp_path / "a2.pt"], tmp_path / "out.pt", "greedy")
    with pytest.raises(ConfigError, match="one of the checkpoints read"):
        make_soup([tmp_path / "a.pt", tmp_path / "a2.pt"], tmp_path / "a.pt")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("soup"))


@pytest.mark.slow
def test_greedy_soup_leaves_out_a_checkpoint_that_hurts_and_predict_loads_it(trained, tmp_path):
    best, data = trained
    good = Checkpoint.load(best)
    shutil.copy(best, tmp_path / "same.pt")  # as good: the soup with it scores the same, so it joins (ties join)
    replace(good, state=tiny_state(1)).save(tmp_path / "random.pt")  # random weights (a fresh init)
    soup = make_soup([tmp_path / "random.pt", best, tmp_path / "same.pt"], tmp_path / "soup.pt", "greedy")
    alone = {i.path.name: i.score.acc for i in soup.ingredients}
    assert alone["best.pt"] > alone["random.pt"]
    assert [(i.path.name, i.kept) for i in soup.ingredients][-1] == ("random.pt", False)  # tried last, left out
    assert {i.path.name for i in soup.kept} == {"best.pt", "same.pt"}
    assert soup.score.acc == alone["best.pt"] and soup.score.images == 8
    out = Checkpoint.load(tmp_path / "soup.pt")
    for k, v in good.state.items():
        assert torch.equal(out.state[k], v), k
    assert out.metrics["soup"] == "greedy" and out.metrics["val_acc"] == soup.score.acc
    assert all(r.error is None for r in predict(tmp_path / "soup.pt", sorted((data / "val").rglob("*.png"))))
    code, stdout, stderr = invoke("average", tmp_path / "random.pt", best, "--method", "uniform", "--output",
                                  tmp_path / "uniform.pt")
    assert code == 0, stderr
    assert stdout.strip() == str(tmp_path / "uniform.pt") and "uniform soup of 2 of 2" in stderr
