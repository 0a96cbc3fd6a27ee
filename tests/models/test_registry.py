
import pytest
import torch
import torchvision
from conftest import offline_torchvision_weights

from finetune.config import HeadSpec, ModelSpec
from finetune.errors import CheckpointError, ConfigError
from finetune.models.registry import create_model


@pytest.mark.parametrize("entry, resize", [("IMAGENET1K_V1", 256), ("IMAGENET1K_V2", 232)])
def test_torchvision_weights_load_through_the_torch_hub_cache_with_their_own_preprocessing(tmp_path, monkeypatch,
                                                                                          entry, resize):
    weights = torchvision.models.ResNet50_Weights[entry]
    reference = offline_torchvision_weights(tmp_path, monkeypatch, weights, torchvision.models.resnet50())

    for source in ("torchvision", "scratch"):
        model, info = create_model(ModelSpec(source=source, name="resnet50", weights=entry), num_classes=3)
        assert torch.equal(model.layer4[2].conv3.weight, reference.layer4[2].conv3.weight)
        assert model.fc.out_features == 3 and info.feature_dim == 2048
        # preprocessing from the chosen entry's own metadata: V1 was trained at resize 256, V2 at 232
        assert (info.preprocessing.size, info.preprocessing.resize) == (224, resize)
        assert info.preprocessing.interpolation == "bilinear"
        assert info.preprocessing.mean == tuple(weights.transforms().mean)


def test_missing_download_says_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(CheckpointError, match=r"resnet18-f37072fd\.pth"):
        create_model(ModelSpec(source="torchvision", name="resnet18", weights="IMAGENET1K_V1"), num_classes=2)


def test_local_weights_file_and_shape_errors(tmp_path):
    src = torchvision.models.resnet18()
    torch.save(src.state_dict(), tmp_path / "r18.pth")
    model, _ = create_model(ModelSpec(source="scratch", name="resnet18", weights=str(tmp_path / "r18.pth")), 5)
    assert torch.equal(model.conv1.weight, src.conv1.weight)
    with pytest.raises(CheckpointError, match=r"do not fit.*(missing|unexpected)"):
        create_model(ModelSpec(source="scratch", name="resnet34", weights=str(tmp_path / "r18.pth")), 5)
    with pytest.raises(CheckpointError, match="not found"):
        create_model(ModelSpec(source="scratch", name="resnet18", weights=str(tmp_path / "nope.pth")), 5)


def test_timm_local_weights_preprocessing_and_last_stage(tmp_path):
    import timm

    src = timm.create_model("test_efficientnet")
    torch.save(src.state_dict(), tmp_path / "w.pth")
    model, info = create_model(ModelSpec(source="timm", name="test_efficientnet", weights=str(tmp_path / "w.pth")), 4)
    assert torch.equal(model.conv_stem.weight, src.conv_stem.weight)
    assert info.head_name == "classifier" and model.classifier.out_features == 4
    assert info.last_stage == ["blocks.4", "conv_head", "bn2"]
    cfg = src.pretrained_cfg
    assert info.preprocessing.interpolation == cfg["interpolation"]
    assert info.preprocessing.mean == tuple(cfg["mean"])


def test_image_size_rescales_the_resize_step():
    _, info = create_model(ModelSpec(source="torchvision", name="resnet18", weights=None), 2, image_size=112)
    assert (info.preprocessing.size, info.preprocessing.resize) == (112, 128)


def test_mlp_head():
    model, _ = create_model(ModelSpec(source="scratch", name="resnet18", weights=None,
                                      head=HeadSpec(type="mlp", hidden=64, dropout=0.2, hidden_dropout=0.5)), 3)
    layers = list(model.fc)
    assert [type(m).__name__ for m in layers] == ["Dropout", "Linear", "ReLU", "Dropout", "Linear"]
    assert layers[1].out_features == 64 and layers[0].p == 0.2 and layers[3].p == 0.5
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 3)


def test_unknown_models_are_config_errors():
    with pytest.raises(ConfigError, match="unknown scratch model"):
        create_model(ModelSpec(source="scratch", name="resnet9", weights=None), 2)
    with pytest.raises(ConfigError, match="unknown timm model"):
        create_model(ModelSpec(source="timm", name="no_such_net", weights=None), 2)
    with pytest.raises(ConfigError, match="weights name"):
        create_model(ModelSpec(source="torchvision", name="resnet18", weights="IMAGENET1K_V9"), 2)
