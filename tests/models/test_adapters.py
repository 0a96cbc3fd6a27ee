"""Model adapters: for each source, the head it names and replaces, blocks that cover every parameter once with
the last stage on top, and a feature/head split that is the model's own forward."""

import pytest
import torch

from finetune.config import HeadSpec, ModelSpec
from finetune.models.adapters import adapter_for

# (source, name, head, last stage): what a user would call them
MODELS = [
    ("torchvision", "resnet18", "fc", ["layer4"]),
    ("scratch", "resnet18", "fc", ["layer4"]),
    ("scratch", "wrn_16_4", "fc", ["layer3", "final_bn"]),
    ("timm", "resnet18", "fc", ["layer4"]),
    ("timm", "tf_efficientnet_lite0", "classifier", ["blocks.5", "blocks.6", "conv_head", "bn2"]),  # stride 32
]
IDS = [f"{s}-{n}" for s, n, *_ in MODELS]


def _build(source, name):
    spec = ModelSpec(source=source, name=name, weights=None)
    adapter = adapter_for(source)
    torch.manual_seed(0)
    return spec, adapter, adapter.build(spec).eval()


def _images(size=32):
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("source, name, head, stage", MODELS, ids=IDS)
def test_reset_head_leaves_k_outputs_and_none_of_the_old_head(source, name, head, stage):
    _, adapter, model = _build(source, name)
    assert adapter.head_name(model) == head
    old = model.get_submodule(head)
    old_params = {id(p) for p in old.parameters()}
    width = adapter.reset_head(model, 5, HeadSpec(type="mlp", hidden=16, dropout=0.1))
    assert width == old.in_features
    assert model.get_submodule(head) is not old and adapter.head_name(model) == head
    assert not old_params & {id(p) for p in model.parameters()}  # the 1000-class head is gone, not kept beside
    with torch.no_grad():
        assert model.eval()(_images()).shape == (2, 5)
    adapter.reset_head(model, 3, HeadSpec())  # a bare Linear keeps the source's key names (fc.weight)
    assert {f"{head}.weight", f"{head}.bias"} <= set(model.state_dict())


@pytest.mark.parametrize("source, name, head, stage", MODELS, ids=IDS)
def test_blocks_cover_every_parameter_once_with_the_last_stage_on_top(source, name, head, stage):
    spec, adapter, model = _build(source, name)
    names = [n for n, _ in model.named_parameters()]
    groups = adapter.groups(model)
    flat = [n for g in groups for n in g]
    assert sorted(flat) == sorted(names) and len(set(flat)) == len(flat)
    assert adapter.last_stage(spec, model) == stage
    in_head = {n for n in names if n.startswith(head + ".")}
    in_stage = {n for n in names if any(n == p or n.startswith(p + ".") for p in stage)}
    assert in_head and in_stage and in_head <= set(groups[-1])  # the head is in the top block
    top: set[str] = set()
    for group in groups[::-1]:  # the blocks from the top down to the last stage's first: the two, nothing else
        top |= set(group)
        if top >= in_head | in_stage:
            break
    assert top == in_head | in_stage
    assert len(groups) > 4  # blocks, not one lump: layer-wise lr decay has depths to decay over


@pytest.mark.parametrize("source, name, head, stage", MODELS, ids=IDS)
def test_feature_head_split_is_the_models_forward(source, name, head, stage):
    _, adapter, model = _build(source, name)
    head_input = adapter.head_input(model)
    images = _images(64)  # a 2x2 last feature map: at 32 px any pooling of 1x1 would pass
    with torch.no_grad():
        features = head_input(model, images)
        assert features.shape == (2, model.get_submodule(head).in_features)
        assert torch.equal(model.get_submodule(head)(features), model(images))


def test_an_unknown_source_has_no_adapter():
    with pytest.raises(ValueError, match="no model adapter for source 'keras'"):
        adapter_for("keras")
