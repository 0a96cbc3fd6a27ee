"""`finetune wise-ft`: alpha 0 is the pretrained backbone, alpha 1 the fine-tuned one, both under the fine-tuned
head; between, the straight line; a run without pretrained weights, or an alpha outside 0-1, is refused."""

import pytest
import timm
import torch
from conftest import checkpoint_of, invoke, make_folder

from finetune.checkpoint import Checkpoint
from finetune.config import build_recipe
from finetune.deploy.wiseft import wise_ft
from finetune.errors import ConfigError
from finetune.train.loop import fit


def test_a_run_from_random_weights_and_an_alpha_outside_0_1_are_refused(tmp_path):
    torch.manual_seed(0)
    checkpoint_of(timm.create_model("test_efficientnet", num_classes=2).state_dict()).save(tmp_path / "best.pt")
    with pytest.raises(ConfigError, match="random weights"):
        wise_ft(tmp_path, 0.5)
    with pytest.raises(ConfigError, match="--alpha 1.5"):
        wise_ft(tmp_path, 1.5)


@pytest.fixture(scope="module")
def fine_tuned(tmp_path_factory):
    """(run folder, the pretrained state): a tiny model's 'pretrained' weights in a file, and a last-stage run
    from them (its last stage and head move, the rest stays)."""
    root = tmp_path_factory.mktemp("wiseft")
    torch.manual_seed(0)
    pretrained = timm.create_model("test_efficientnet").state_dict()
    torch.save(pretrained, root / "pretrained.pth")
    tree = {"model": {"source": "timm", "name": "test_efficientnet", "weights": str(root / "pretrained.pth")},
            "data": {"root": str(make_folder(root / "colors", {"train": 8, "val": 4})), "image_size": 32,
                     "augment": "none", "workers": 0},
            "strategy": {"name": "last-stage", "lr": {"head": 0.1, "last_stage": 0.1}},
            "train": {"epochs": 1, "batch_size": 8, "seed": 0}, "run": {"output": str(root / "run")},
            "features": {"dir": str(root / "features")}}
    return fit(build_recipe(tree)), pretrained


@pytest.mark.slow
def test_alpha_0_is_the_pretrained_backbone_and_1_the_fine_tuned_under_the_fine_tuned_head(fine_tuned, tmp_path):
    run, pretrained = fine_tuned
    tuned = Checkpoint.load(run / "best.pt")
    backbone = [k for k in tuned.state if not k.startswith("classifier.") and tuned.state[k].is_floating_point()]
    moved = [k for k in backbone if not torch.equal(tuned.state[k], pretrained[k])]
    assert moved and len(moved) < len(backbone)  # last-stage: some of the backbone trained, not all of it
    ends = {}
    for alpha in (0, 1, 0.5):
        result = wise_ft(run, alpha, tmp_path / f"a{alpha}.pt")
        ends[alpha] = Checkpoint.load(result.output).state
        assert result.moved == len(moved) and result.score.images == 8
        assert ends[alpha]["classifier.weight"].equal(tuned.state["classifier.weight"])  # the head: fine-tuned
    for k in backbone:
        assert torch.equal(ends[0][k], pretrained[k]), k
        assert torch.equal(ends[1][k], tuned.state[k]), k
        assert torch.allclose(ends[0.5][k], (pretrained[k] + tuned.state[k]) / 2, atol=1e-6), k
    code, stdout, stderr = invoke("wise-ft", run, "--alpha", "0.25")
    assert code == 0, stderr
    assert stdout.strip() == str(run / "wise-ft-0.25.pt") and "wise-ft alpha 0.25" in stderr
    assert Checkpoint.load(run / "wise-ft-0.25.pt").metrics["wise_ft_alpha"] == 0.25
