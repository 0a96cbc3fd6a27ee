"""predict(source, paths): class probabilities for image files, folders, globs and @lists."""

from __future__ import annotations

import glob
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..checkpoint import Checkpoint
from ..console import progress, stderr_console
from ..data.folders import dataset_of, is_image_name, is_packed_root, packed_images
from ..data.images import load_rgb
from ..data.lists import is_list_argument, read_path_list
from ..data.loading import prefetched, resolve_workers
from ..data.packed import PackedImage
from ..data.transforms import eval_transform
from ..errors import ConfigError, DataError
from ..models.folding import fold_checked
from ..runtime.device import resolve_device
from ..runtime.threads import tuned_threads
from .engines import ModelSource, load_source, onnxruntime_runner, resolve_engine
from .loading import load_model
from .reject import RejectRule, Verdict, resolve_reject


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
    verdict: Verdict | None = None  # with --reject: its score (knn or probability) against the threshold

    @property
    def rejected(self) -> bool | None:
        """With --reject: whether its score is below the threshold; None without --reject."""
        return None if self.verdict is None else self.verdict.rejected

    @property
    def label(self) -> str | None:
        """What the image is said to be: the top class, `unknown` when rejected, None when unreadable."""
        if self.error or not self.top:
            return None
        return UNKNOWN if self.rejected else self.top[0].label

    def to_dict(self) -> dict:
        d = {"path": self.path, "top": [vars(t) for t in self.top]}
        if self.rejected is not None and not self.error:
            d.update(label=self.label, rejected=self.rejected, reject_score=self.verdict.to_dict())
        if self.error:
            d["error"] = self.error
        return d


UNKNOWN = "unknown"  # the label of a rejected image ("none of these")


def folders_read(inputs: list[str], photos: list[Path], source) -> list:
    """The folders predict reads photos from, where nothing it writes (--cam, --output) may go: a folder given, the
    dataset of any photo however it was named (a file, a glob, an @list; `dataset_of`), and the data the model
    was trained on."""
    read_from = [Path(item).expanduser() for item in inputs if Path(item).expanduser().is_dir()]
    read_from += sorted({p.folder if isinstance(p, PackedImage) else dataset_of(Path(p).expanduser().absolute())
                         for p in photos} - {None})
    trained_on = ((getattr(source, "recipe", None) or {}).get("data") or {}).get("root")
    return [*read_from, trained_on] if trained_on else read_from


def expand_paths(items: list[str]) -> list[Path]:
    """Image files, folders (recursively, image extensions only), glob patterns, `@list` files (data.lists),
    WebDataset shards (a shard folder, a .tar, a brace pattern) and hf: datasets (every image), in a stable order.
    A path named as such, on the command line or in a list, is kept whatever it is (a FIFO, a device, a file that is
    gone): predict then reports it, it never vanishes."""
    out: list[Path] = []
    for item in items:
        p = Path(item).expanduser()
        if is_packed_root(item):
            out += packed_images(item)
        elif is_list_argument(item):
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


class ImageBatchSource(torch.utils.data.Dataset):
    def __init__(self, paths, transform, draft):
        self.paths, self.transform, self.draft = paths, transform, draft

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        try:
            return self.transform(load_rgb(self.paths[i], self.draft)), i, ""
        except Exception as exc:  # an unreadable file is reported in the output; the rest go on
            return torch.zeros(0), i, f"{type(exc).__name__}: {exc}"


def image_batches(paths: list[Path], pre, batch_size: int, dev: torch.device, workers: int | None = None):
    """Batches of `paths` through the checkpoint's eval transform (collate_images): on a CPU decoded in a thread of
    this process (data.prefetched), on CUDA in worker processes (`workers`, default auto)."""
    if workers is None:
        workers = resolve_workers("auto") if dev.type == "cuda" else 0
    loader = torch.utils.data.DataLoader(ImageBatchSource(paths, eval_transform(pre), pre.resize),
                                         batch_size=batch_size, num_workers=workers, collate_fn=collate_images,
                                         pin_memory=dev.type == "cuda")
    return prefetched(loader) if dev.type == "cpu" else loader


def collate_images(batch):
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
    """(images on the CPU, tta) -> (logits, embeddings or None), by `engine`: the checkpoint's model as
    torch_runner builds it (the images moved to `dev`, channels-last), or onnxruntime. The embeddings (the head's
    inputs, for the knn rejection score) come with torch, for a checkpoint that stores training embeddings.
    predict and the server (deploy.serve) both run through this."""
    if engine == "torch":
        model = torch_runner(source, dev)
        head = model.get_submodule(source.head_name) if getattr(source, "embeddings", None) is not None else None
        return lambda images, tta=False: forward_with_inputs(
            model, head, images.to(dev, memory_format=torch.channels_last), tta)
    model = onnxruntime_runner(source)
    return lambda images, tta=False: (forward(model, images, tta), None)


def forward_with_inputs(model, head, images: torch.Tensor, tta: bool = False
                        ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(forward's logits, the inputs of `head` flattened (with tta: the mean of both passes'); None without a
    head)."""
    if head is None:
        return forward(model, images, tta), None
    caught: list[torch.Tensor] = []
    hook = head.register_forward_pre_hook(lambda _, args: caught.append(args[0].float().flatten(1)))
    try:
        logits = forward(model, images, tta)
    finally:
        hook.remove()
    return logits, torch.stack(caught).mean(0)


def rank(logits: torch.Tensor, names: list[str], k: int, temperature: float, reject: RejectRule | None,
         embeddings: torch.Tensor | None = None) -> list[tuple[list[Ranked], Verdict | None]]:
    """Each row of logits as its top-k classes (probabilities at `temperature`) and its rejection verdict under
    `reject` (None when rejection is off; a knn rule needs the rows' embeddings). predict and the server
    (deploy.serve) both rank through this."""
    top_p, top_i = (logits / temperature).softmax(1).topk(k, dim=1)
    verdicts = reject.verdicts(logits, embeddings) if reject is not None else [None] * len(logits)
    return [([Ranked(names[j], int(j), round(float(p), 6)) for p, j in zip(ps, js)], v)
            for ps, js, v in zip(top_p.tolist(), top_i.tolist(), verdicts)]


def above_thresholds(logits: torch.Tensor, names: list[str], thresholds: list[float]) -> list[list[Ranked]]:
    """task multilabel: each row's labels whose sigmoid probability is at least their threshold, most likely
    first (none: an image that shows none of them)."""
    probs = logits.float().sigmoid()
    keep = probs >= torch.tensor(thresholds, dtype=probs.dtype)
    return [[Ranked(names[j], j, round(float(p[j]), 6)) for j in sorted(torch.nonzero(k).flatten().tolist(),
                                                                         key=lambda j: -float(p[j]))]
            for p, k in zip(probs, keep)]


def predict(source: ModelSource | Path, paths: list[Path], *, top_k: int = 1, batch_size: int = 32,
            device: str = "auto", workers: int | None = None, tta: bool = False, raw: bool = False,
            console=None, engine: str = "auto", reject: str | float | None = None) -> list[Prediction]:
    """Top-k classes per image. Probabilities are temperature-calibrated (the checkpoint's temperature) unless raw.
    `reject` ("none of these", deploy.reject): auto or a probability P; an image whose score is below the threshold
    is marked rejected and labelled `unknown`. auto: the knn score and its stored threshold where the checkpoint
    stores training embeddings and the engine is torch, else the calibrated top-1 probability's; P: the
    calibrated top-1 probability (raw or not).
    `source`: a path (a checkpoint, or an .onnx exported by finetune), or a Checkpoint / OnnxModel already
    read (evaluate hands over its own). `engine` (deploy.engines): auto, torch or onnxruntime.
    A multi-label model (task multilabel) gives every label whose probability reaches its threshold (chosen on
    val), whatever top_k; `top` is then that list, and may be empty."""
    ckpt = load_source(source)
    engine = resolve_engine(engine, ckpt, device)
    multilabel = ckpt.task == "multilabel"
    if multilabel and reject is not None:
        raise ConfigError("--reject applies to one-class-per-image models; a multi-label model already says no "
                          "label when none reaches its threshold: leave --reject out")
    rule = resolve_reject(reject, ckpt, engine)
    temperature = 1.0 if raw else ckpt.temperature
    dev = resolve_device(device) if engine == "torch" else torch.device("cpu")
    names, pre = ckpt.class_names, ckpt.preprocessing
    k = max(1, min(top_k, len(names)))
    batches = image_batches(paths, pre, batch_size, dev, workers)  # decoding starts while the model is built
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
                logits, embeddings = run(images, tta)
                logits = logits.cpu()
                ranked = [(top, None) for top in above_thresholds(logits, names, ckpt.thresholds)] if multilabel \
                    else rank(logits, names, k, temperature, rule, None if embeddings is None else embeddings.cpu())
                for row, (i, (top, verdict)) in enumerate(zip(idx, ranked)):
                    results[i].logits, results[i].top, results[i].verdict = logits[row].tolist(), top, verdict
            bar.advance(task, len(idx) + len(errors))
    return results
