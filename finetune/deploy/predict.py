"""predict(source, paths): class probabilities for image files, folders, globs and @lists."""

from __future__ import annotations

import glob
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..checkpoint import Checkpoint
from ..console import progress, stderr_console
from ..data.folders import is_image_name
from ..data.images import load_rgb
from ..data.lists import is_list_argument, read_path_list
from ..data.loading import prefetched, resolve_workers
from ..data.transforms import eval_transform
from ..errors import CheckpointError, ConfigError, DataError
from ..models.folding import fold_checked
from ..runtime.device import resolve_device
from ..runtime.threads import tuned_threads
from .engines import ModelSource, load_source, onnxruntime_runner, resolve_engine
from .loading import load_model


@dataclass(frozen=True)
class Ranked:
    """One of an image's most likely classes."""
    label: str
    index: int  # in the model's class order
    prob: float  # calibrated unless predict(raw=True)


@dataclass
class Prediction:
    path: str
    top: list[Ranked] = field(default_factory=list)  # most likely first
    error: str | None = None  # set when the file could not be read; top is then empty
    logits: list[float] | None = None  # raw logits of every class (for evaluate; not in to_dict)
    rejected: bool | None = None  # with --reject: its calibrated confidence is below the threshold

    @property
    def label(self) -> str | None:
        """What the image is said to be: the top class, `unknown` when rejected, None when unreadable."""
        if self.error or not self.top:
            return None
        return UNKNOWN if self.rejected else self.top[0].label

    def to_dict(self) -> dict:
        d = {"path": self.path, "top": [vars(t) for t in self.top]}
        if self.rejected is not None and not self.error:
            d.update(label=self.label, rejected=self.rejected)
        if self.error:
            d["error"] = self.error
        return d


UNKNOWN = "unknown"  # the label of a rejected image ("none of these")


def resolve_reject(reject: str | float | None, source) -> float | None:
    """--reject: auto -> the threshold stored at the end of training; a number P in [0, 1] -> P; None -> off."""
    if reject is None:
        return None
    if isinstance(reject, str) and reject.strip().lower() == "auto":
        threshold = source.reject_threshold
        if threshold is None:
            raise CheckpointError("--reject auto: this model stores no rejection threshold (trained or exported before "
                            "finetune chose one); give one, e.g. --reject 0.6, or train it again")
        return threshold
    try:
        value = float(reject)
    except (TypeError, ValueError):
        raise ConfigError(f"--reject takes auto or a probability from 0 to 1, got {reject!r}") from None
    if not 0 <= value <= 1:
        raise ConfigError(f"--reject takes auto or a probability from 0 to 1, got {value:g}")
    return value


def expand_paths(items: list[str]) -> list[Path]:
    """Image files, folders (recursively, image extensions only), glob patterns and `@list` files (data.lists), in
    a stable order. A path named as such, on the command line or in a list, is kept whatever it is (a FIFO, a
    device, a file that is gone): predict then reports it, it never vanishes."""
    out: list[Path] = []
    for item in items:
        p = Path(item).expanduser()
        if is_list_argument(item):
            for listed in read_path_list(item):
                q = listed.path
                out += sorted(f for f in q.rglob("*") if not f.is_dir() and is_image_name(f)) if q.is_dir() else [q]
        elif p.is_dir():
            out += sorted(f for f in p.rglob("*") if not f.is_dir() and is_image_name(f))  # a FIFO: reported
        elif p.exists() or p.is_symlink():
            out.append(p)
        else:
            matches = sorted(Path(m) for m in glob.glob(item, recursive=True))
            if not matches:
                raise DataError(f"no such file, folder or matching glob: {item}")
            out += [m for m in matches if m.is_file()]
    return list(dict.fromkeys(out))


class _Images(torch.utils.data.Dataset):
    def __init__(self, paths, transform, draft):
        self.paths, self.transform, self.draft = paths, transform, draft

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        try:
            return self.transform(load_rgb(self.paths[i], self.draft)), i, ""
        except Exception as exc:  # an unreadable file is reported in the output; the rest go on
            return torch.zeros(0), i, f"{type(exc).__name__}: {exc}"


def _collate(batch):
    good = [b for b in batch if not b[2]]
    images = torch.stack([b[0] for b in good]) if good else torch.zeros(0)
    return images, [b[1] for b in good], [(b[1], b[2]) for b in batch if b[2]]


def forward(model, images: torch.Tensor, tta: bool = False) -> torch.Tensor:
    """Logits; with tta, the mean of the logits of the images and their horizontal mirrors.

    Averaging logits (not probabilities) keeps the output a logit, so the fitted temperature and
    the exported models' contract (output = logits) apply to TTA unchanged.
    """
    logits = model(images).float()
    if tta:
        logits = (logits + model(images.flip(3)).float()) / 2
    return logits


def torch_runner(ckpt: Checkpoint, dev: torch.device):
    """The checkpoint's model on `dev`, channels-last, with BatchNorm folded into the convs: fewer passes over the
    activations, the same logits (models.folding)."""
    model, _ = load_model(ckpt)
    model.to(dev, memory_format=torch.channels_last)
    size = ckpt.preprocessing.size
    probe = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    return fold_checked(model, probe.to(dev, memory_format=torch.channels_last))


def make_runner(source: ModelSource, engine: str, dev: torch.device):
    """(images on the CPU, tta) -> logits, by `engine`: the checkpoint's model as torch_runner builds it (the images
    moved to `dev`, channels-last), or onnxruntime. predict and the server (deploy.serve) both run through this."""
    if engine == "torch":
        model = torch_runner(source, dev)
        return lambda images, tta=False: forward(model, images.to(dev, memory_format=torch.channels_last), tta)
    model = onnxruntime_runner(source)
    return lambda images, tta=False: forward(model, images, tta)


def rank(logits: torch.Tensor, names: list[str], k: int, temperature: float, calibration: float,
         threshold: float | None) -> list[tuple[list[Ranked], bool | None]]:
    """Each row of logits as its top-k classes (probabilities at `temperature`) and whether it is rejected (its
    top-1 probability at the calibration temperature below `threshold`; None when rejection is off). predict and
    the server (deploy.serve) both rank through this."""
    top_p, top_i = (logits / temperature).softmax(1).topk(k, dim=1)
    confidence = (logits / calibration).softmax(1).amax(1)
    return [([Ranked(names[j], int(j), round(float(p), 6)) for p, j in zip(ps, js)],
             None if threshold is None else bool(c < threshold))
            for ps, js, c in zip(top_p.tolist(), top_i.tolist(), confidence.tolist())]


def predict(source: ModelSource | Path, paths: list[Path], *, top_k: int = 1, batch_size: int = 32,
            device: str = "auto", workers: int | None = None, tta: bool = False, raw: bool = False,
            console=None, engine: str = "auto", reject: str | float | None = None) -> list[Prediction]:
    """Top-k classes per image. Probabilities are temperature-calibrated (the checkpoint's temperature) unless raw.
    `reject` ("none of these"): auto or a probability P; an image whose calibrated top-1 probability is below the
    threshold (the stored one for auto) is marked rejected and labelled `unknown` (raw or not: the threshold is
    on the calibrated probability).
    `source`: a path (a checkpoint, or an .onnx exported by finetune), or a Checkpoint / OnnxModel already
    read (evaluate hands over its own). `engine` (deploy.engines): auto, torch or onnxruntime."""
    ckpt = load_source(source)
    engine = resolve_engine(engine, ckpt, device)
    threshold = resolve_reject(reject, ckpt)
    temperature = 1.0 if raw else ckpt.temperature
    dev = resolve_device(device) if engine == "torch" else torch.device("cpu")
    names, pre = ckpt.class_names, ckpt.preprocessing
    k = max(1, min(top_k, len(names)))
    if workers is None:  # CPU: decode in a thread of this process (data.prefetched); CUDA: in worker processes
        workers = resolve_workers("auto") if dev.type == "cuda" else 0
    loader = torch.utils.data.DataLoader(_Images(paths, eval_transform(pre), pre.resize), batch_size=batch_size,
                                         num_workers=workers, collate_fn=_collate, pin_memory=dev.type == "cuda")
    batches = prefetched(loader) if dev.type == "cpu" else loader  # on CPU decoding starts while the model is built
    run = make_runner(ckpt, engine, dev)
    results = [Prediction(str(p)) for p in paths]
    console = console or stderr_console()
    with progress(console) as bar, torch.inference_mode():
        task = bar.add_task("predict", total=len(paths))
        # decoding overlaps the forward pass; on a busy CPU the thread count that keeps pace is measured (torch's
        # pool; onnxruntime keeps its own)
        for images, idx, errors in (tuned_threads(batches) if engine == "torch" and dev.type == "cpu" else batches):
            for i, err in errors:
                results[i].error = err
            if idx:
                logits = run(images, tta).cpu()
                ranked = rank(logits, names, k, temperature, ckpt.temperature, threshold)
                for row, (i, (top, rejected)) in enumerate(zip(idx, ranked)):
                    results[i].logits, results[i].top, results[i].rejected = logits[row].tolist(), top, rejected
            bar.advance(task, len(idx) + len(errors))
    return results
