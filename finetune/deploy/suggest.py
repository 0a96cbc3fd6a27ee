"""suggest(checkpoint, unlabeled, n): which unlabelled photos to label next (`finetune suggest`).

One pass of the checkpoint's model over the photos gives each one's logits and, through a hook on the head, the
head's input (the pooled embedding) at once; deploy.selection picks from them. Nothing is written anywhere but
the CSV the caller asks for (never inside the photos' folders).
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..checkpoint import Checkpoint
from ..console import progress, stderr_console
from ..data.lists import is_list_argument, read_path_list
from ..errors import CheckpointError, ConfigError, DataError
from ..files import atomic_write, refuse_inside
from ..runtime.device import resolve_device
from ..runtime.threads import tuned_threads
from .engines import ModelSource, load_source
from .predict import expand_paths, image_batches, torch_runner
from .selection import POOL, select

CSV_FIELDS = ("path", "rank", "suggested_label", "label", "margin", "model_says", "why")


@dataclass(frozen=True)
class Suggested:
    """One photo to label next, with what the model thinks of it and why it was chosen."""
    path: str
    rank: int
    margin: float  # top-1 minus top-2 calibrated probability
    suggested_label: str  # the model's top class
    prob: float
    runner_up: str
    runner_up_prob: float
    uncertainty_rank: int  # 1: the smallest margin of all the photos
    cluster_size: int  # uncertain photos its cluster holds (0: every photo was taken)

    @property
    def model_says(self) -> str:
        return f"{self.suggested_label} {self.prob:.2f}, {self.runner_up} {self.runner_up_prob:.2f}"

    @property
    def why(self) -> str:
        said = f"#{self.uncertainty_rank} most uncertain"
        if not self.cluster_size:
            return f"{said}; every photo is suggested"
        if self.cluster_size == 1:
            return f"{said}; unlike the other uncertain photos"
        return f"{said}; stands for {self.cluster_size} similar uncertain photos"

    def to_dict(self) -> dict:
        return {**vars(self), "why": self.why}


@dataclass
class Embedded:
    """What one pass over the photos gives: for the N readable ones, logits and the head's input, in file order."""
    logits: torch.Tensor  # N x C, raw
    embeddings: torch.Tensor  # N x D, the head's input (the pooled features)
    paths: list[Path]
    unreadable: list[tuple[str, str]]  # (path, why) of the others


@dataclass
class Suggestions:
    """The photos to label next (rank 1 first) out of `photos` readable ones; the unreadable ones with why."""
    chosen: list[Suggested]
    photos: int
    pool: int  # the most uncertain photos the spread was chosen from
    unreadable: list[tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"photos": self.photos, "pool": self.pool, "suggested": [s.to_dict() for s in self.chosen],
                "unreadable": [{"path": p, "error": e} for p, e in self.unreadable]}

    def csv_text(self) -> str:
        """CSV_FIELDS rows with absolute paths: an @list for predict and evaluate wherever it is saved; fill in
        `label` (or copy suggested_label where it is right) and it is a labelled list."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(CSV_FIELDS)
        for s in self.chosen:
            writer.writerow([os.path.abspath(s.path), s.rank, s.suggested_label, "", f"{s.margin:.6f}",
                             s.model_says, s.why])
        return buf.getvalue()


def photos_of(unlabeled: str | Path) -> tuple[list[Path], list[Path]]:
    """(the images of UNLABELED: a folder, recursively, or an @list; the folders no output may go into)."""
    item = str(unlabeled)
    if is_list_argument(item):
        folders = sorted({listed.path.parent for listed in read_path_list(item)})
    else:
        if not Path(item).expanduser().is_dir():
            raise DataError(f"{item} is not a folder (give a folder of unlabelled photos, or @LIST)")
        folders = [Path(item).expanduser()]
    paths = expand_paths([item])
    if not paths:
        raise DataError(f"no images in {item} (looked for image files in it and its subfolders)")
    return paths, folders


def suggest(source: ModelSource | Path, unlabeled: str | Path, n: int = 100, *, output: Path | None = None,
            pool: int = POOL, batch_size: int = 32, device: str = "auto", workers: int | None = None,
            console=None) -> Suggestions:
    """The n photos of UNLABELED to label next (deploy.selection); with `output`, also written there as CSV."""
    if n < 1:
        raise ConfigError(f"--n must be at least 1, got {n}")
    onnx = isinstance(source, (str, Path)) and Path(source).suffix.lower() == ".onnx"
    ckpt = None if onnx else load_source(source)
    if not isinstance(ckpt, Checkpoint):
        raise CheckpointError("suggest reads the embeddings at the head's input, which an .onnx export does not "
                              "give: use the .pt checkpoint it was exported from")
    if ckpt.task == "multilabel":
        raise ConfigError("suggest ranks photos by the margin between the two likeliest classes, which a multi-label "
                          "model (task multilabel) does not have")
    paths, folders = photos_of(unlabeled)
    if output is not None:
        for folder in folders:
            refuse_inside(output, folder, "--output", DataError)
    seen = embed(ckpt, paths, batch_size=batch_size, device=device, workers=workers, console=console)
    if not seen.paths:
        raise DataError(f"none of the {len(paths)} image(s) in {unlabeled} could be read "
                        f"(the first: {seen.unreadable[0][0]}: {seen.unreadable[0][1]})")
    probs = (seen.logits / ckpt.temperature).softmax(1)
    top_p, top_i = probs.topk(min(2, probs.shape[1]), dim=1)
    names = ckpt.class_names
    chosen = [Suggested(str(seen.paths[c.index]), c.rank, c.margin, names[int(top_i[c.index, 0])],
                        round(float(top_p[c.index, 0]), 4), names[int(top_i[c.index, -1])],
                        round(float(top_p[c.index, -1]), 4), c.uncertainty_rank, c.cluster_size)
              for c in select(probs, seen.embeddings, n, pool)]
    result = Suggestions(chosen, len(seen.paths), min(len(seen.paths), pool * n), seen.unreadable)
    if output is not None:
        text = result.csv_text()
        atomic_write(Path(output), lambda f: f.write(text.encode()))
    return result


def embed(ckpt: Checkpoint, paths: list[Path], *, batch_size: int = 32, device: str = "auto",
          workers: int | None = None, console=None) -> Embedded:
    """The readable photos' logits and head inputs in one forward pass: a forward pre-hook on the head keeps what
    it is given."""
    dev = resolve_device(device)
    batches = image_batches(paths, ckpt.preprocessing, batch_size, dev, workers)
    model = torch_runner(ckpt, dev)
    seen: list[torch.Tensor] = []
    hook = model.get_submodule(ckpt.head_name).register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    logits, embeddings, kept, unreadable = [], [], [], []
    console = console or stderr_console()
    try:
        with progress(console) as bar, torch.inference_mode():
            task = bar.add_task("suggest: reading the photos", total=len(paths))
            for images, idx, errors in (tuned_threads(batches) if dev.type == "cpu" else batches):
                unreadable += [(str(paths[i]), err) for i, err in errors]
                if idx:
                    seen.clear()
                    logits.append(model(images.to(dev, memory_format=torch.channels_last)).float().cpu())
                    if len(seen) != 1 or seen[0].ndim != 2:
                        raise ConfigError(f"suggest needs the pooled features at the head's input ({ckpt.head_name}"
                                          f"), and this model's head takes {_shapes(seen)}")
                    embeddings.append(seen[0].float().cpu())
                    kept += [paths[i] for i in idx]
                bar.advance(task, len(idx) + len(errors))
    finally:
        hook.remove()
    if not kept:
        return Embedded(torch.zeros(0, len(ckpt.class_names)), torch.zeros(0, 0), [], unreadable)
    return Embedded(torch.cat(logits), torch.cat(embeddings), kept, unreadable)


def _shapes(seen: list[torch.Tensor]) -> str:
    return ", ".join(str(tuple(t.shape[1:])) for t in seen) or "nothing (it was not called)"
