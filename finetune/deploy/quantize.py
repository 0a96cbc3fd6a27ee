"""INT8 ONNX: static post-training quantization with onnxruntime's tools, checked by accuracy, not logit parity.

The fp32 export (already parity-checked against the eager model) is pre-processed (`quant_pre_process`: shape
inference and graph optimisation), then quantized statically in QDQ form: weights as signed INT8 per output
channel, activations as unsigned INT8 with ranges measured (MinMax) by running the model over calibration
images through the checkpoint's own preprocessing. Those images are the checkpoint's validation split (its
recipe's data.root, split as training split it), or a folder / `@list` given instead. An INT8 model's logits
differ from fp32 by far more than rounding, so the check is what a user cares about: how often its top-1
agrees with the fp32 export, the top-1 accuracy of both where the images have labels, and the speed of both
here, measured side by side. The export fails, and nothing is kept, when accuracy drops by more than
`max_drop` points. The figures are measured on the calibration images themselves (optimistic); `finetune
evaluate` on held-out images gives the honest figure.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..checkpoint import Checkpoint
from ..data.folders import find_val_folder, is_image_name, resolve_splits, scan_classes
from ..data.images import load_rgb
from ..data.lists import is_list_argument, read_path_list
from ..data.transforms import eval_transform
from ..errors import DataError, ExportError

MAX_DROP = 1.5  # points of top-1 accuracy an INT8 export may lose (issue 17's target)
MAX_IMAGES = 512  # calibration images used at most, spread evenly over the set (onnxruntime suggests hundreds)
MAX_BYTES = 512 << 20  # ... and at most this much of them held in memory as float32 tensors
BENCH_BATCH, BENCH_ROUNDS = 16, 3
METHOD = {"format": "QDQ", "weights": "int8, per channel", "activations": "uint8, per tensor",
          "calibration": "MinMax", "tool": "onnxruntime.quantization.quantize_static"}


@dataclass
class Int8Check:
    source: str  # where the calibration images came from
    images: int  # decoded and used (calibration and the check)
    unreadable: int
    labelled: int  # of `images`, those with a class the checkpoint knows
    agreement: float  # share of images whose top-1 is the same in fp32 and INT8
    accuracy_fp32: float | None
    accuracy_int8: float | None
    fp32_images_per_s: float
    int8_images_per_s: float
    batch: int
    rounds: int

    @property
    def speedup(self) -> float:
        return self.int8_images_per_s / self.fp32_images_per_s

    @property
    def drop(self) -> float | None:
        """Top-1 accuracy lost, in points (negative: INT8 did better)."""
        if self.accuracy_fp32 is None:
            return None
        return 100 * (self.accuracy_fp32 - self.accuracy_int8)

    def to_dict(self) -> dict:
        return {**asdict(self), "speedup": self.speedup, "accuracy_drop_points": self.drop}


# ---------------------------------------------------------------- the calibration images


def calibration_samples(ckpt: Checkpoint, calibration: Path | str | None) -> tuple[str, list[tuple[Path, int]]]:
    """(where from, [(path, label or -1)]): the checkpoint's validation split, or `calibration` (a folder of class
    folders or of images, a split root (its val/), or an @list). Labels are class indices where known, else -1."""
    names = ckpt.class_names
    if calibration is None:
        data = ckpt.recipe.get("data") or {}
        root, seed = data.get("root"), (ckpt.recipe.get("train") or {}).get("seed", 0)
        if not root or not (is_list_argument(root) or Path(root).expanduser().is_dir()):
            where = f"its data.root {root} is not a folder here" if root else "its recipe names no data.root"
            raise ExportError(f"--int8 calibrates on the checkpoint's validation images, but {where}; give "
                              "--calibration DIR: a few hundred images like those the model will see (class folders "
                              "add an accuracy check)")
        try:
            splits = resolve_splits(Path(root), float(data.get("val_fraction", 0.2)), int(seed))
        except DataError as exc:
            raise ExportError(f"--int8: cannot read the checkpoint's validation images: {exc}; "
                              "give --calibration DIR") from None
        samples = [(p, _label(splits.class_names[y], names)) for p, y in splits.val]
        return f"the validation split of {root}", samples
    if is_list_argument(calibration):
        listed = read_path_list(calibration)
        return str(calibration), [(i.path, _label(i.label or i.path.parent.name, names)) for i in listed]
    folder = Path(calibration).expanduser()
    if not folder.is_dir():
        raise ExportError(f"--calibration {calibration} is not a folder (nor an @list of images)")
    if (folder / "train").is_dir() and find_val_folder(folder) is not None and "train" not in names:
        folder = find_val_folder(folder)  # a split root: its val/, as evaluate reads one
    classes = scan_classes(folder)
    samples = [(p, _label(c, names)) for c, paths in classes.items() for p in paths]
    samples += [(p, -1) for p in sorted(folder.iterdir()) if p.is_file() and is_image_name(p)]
    if not samples:
        raise ExportError(f"--calibration {calibration} holds no images")
    return str(folder), samples


def _label(name: str, names: list[str]) -> int:
    return names.index(name) if name in names else -1



def load_images(ckpt: Checkpoint, samples: list[tuple[Path, int]]) -> tuple[np.ndarray, np.ndarray, int]:
    """(images [N, 3, size, size] float32 through the checkpoint's preprocessing, labels [N], unreadable count),
    at most MAX_IMAGES (and MAX_BYTES) spread evenly over `samples`."""
    size = ckpt.preprocessing.size
    cap = max(1, min(MAX_IMAGES, MAX_BYTES // (3 * size * size * 4)))
    if len(samples) > cap:
        samples = [samples[int(i)] for i in np.linspace(0, len(samples) - 1, cap)]
    transform = eval_transform(ckpt.preprocessing)
    images, labels, unreadable = [], [], 0
    for path, label in samples:
        try:
            images.append(transform(load_rgb(path, ckpt.preprocessing.resize)).numpy())
        except Exception:  # an unreadable file calibrates nothing; counted and said
            unreadable += 1
            continue
        labels.append(label)
    if not images:
        raise ExportError(f"none of the {len(samples)} calibration images could be read")
    return np.stack(images).astype(np.float32), np.array(labels), unreadable


# ---------------------------------------------------------------- quantize and check


def quantize(fp32: Path, out: Path, images: np.ndarray) -> None:
    """Write the static INT8 (QDQ) quantization of the ONNX file `fp32` to `out`, calibrated on `images`."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(images[i:i + BENCH_BATCH] for i in range(0, len(images), BENCH_BATCH))

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"images": batch}

    with tempfile.TemporaryDirectory(prefix="finetune-int8-") as tmp, _quiet():
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared))
        quantize_static(str(prepared), str(out), Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)


def check(fp32: Path, int8: Path, images: np.ndarray, labels: np.ndarray, source: str,
          unreadable: int) -> Int8Check:
    """Agreement and accuracy of the INT8 model against the fp32 one, and both speeds, side by side."""
    import onnxruntime

    sessions = [onnxruntime.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (fp32, int8)]

    def top1(session) -> np.ndarray:
        return np.concatenate([session.run(["logits"], {"images": images[i:i + BENCH_BATCH]})[0].argmax(1)
                               for i in range(0, len(images), BENCH_BATCH)])

    p32, p8 = top1(sessions[0]), top1(sessions[1])
    known = labels >= 0
    acc = (lambda p: float((p[known] == labels[known]).mean())) if known.any() else (lambda p: None)
    speed32, speed8, batch = speeds(sessions[0], sessions[1], images)
    return Int8Check(source, len(images), unreadable, int(known.sum()), float((p32 == p8).mean()), acc(p32),
                     acc(p8), speed32, speed8, batch, BENCH_ROUNDS)


def speeds(a, b, images: np.ndarray) -> tuple[float, float, int]:
    """Images per second of sessions a and b on one batch: a warm-up each, then BENCH_ROUNDS alternating rounds
    (so a change of load on a shared machine hits both alike), the median of each."""
    batch = {"images": images[:BENCH_BATCH]}
    n = len(batch["images"])
    times: dict[int, list[float]] = {0: [], 1: []}
    for session in (a, b):
        session.run(["logits"], batch)
    for _ in range(BENCH_ROUNDS):
        for i, session in enumerate((a, b)):
            start = time.perf_counter()
            session.run(["logits"], batch)
            times[i].append(time.perf_counter() - start)
    return n / statistics.median(times[0]), n / statistics.median(times[1]), n


@contextmanager
def _quiet():
    """onnxruntime's quantization tools log advice through the root logger and warn; neither is the user's concern.
    Restored afterwards: a library call changes nothing process-wide."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)
