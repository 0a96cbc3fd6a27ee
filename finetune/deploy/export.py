"""export(checkpoint, format): a model people can ship without finetune, checked against the eager model.

Every format outputs LOGITS, one per class in class_names order (probabilities = softmax(logits / T)
with the stored temperature T; a multi-label model's ONNX and TorchScript exports output PROBABILITIES =
sigmoid(logits), one per label, the per-label thresholds in the metadata), and carries the class names and
preprocessing with it: ONNX in its metadata_props, TorchScript in an extra file `finetune.json`, safetensors
in its header and a JSON sidecar. After writing, the exported file is loaded the way a user would load it (onnxruntime,
torch.jit.load, a plain torchvision/timm model) and run on a batch; the largest absolute logit
difference to the eager model must stay within TOLERANCE or the export fails and the file is removed.
"""

from __future__ import annotations

import importlib.util
import io
import json
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from ..checkpoint import Checkpoint
from ..data.folders import dataset_folders
from ..data.lists import is_list_argument
from ..errors import ExportError
from ..files import atomic_write, is_checkpoint_file, make_folder, refuse_inside
from ..models.registry import TORCHVISION_RESNETS
from .loading import load_model
from .quantize import MAX_DROP, Int8Check

FORMATS = ("onnx", "torchscript", "safetensors")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt", "safetensors": ".safetensors"}

# Why 1e-3 on logits: an exported graph runs the same float32 maths in another order (fused and
# re-blocked kernels), which moves logits by float32 rounding noise, ~1e-6..1e-4 for these networks
# (measured: 4e-5 for tf_efficientnet_lite0 through onnxruntime, logits up to ~20). 1e-3 sits well
# above that noise and well below any change people could see: softmax's Jacobian bounds every
# probability change by half the largest logit change (<= 5e-4 here), and the top-1 class can only
# flip where the two best logits are within 2e-3. A wrong export (a missing layer, BN in train mode,
# a broken batch axis) is off by orders of magnitude more.
TOLERANCE = 1e-3
TRACE_BATCH, PARITY_BATCH = 2, 3  # different on purpose: the check exercises the dynamic batch axis
OUTPUT = ("logits: float32 [batch, num_classes], class order = class_names; "
          "probabilities = softmax(logits / temperature)")
PROBABILITIES = "probabilities"  # the output name of a multi-label ONNX export (deploy.engines reads it back)
MULTILABEL_OUTPUT = ("probabilities: float32 [batch, num_classes] = sigmoid(logits), label order = class_names; a "
                     "label is present when its probability >= thresholds[label] (safetensors: the weights give "
                     "logits)")
INPUT = ("images: float32 [batch, 3, size, size], RGB; resize the shorter side to `resize` (interpolation), "
         "center-crop size x size, scale to 0..1, subtract mean, divide by std")


@dataclass
class ExportResult:
    format: str
    path: Path
    files: list[Path]
    max_abs_diff: float
    tolerance: float
    batch: int
    checked_with: str
    int8: Int8Check | None = None  # INT8 exports: agreement, accuracy and speed against the fp32 export

    def to_dict(self) -> dict:
        return {"format": self.format, "path": str(self.path), "files": [str(f) for f in self.files],
                "max_abs_diff": self.max_abs_diff, "tolerance": self.tolerance, "batch": self.batch,
                "checked_with": self.checked_with, "int8": self.int8.to_dict() if self.int8 else None}


def export_info(ckpt: Checkpoint) -> dict:
    """The metadata every export carries: enough to preprocess an image and read the output."""
    spec, k = ckpt.model, len(ckpt.class_names)
    loader = (f"timm.create_model({spec.name!r}, num_classes={k})" if spec.source == "timm"
              else f"torchvision.models.get_model({spec.name!r}, num_classes={k})")
    return {"format": "finetune-export/1", "class_names": ckpt.class_names,
            "preprocessing": ckpt.preprocessing.to_dict(), "input": INPUT, "output": OUTPUT,
            "temperature": ckpt.temperature, "reject_threshold": ckpt.reject_threshold,
            "architecture": {"source": spec.source, "name": spec.name, "plain_model": loader},
            **({"task": "multilabel", "thresholds": ckpt.thresholds, "output": MULTILABEL_OUTPUT}
               if ckpt.task == "multilabel" else {})}


class Probabilities(torch.nn.Module):
    """A multi-label model whose output is its labels' sigmoid probabilities (what the export ships)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model(images))


def default_output(checkpoint: Path, format: str, int8: bool = False) -> Path:
    return Path(checkpoint).with_suffix((".int8" if int8 else "") + SUFFIXES[format])


def check_output(path: Path, checkpoint: Path, ckpt: Checkpoint) -> None:
    """Refuse an output that would destroy something: the checkpoint itself or another one, a folder, a file
    inside the dataset the model was trained on."""
    if path.is_dir():
        raise ExportError(f"--output {path} is a folder; give a file path such as "
                          f"{path / default_output(checkpoint, 'onnx').name}")
    if path.exists() and (path.resolve() == Path(checkpoint).resolve() or is_checkpoint_file(path)):
        raise ExportError(f"--output {path} is a finetune checkpoint; an export never overwrites one (the trained "
                          "model would be lost). Give another file name")
    refuse_inside(path, dataset_folders((ckpt.recipe.get("data") or {}).get("root")), "--output", ExportError)


def export(checkpoint: Path, format: str, output: Path | None = None, tolerance: float = TOLERANCE,
           int8: bool = False, calibration: Path | str | None = None, max_drop: float = MAX_DROP) -> ExportResult:
    """Write `checkpoint` as `format` and check it against the eager model. int8 (ONNX only): quantize it
    statically, calibrated on the checkpoint's validation images or `calibration` (deploy.quantize), and check
    it by accuracy: more than `max_drop` points of top-1 lost fails the export."""
    if format not in FORMATS:
        raise ExportError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    if (int8 or calibration is not None) and format != "onnx":
        raise ExportError(f"--int8 and --calibration quantize an ONNX export (onnxruntime); use --format onnx, "
                          f"not {format}")
    if calibration is not None and not int8:
        raise ExportError("--calibration gives the images --int8 calibrates on; add --int8")
    if format == "onnx":
        missing = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
        if missing:
            raise ExportError(f"ONNX export needs {' and '.join(missing)}, which is not installed: "
                              "pip install 'finetune[export]' (or pip install onnx onnxruntime)")
    model, ckpt = load_model(checkpoint)
    info = export_info(ckpt)
    if ckpt.task == "multilabel":
        if int8:
            raise ExportError("--int8 is checked by top-1 accuracy, which a multi-label model does not have; "
                              "export it without --int8")
        if format != "safetensors":  # a state dict has no graph to end in a sigmoid: its metadata says to apply it
            model = Probabilities(model).eval()
    if format == "safetensors":
        plain_state_dict(model.state_dict(), ckpt)  # refuse before writing anything
    path = Path(output) if output is not None else default_output(checkpoint, format, int8)
    check_output(path, checkpoint, ckpt)
    if int8:
        from .quantize import calibration_samples

        if calibration is not None and not is_list_argument(calibration):
            refuse_inside(path, calibration, "--output", ExportError)  # that folder is a dataset too
        calibration_source, samples = calibration_samples(ckpt, calibration)  # refuse before any work
    make_folder(path.parent, "the export's folder", ExportError)
    if not int8:
        return _export_checked(model, ckpt, info, format, path, tolerance)
    with tempfile.TemporaryDirectory(prefix="finetune-export-") as tmp:  # the fp32 model INT8 starts from
        fp32 = _export_checked(model, ckpt, info, "onnx", Path(tmp) / "fp32.onnx", tolerance)
        return _export_int8(fp32, path, info, ckpt, calibration_source, samples, max_drop)


def _export_checked(model, ckpt: Checkpoint, info: dict, format: str, path: Path, tolerance: float) -> ExportResult:
    """Write `model` to `path` as `format`, reload it the way a user would, and compare it with the eager model."""
    example, images = parity_batches(ckpt.preprocessing.size)
    with torch.inference_mode():
        expected = model(images)
    write, run, checked_with = {"onnx": (_write_onnx, _run_onnx, "onnxruntime (CPUExecutionProvider)"),
                                "torchscript": (_write_torchscript, _run_torchscript, "torch.jit.load"),
                                "safetensors": (_write_safetensors, _run_safetensors,
                                                info["architecture"]["plain_model"]),
                                }[format]
    with warnings.catch_warnings():  # torch's deprecation notices for its TorchScript tools are not the user's concern
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, UserWarning))
        files = write(model, path, info, example, ckpt)
        actual = run(path, images, ckpt)
    diff = float((actual.float() - expected.float()).abs().max())
    if not diff <= tolerance:  # also catches NaN
        for f in files:
            f.unlink(missing_ok=True)
        raise ExportError(f"the {format} export differs from the eager model by {diff:.3g} (tolerance {tolerance:g}) "
                          f"on a batch of {PARITY_BATCH}; nothing was kept. Please report this with the model name")
    return ExportResult(format, path, files, diff, tolerance, PARITY_BATCH, checked_with)


def parity_batches(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(the batch to trace with, the batch to compare on): seeded, ~ the statistics of normalised images."""
    generator = torch.Generator().manual_seed(0)
    return (torch.randn(TRACE_BATCH, 3, size, size, generator=generator),
            torch.randn(PARITY_BATCH, 3, size, size, generator=generator))


# ---------------------------------------------------------------- onnx


def to_onnx(model, example: torch.Tensor, ckpt: Checkpoint, info: dict | None = None) -> bytes:
    """The model as ONNX bytes: input `images`, output `logits` (a Probabilities model: `probabilities`), a dynamic
    batch axis, and finetune's metadata."""
    output = PROBABILITIES if isinstance(model, Probabilities) else "logits"
    import onnx

    buf = io.BytesIO()
    with warnings.catch_warnings():  # the exporter's deprecation notices are not the user's concern
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, UserWarning))
        # The TorchScript-based exporter: it needs only `onnx`, while the dynamo exporter also needs onnxscript.
        torch.onnx.export(model, (example,), buf, dynamo=False, input_names=["images"], output_names=[output],
                          dynamic_axes={"images": {0: "batch"}, output: {0: "batch"}}, opset_version=17)
    proto = onnx.load_from_string(buf.getvalue())
    set_metadata(proto, info or export_info(ckpt))
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def set_metadata(proto, info: dict) -> None:
    """finetune's metadata on an ONNX ModelProto: all of it as JSON in `finetune`, the parts people read alone."""
    import onnx

    props = {"finetune": json.dumps(info), "class_names": json.dumps(info["class_names"]),
             "preprocessing": json.dumps(info["preprocessing"]), "output": info.get("output", OUTPUT), "input": INPUT,
             "temperature": repr(info["temperature"])}
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, props)
    kind = " (INT8, QDQ)" if info.get("quantization") else ""
    output = info.get("output", OUTPUT)
    proto.doc_string = f"finetune export of {info['architecture']['name']}{kind}; output = {output}"


def _write_onnx(model, path: Path, info: dict, example: torch.Tensor, ckpt: Checkpoint) -> list[Path]:
    data = to_onnx(model, example, ckpt, info)
    atomic_write(path, lambda f: f.write(data))
    return [path]


def _run_onnx(path: Path, images: torch.Tensor, ckpt: Checkpoint) -> torch.Tensor:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run([session.get_outputs()[0].name], {"images": images.numpy()})[0])


def _export_int8(fp32: ExportResult, path: Path, info: dict, ckpt: Checkpoint, source: str, samples,
                 max_drop: float) -> ExportResult:
    import onnx

    from .quantize import METHOD, check, load_images, quantize

    images, labels, unreadable = load_images(ckpt, samples)
    quantized = fp32.path.with_name("int8.onnx")
    quantize(fp32.path, quantized, images)
    result = check(fp32.path, quantized, images, labels, source, unreadable)
    proto = onnx.load(str(quantized))
    set_metadata(proto, {**info, "quantization": {**METHOD, "check": result.to_dict()}})
    if result.drop is not None and not result.drop <= max_drop:
        raise ExportError(f"the INT8 model's top-1 accuracy is {result.accuracy_int8:.3f} against "
                          f"{result.accuracy_fp32:.3f} for fp32 on {result.labelled} labelled images "
                          f"({result.drop:.1f} points lost, more than "
                          f"--max-accuracy-drop {max_drop:g}); nothing was kept. Calibrate on more or more typical "
                          "images (--calibration DIR), or ship the fp32 export")
    atomic_write(path, lambda f: f.write(proto.SerializeToString()))
    return ExportResult("onnx", path, [path], fp32.max_abs_diff, fp32.tolerance, fp32.batch,
                        f"{fp32.checked_with}; INT8 by accuracy", result)


# ---------------------------------------------------------------- torchscript


def _write_torchscript(model, path: Path, info: dict, example: torch.Tensor, ckpt: Checkpoint) -> list[Path]:
    traced = torch.jit.trace(model, example, check_trace=False)  # our own parity check follows
    extra = {"finetune.json": json.dumps(info)}
    atomic_write(path, lambda f: torch.jit.save(traced, f, _extra_files=extra))
    return [path]


def _run_torchscript(path: Path, images: torch.Tensor, ckpt: Checkpoint) -> torch.Tensor:
    loaded = torch.jit.load(str(path), map_location="cpu")
    with torch.inference_mode():
        return loaded(images)


# ---------------------------------------------------------------- safetensors


def plain_state_dict(state: dict, ckpt: Checkpoint) -> dict:
    """Our state dict with the keys plain torchvision/timm models use, or an ExportError saying why not.

    A linear head with dropout is Sequential(Dropout, Linear) in our model (keys fc.1.*); plain
    models have a bare Linear (fc.*), and dropout does nothing at inference, so the keys map 1:1.
    """
    spec, name = ckpt.model, ckpt.head_name
    if spec.source == "scratch" and spec.name not in TORCHVISION_RESNETS:
        raise ExportError(f"{spec.name} is one of our variants that torchvision does not have, so no plain model can "
                          "load its state dict; export onnx or torchscript instead")
    if spec.source == "scratch" and spec.cifar_stem:
        raise ExportError("this model has the CIFAR stem (3x3 conv, no max-pool), which plain torchvision ResNets "
                          "lack, so no plain model can load it; export onnx or torchscript instead")
    if spec.head.type == "mlp":
        raise ExportError("this model has an MLP head (Linear-ReLU-Dropout-Linear); plain torchvision/timm models "
                          "have a single Linear there, so their state dicts cannot hold it. Export onnx or "
                          "torchscript (they keep the whole model), or train with model.head.type: linear")
    prefix = f"{name}.1." if spec.head.dropout else None
    out = {}
    for key, value in state.items():
        if prefix and key.startswith(prefix):
            key = f"{name}." + key[len(prefix):]
        out[key] = value.detach().cpu().contiguous()
    return out


def _write_safetensors(model, path: Path, info: dict, example: torch.Tensor, ckpt: Checkpoint) -> list[Path]:
    from safetensors.torch import save

    tensors = plain_state_dict(model.state_dict(), ckpt)
    sidecar = path.with_suffix(".json")
    atomic_write(path, lambda f: f.write(save(tensors, metadata={"finetune": json.dumps(info)})))
    atomic_write(sidecar, lambda f: f.write(json.dumps(info, indent=2).encode()))
    return [path, sidecar]


def create_plain_model(ckpt: Checkpoint):
    """The plain torchvision/timm architecture a safetensors export loads into (no finetune code)."""
    k = len(ckpt.class_names)
    if ckpt.model.source == "timm":
        import timm

        return timm.create_model(ckpt.model.name, num_classes=k)
    import torchvision

    return torchvision.models.get_model(ckpt.model.name, num_classes=k)


def _run_safetensors(path: Path, images: torch.Tensor, ckpt: Checkpoint) -> torch.Tensor:
    from safetensors.torch import load_file

    plain = create_plain_model(ckpt)
    plain.load_state_dict(load_file(str(path)), strict=True)
    with torch.inference_mode():
        return plain.eval()(images)
