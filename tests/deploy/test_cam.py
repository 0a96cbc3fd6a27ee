"""Grad-CAM: on the last convolutional stage of each kind of model, a heatmap drawn over the crop the model saw."""

import io

import pytest
import torch
from conftest import make_image
from PIL import Image

from finetune.checkpoint import Checkpoint
from finetune.config import ModelSpec
from finetune.deploy.cam import Explainer, cam_layer
from finetune.errors import ConfigError
from finetune.models.registry import create_model
from finetune.preprocessing import Preprocessing


def checkpoint(source: str, name: str) -> Checkpoint:
    spec = ModelSpec(source=source, name=name, weights=None)
    torch.manual_seed(0)
    model, info = create_model(spec, 2, 64)
    return Checkpoint(spec, ["blue", "red"], info.preprocessing, info.head_name, "feature-extract",
                      state=model.state_dict())


@pytest.mark.parametrize("source, name, layer", [("scratch", "resnet18", "layer4"),
                                                  ("torchvision", "resnet18", "layer4"),
                                                  ("timm", "test_efficientnet", "bn2")])
def test_the_explained_layer_is_the_last_spatial_stage(source, name, layer):
    ckpt = checkpoint(source, name)
    explainer = Explainer(ckpt)
    chosen = cam_layer(explainer.model, ckpt)
    assert chosen is explainer.model.get_submodule(layer)


def test_an_overlay_is_the_crop_the_model_saw_with_a_heatmap(tmp_path):
    ckpt = checkpoint("timm", "test_efficientnet")
    photo = make_image(tmp_path / "red.png", (220, 40, 30), size=80)
    jpeg = Explainer(ckpt).overlay(photo)
    overlay = Image.open(io.BytesIO(jpeg))
    assert overlay.format == "JPEG" and overlay.size == (ckpt.preprocessing.size,) * 2
    flat = Image.open(photo).convert("RGB").resize(overlay.size)
    assert any(abs(a - b) > 20 for a, b in zip(overlay.getpixel((30, 30)), flat.getpixel((30, 30))))  # coloured


def test_without_grad_cam_installed_it_is_one_line(monkeypatch):
    import finetune.deploy.cam as cam

    monkeypatch.setattr(cam.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"Grad-CAM needs the grad-cam package.*pip install 'finetune\[explain\]'"):
        Explainer(checkpoint("scratch", "resnet18"))


def test_a_model_with_no_convolutional_stage_is_said_so():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2))
    ckpt = Checkpoint(ModelSpec(source="timm", name="mlp", weights=None), ["a", "b"],
                      Preprocessing(8, 8, "bilinear", (0.5,) * 3, (0.5,) * 3), "1", "full")
    with pytest.raises(ConfigError, match="no convolutional stage"):
        cam_layer(model, ckpt)


@pytest.mark.slow
def test_predict_cam_writes_one_heatmap_per_readable_photo_and_never_inside_the_photos(tmp_path, image_folder):
    import json
    import subprocess
    import sys

    ckpt = checkpoint("timm", "test_efficientnet")
    pt = tmp_path / "model.pt"
    ckpt.save(pt)
    val = image_folder / "val"
    (tmp_path / "loose").mkdir()
    (tmp_path / "loose" / "broken.png").write_bytes(b"not an image")

    def predict(*args):
        return subprocess.run([sys.executable, "-m", "finetune", "predict", str(pt), *args], capture_output=True,
                              text=True)

    before = sorted(p.name for p in val.rglob("*"))
    one = next((val / "red").glob("*.png"))
    listed = tmp_path / "photos.txt"
    listed.write_text(f"{one}\n")
    # however the photos are named (a folder, a glob, an @list, one file), DIR inside a folder they come from is
    # refused before any work: heatmaps there would be new training images of the wrong class. The same for
    # another split or class of that dataset (ROOT/SPLIT/CLASS/photo): a new class folder of training images
    for photos in (str(val), str(val / "*" / "*.png"), f"@{listed}", str(one)):
        for cam in (val / "red" / "cams", image_folder / "train" / "cams", image_folder / "train" / "red" / "cams"):
            inside = predict(photos, "--cam", str(cam))
            assert inside.returncode == 1, (photos, cam)
            assert "inside the dataset" in inside.stderr and "Traceback" not in inside.stderr, (photos, cam)
    assert sorted(p.name for p in val.rglob("*")) == before
    assert not list(image_folder.rglob("cams"))

    out = predict(str(val), str(tmp_path / "loose" / "broken.png"), "--cam", str(tmp_path / "cams"), "--format", "json")
    assert out.returncode == 0, out.stderr
    cams = sorted((tmp_path / "cams").iterdir())
    assert len(cams) == len(list(val.rglob("*.png")))  # the unreadable file gets none
    chosen = [r["top"][0]["label"] for r in json.loads(out.stdout) if r["top"]]
    assert [c.stem.rsplit("-", 1)[1] for c in cams] == chosen  # numbered in predict's order, its first class
    assert Image.open(cams[0]).size == (ckpt.preprocessing.size,) * 2

    again = predict(str(val), "--cam", str(tmp_path / "cams"))
    assert again.returncode == 1 and "already holds" in again.stderr  # never replaced

