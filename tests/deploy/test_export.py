"""Each export format reloads the way a user would load it and matches the eager model; safetensors
loads into plain torchvision/timm in a Python that cannot import finetune."""

import json
import subprocess
import sys
import sysconfig

import pytest
import torch

from finetune.checkpoint import Checkpoint
from finetune.config import ModelSpec
from finetune.deploy.export import TOLERANCE, export
from finetune.deploy.loading import load_model
from finetune.errors import ExportError
from finetune.models.registry import create_model

CLASSES = ["ant", "bee", "wasp"]


def make_checkpoint(path, source="timm", name="test_efficientnet", head=None, image_size=32, **model):
    """A checkpoint as fit() writes it, without the training: a model with random weights and its meta."""
    spec = ModelSpec(source=source, name=name, weights=None, head=head or {}, **model)
    torch.manual_seed(0)
    net, info = create_model(spec, len(CLASSES), image_size)
    for m in net.modules():  # non-trivial BN statistics, so a BN left in train mode would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    Checkpoint(spec, CLASSES, info.preprocessing, info.head_name, "full", state=net.state_dict(),
               calibration={"temperature": 1.7}).save(path)
    return path


def eager(checkpoint, images):
    model, _ = load_model(checkpoint)
    with torch.inference_mode():
        return model(images)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.load is deprecated in torch 2.14, still works
@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "safetensors"])
def test_each_format_reloads_and_matches_the_eager_model(fmt, tmp_path):
    ckpt = make_checkpoint(tmp_path / "best.pt", head={"dropout": 0.3})
    result = export(ckpt, fmt)
    assert result.max_abs_diff <= TOLERANCE and result.path.is_file()
    images = torch.randn(5, 3, 32, 32)  # another batch size than export's own check: the batch axis is dynamic
    expected = eager(ckpt, images)

    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
        assert [o.name for o in session.get_outputs()] == ["logits"]
        props = session.get_modelmeta().custom_metadata_map
        info = json.loads(props["finetune"])
        assert json.loads(props["class_names"]) == CLASSES and props["output"].startswith("logits")
        actual = torch.from_numpy(session.run(None, {"images": images.numpy()})[0])
    elif fmt == "torchscript":
        extra = {"finetune.json": ""}
        loaded = torch.jit.load(str(result.path), _extra_files=extra)
        info = json.loads(extra["finetune.json"])
        actual = loaded(images)
    else:
        import timm
        from safetensors.torch import load_file

        info = json.loads(result.path.with_suffix(".json").read_text())
        plain = timm.create_model("test_efficientnet", num_classes=3)
        plain.load_state_dict(load_file(str(result.path)))  # strict: the dropout head's keys were mapped
        actual = plain.eval()(images)
    assert info["class_names"] == CLASSES and info["temperature"] == 1.7
    assert info["preprocessing"]["size"] == 32 and len(info["preprocessing"]["mean"]) == 3
    assert (actual - expected).abs().max().item() <= TOLERANCE


PLAIN_LOAD = r"""
import json, sys
sys.path.append(sys.argv[1])  # site-packages only: no .pth hooks, no editable install, no repository
try:
    import finetune
except ImportError:
    pass
else:
    raise SystemExit("finetune is importable here: " + finetune.__file__)
import timm, torch, torchvision
from safetensors.torch import load_file
io = load_file(sys.argv[2])
for name in ("tv", "timm"):
    info = json.load(open(sys.argv[3 + (name == "timm")]))
    k = len(info["class_names"])
    arch = info["architecture"]["name"]
    if name == "timm":
        model = timm.create_model(arch, num_classes=k)
    else:
        model = torchvision.models.get_model(arch, num_classes=k)
    model.load_state_dict(load_file(sys.argv[5 + (name == "timm")]))
    with torch.inference_mode():
        diff = (model.eval()(io["images_" + name]) - io["logits_" + name]).abs().max().item()
    print(name, arch, diff)
    assert diff <= 1e-3, diff
"""


@pytest.mark.slow
def test_safetensors_loads_into_plain_torchvision_and_timm_without_finetune(tmp_path):
    from safetensors.torch import save_file

    tv = make_checkpoint(tmp_path / "tv.pt", source="torchvision", name="resnet18", head={"dropout": 0.5},
                         image_size=64)
    tm = make_checkpoint(tmp_path / "timm.pt")
    tv_out, tm_out = export(tv, "safetensors"), export(tm, "safetensors")
    images = {"images_tv": torch.randn(2, 3, 64, 64), "images_timm": torch.randn(2, 3, 32, 32)}
    save_file({**images, "logits_tv": eager(tv, images["images_tv"]), "logits_timm": eager(tm, images["images_timm"])},
              str(tmp_path / "io.safetensors"))
    site = sysconfig.get_paths()["purelib"]
    out = subprocess.run([sys.executable, "-I", "-S", "-c", PLAIN_LOAD, site, tmp_path / "io.safetensors",
                          tv_out.files[1], tm_out.files[1], tv_out.path, tm_out.path],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "tv resnet18" in out.stdout and "timm test_efficientnet" in out.stdout


@pytest.mark.slow
def test_safetensors_refuses_what_plain_models_cannot_hold(tmp_path):
    mlp = make_checkpoint(tmp_path / "mlp.pt", head={"type": "mlp", "hidden": 16})
    with pytest.raises(ExportError, match="MLP head"):
        export(mlp, "safetensors")
    assert not (tmp_path / "mlp.safetensors").exists()
    assert export(mlp, "onnx").max_abs_diff <= TOLERANCE  # the whole model travels in ONNX
    cifar = make_checkpoint(tmp_path / "cifar.pt", source="scratch", name="resnet18", cifar_stem=True)
    with pytest.raises(ExportError, match="CIFAR stem"):
        export(cifar, "safetensors")
    preact = make_checkpoint(tmp_path / "preact.pt", source="scratch", name="preact_resnet18")
    with pytest.raises(ExportError, match="torchvision does not have"):
        export(preact, "safetensors")
    assert export(preact, "onnx").max_abs_diff <= TOLERANCE  # our variants travel whole in ONNX


def test_missing_onnx_packages_and_failed_parity_are_clear_errors(tmp_path, monkeypatch):
    import finetune.deploy.export as ex

    ckpt = make_checkpoint(tmp_path / "best.pt")
    real_find_spec = ex.importlib.util.find_spec
    monkeypatch.setattr(ex.importlib.util, "find_spec", lambda n: None if n == "onnxruntime" else real_find_spec(n))
    with pytest.raises(ExportError, match=r"needs onnxruntime.*pip install 'finetune\[export\]'"):
        export(ckpt, "onnx")
    monkeypatch.undo()

    monkeypatch.setattr(ex, "_run_torchscript", lambda path, images, ckpt: torch.zeros(len(images), 3))
    with pytest.raises(ExportError, match="differs from the eager model"):
        export(ckpt, "torchscript")
    assert not (tmp_path / "best.torchscript.pt").exists()  # a failed export is not left behind
