"""What runs the model for predict and evaluate: torch (a checkpoint, BatchNorm folded) or onnxruntime (an ONNX
file exported by finetune, fp32 or INT8, or a checkpoint exported to ONNX in memory on the fly).

Either way the runner is a function from a float32 image batch to logits, and the class names, preprocessing
and temperature come with the model: from the checkpoint, or from the ONNX file's own metadata, so an
`.onnx` (`finetune export --format onnx [--int8]`) is all predict and evaluate need.
"""

from __future__ import annotations

import importlib.util
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from ..checkpoint import Checkpoint
from ..errors import CheckpointError, ConfigError
from ..files import unreadable_file
from ..preprocessing import Preprocessing

ENGINES = ("auto", "torch", "onnxruntime")
Runner = Callable[[torch.Tensor], torch.Tensor]


class ModelSource(Protocol):
    """What predict and evaluate need from a model, whichever file it came from: a Checkpoint (torch) or an
    OnnxModel (onnxruntime)."""
    class_names: list[str]
    preprocessing: Preprocessing

    task: str  # multiclass | multilabel
    thresholds: list[float]  # multilabel: each label's probability threshold

    @property
    def temperature(self) -> float: ...

    @property
    def reject_threshold(self) -> float | None: ...


@dataclass
class OnnxModel:
    """An ONNX file written by `finetune export`, with the metadata predict needs read from it."""
    path: Path
    class_names: list[str]
    preprocessing: Preprocessing
    temperature: float
    quantization: dict | None = None  # INT8 exports: how they were quantized and checked
    info: dict = field(default_factory=dict, repr=False)
    session: object = field(default=None, repr=False)  # the onnxruntime session that read it, reused to run it

    @classmethod
    def load(cls, path: Path) -> OnnxModel:
        path = Path(path)
        if why := unreadable_file(path, "ONNX file"):
            raise CheckpointError(why)
        _require_onnxruntime("reading an .onnx file")
        try:
            session = _session(str(path))
            meta = session.get_modelmeta()
        except Exception as exc:  # onnxruntime's own exception types; a damaged or foreign file
            first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(f"cannot read {path}: not a valid ONNX model ({first})") from None
        try:
            info = json.loads(meta.custom_metadata_map["finetune"])
            names, temperature = info["class_names"], float(info["temperature"])
            if not (isinstance(names, list) and len(names) >= 2 and all(isinstance(n, str) for n in names)):
                raise ValueError("class_names")
            if not (math.isfinite(temperature) and temperature > 0):
                raise ValueError("temperature")
            pre = Preprocessing.from_dict(info["preprocessing"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path} is not an ONNX model exported by finetune (its metadata lacks valid class "
                                  "names, preprocessing or temperature); export one with: finetune export CHECKPOINT "
                                  "--format onnx") from None
        outputs = session.get_outputs()[0].shape[-1]  # the class axis: a fixed size in every finetune export
        if isinstance(outputs, int) and outputs != len(names):
            raise CheckpointError(f"{path} disagrees with itself: its metadata names {len(names)} classes, the model "
                                  f"has {outputs} outputs; export it again from its checkpoint (finetune export)")
        return cls(path, names, pre, temperature, info.get("quantization"), info, session)

    @property
    def task(self) -> str:
        return str(self.info.get("task", "multiclass"))

    @property
    def thresholds(self) -> list[float]:
        """multilabel: the checkpoint's per-label thresholds, carried in the metadata."""
        stored = self.info.get("thresholds")
        return [float(t) for t in stored] if isinstance(stored, list) and len(stored) == len(self.class_names) \
            else [0.5] * len(self.class_names)

    @property
    def reject_threshold(self) -> float | None:
        """The checkpoint's rejection threshold, carried in the metadata (None: exported before it existed)."""
        threshold = self.info.get("reject_threshold")
        return float(threshold) if isinstance(threshold, (int, float)) and 0 <= threshold <= 1 else None


def load_source(checkpoint: Path | ModelSource) -> ModelSource:
    """A Checkpoint or OnnxModel as given, else read from its path: `.onnx` is an export, anything else a checkpoint."""
    if isinstance(checkpoint, (Checkpoint, OnnxModel)):
        return checkpoint
    return OnnxModel.load(checkpoint) if Path(checkpoint).suffix.lower() == ".onnx" else Checkpoint.load(checkpoint)


def resolve_engine(engine: str, source: Checkpoint | OnnxModel, device: str) -> str:
    """auto: onnxruntime for an .onnx file, torch for a checkpoint. onnxruntime runs here on the CPU only."""
    if engine not in ENGINES:
        raise ConfigError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if isinstance(source, OnnxModel):
        if engine == "torch":
            raise ConfigError(f"{source.path} is an ONNX file, which onnxruntime runs: use --engine onnxruntime (or "
                              "auto), or give the checkpoint (.pt) it was exported from for --engine torch")
        engine = "onnxruntime"
    elif engine == "auto":
        engine = "torch"
    if engine == "onnxruntime":
        if device not in ("auto", "cpu"):
            raise ConfigError(f"--engine onnxruntime runs on the CPU (CPUExecutionProvider), not on {device}; "
                              "leave out --device, or use --engine torch")
        _require_onnxruntime("--engine onnxruntime")
    return engine


def onnxruntime_runner(source: Checkpoint | OnnxModel) -> Runner:
    """A function images -> logits running on onnxruntime's CPU provider. A checkpoint is exported to ONNX in
    memory first (nothing is written), and checked against its eager model like `finetune export` does."""
    if isinstance(source, OnnxModel):
        session = source.session or _session(str(source.path))
    else:
        from .export import parity_batches, to_onnx
        from .loading import load_model

        model, ckpt = load_model(source)
        example, images = parity_batches(ckpt.preprocessing.size)
        session = _session(to_onnx(model, example, ckpt))
        with torch.inference_mode():
            expected = model(images)
        got = torch.from_numpy(session.run(["logits"], {"images": images.numpy()})[0])
        diff = float((got - expected).abs().max())
        if not diff <= 1e-3:
            raise CheckpointError(f"the model exported to ONNX on the fly differs from the eager model by {diff:.3g}; "
                                  "use --engine torch, and please report this with the model name")

    output = session.get_outputs()[0].name  # logits; a multi-label export's sigmoid probabilities (deploy.export)

    def run(images: torch.Tensor) -> torch.Tensor:
        batch = images.contiguous().numpy()
        out = torch.from_numpy(session.run([output], {"images": batch})[0])
        # predict works on logits: back from the export's probabilities (1e-7 from 0 and 1: float32 saturates)
        return out if output == "logits" else torch.logit(out.clamp(1e-7, 1 - 1e-7))

    return run


def _session(model: str | bytes):
    """An onnxruntime CPU session whose idle workers sleep rather than spin: predict decodes images in a thread
    beside it, which needs the core a spinning worker would hold (predict on hymenoptera val, 2 busy cores:
    EfficientNet-Lite0 fp32 26.1 images/s against 22.6 spinning, ResNet-50 INT8 25.5 against 19.8)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def _require_onnxruntime(what: str):
    if importlib.util.find_spec("onnxruntime") is None:
        raise ConfigError(f"{what} needs onnxruntime, which is not installed: pip install 'finetune[export]' "
                          "(or pip install onnxruntime)")
    import onnxruntime

    return onnxruntime
