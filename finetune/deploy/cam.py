"""Grad-CAM (Selvaraju et al. 2017): where the model looked for the class it chose, as a heatmap over the photo,
computed on its last convolutional stage, through pytorch-grad-cam (an optional extra: finetune[explain]).

The stage is found by watching one forward pass, the same way for torchvision, timm and our own ResNets: the
last module, outside the head, whose output is still a spatial map (layer4 for ResNets, the final conv block
for EfficientNet). Overlays are drawn on the crop the model saw (the checkpoint's own preprocessing).
"""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..checkpoint import Checkpoint
from ..console import progress, stderr_console
from ..data.images import load_rgb
from ..data.transforms import ResizeCrop, eval_transform
from ..errors import ConfigError, DataError
from ..files import atomic_write, make_folder, refuse_inside
from .loading import load_model
from .predict import folders_read


def require() -> None:
    if importlib.util.find_spec("pytorch_grad_cam") is None:
        raise ConfigError("Grad-CAM needs the grad-cam package, which is not installed: pip install "
                          "'finetune[explain]'")


def cam_layer(model: nn.Module, ckpt: Checkpoint) -> nn.Module:
    """The last module outside the head whose output is a (batch, channels, height, width) map, more than one
    pixel wide (a global pool's 1x1 output is no map)."""
    order: list[tuple[str, nn.Module]] = []
    hooks = [m.register_forward_hook(lambda m, i, out, n=n: order.append((n, m)) if torch.is_tensor(out)
                                     and out.dim() == 4 and min(out.shape[-2:]) > 1 else None)
             for n, m in model.named_modules() if n and not (n == ckpt.head_name or n.startswith(ckpt.head_name + "."))]
    size = ckpt.preprocessing.size
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size))
    finally:
        for h in hooks:
            h.remove()
    if not order:
        raise ConfigError(f"this {ckpt.model.name} has no convolutional stage to explain with Grad-CAM")
    return order[-1][1]


class Explainer:
    """Grad-CAM heatmaps of one checkpoint's model, on the CPU or `device`."""

    def __init__(self, ckpt: Checkpoint, device: str = "cpu"):
        require()
        from pytorch_grad_cam import GradCAM

        self.ckpt, self.device = ckpt, torch.device(device)
        model, _ = load_model(ckpt)
        self.model = model.to(self.device).eval()
        self.transform = eval_transform(ckpt.preprocessing)
        pre = ckpt.preprocessing
        self.crop = ResizeCrop(pre.resize, pre.size, pre.interpolation)
        self.cam = GradCAM(model=self.model, target_layers=[cam_layer(self.model, ckpt)])

    def overlay(self, path: Path, target: int | None = None) -> bytes:
        """A JPEG of the photo as the model saw it, with the heatmap of `target` (default: the top class)."""
        return self.overlay_rgb(load_rgb(Path(path), self.ckpt.preprocessing.resize), target)

    def overlay_rgb(self, image, target: int | None = None) -> bytes:
        """overlay() of an RGB image already read (the server's uploads)."""
        from pytorch_grad_cam.utils.image import show_cam_on_image
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        x = self.transform(image)[None].to(self.device)
        if target is None:
            with torch.no_grad():
                target = int(self.model(x).argmax(1))
        heat = self.cam(input_tensor=x, targets=[ClassifierOutputTarget(target)])[0]
        seen = np.asarray(self.crop(image), dtype=np.float32) / 255
        out = show_cam_on_image(seen, heat, use_rgb=True, image_weight=0.55)
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(out).save(buf, "JPEG", quality=88)
        return buf.getvalue()


def check_cam_folder(folder: Path, inputs: list[str], photos: list[Path], source) -> None:
    """Before predicting: `predict --cam DIR` needs grad-cam and a torch checkpoint, and never writes inside a folder
    it reads photos from: a folder given, the dataset of any photo however it was named (a file, a glob, an
    @list; `dataset_of`), or the data the model was trained on, where heatmaps would become new images of the
    wrong class."""
    if not isinstance(source, Checkpoint):
        raise ConfigError("--cam follows gradients through the torch model: give the .pt checkpoint, not an .onnx "
                          "export")
    require()
    refuse_inside(folder, folders_read(inputs, photos, source), "--cam", DataError)
    make_folder(folder, "--cam", DataError)


def write_cams(ckpt: Checkpoint, predictions, folder: Path, console=None) -> list[Path]:
    """`predict --cam DIR`: one overlay per readable image, for the class predict put first, as
    DIR/NNNN-STEM-LABEL.jpg (numbered in predict's order, so two photos with one name never collide); never
    replaces a file already there."""
    explainer = Explainer(ckpt)
    written = []
    readable = [p for p in predictions if p.top]
    with progress(console or stderr_console()) as bar:
        task = bar.add_task("grad-cam", total=len(readable))
        for number, p in enumerate(readable, 1):
            out = folder / f"{number:04d}-{_safe(Path(p.path).stem)}-{_safe(p.top[0].label)}.jpg"
            if out.exists():
                raise DataError(f"--cam {folder} already holds {out.name}: choose an empty folder")
            jpeg = explainer.overlay(Path(p.path), p.top[0].index)
            atomic_write(out, lambda f, data=jpeg: f.write(data))
            written.append(out)
            bar.advance(task)
    return written


def _safe(name: str) -> str:
    """A file-name part from a photo's stem or a class name: letters, digits, '-', '_' and '.' kept, the rest '_'."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:60] or "_"
