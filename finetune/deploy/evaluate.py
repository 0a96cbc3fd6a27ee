"""evaluate(checkpoint, data): how good a checkpoint is on a labelled image folder, and where it fails.

Images go through predict() (the checkpoint's own preprocessing, batching and unreadable-file
handling); the figures come from finetune.metrics; the pictures from plots.py. Classes are matched by
name to the checkpoint's class order; a class the checkpoint does not know is reported, not scored.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data.folders import dataset_folders, find_val_folder, is_packed_root, packed_splits, scan_classes
from ..data.lists import is_list_argument, read_path_list
from ..errors import ConfigError, DataError
from ..files import atomic_write, make_folder, refuse_inside
from ..metrics import (
    averaged_scores,
    confusion_matrix,
    expected_calibration_error,
    nll,
    per_class_scores,
    softmax,
    top_k_accuracy,
    wilson_interval,
)
from .engines import ModelSource, load_source, resolve_engine
from .multilabel import MultilabelEvaluation, evaluate_multilabel
from .plots import plot_confusion, plot_mistakes
from .predict import predict


@dataclass(frozen=True)
class Mistake:
    """A wrong answer given with confidence: the image, its class, what the model said, and how sure it was."""
    path: str
    true: str
    predicted: str
    prob: float


@dataclass(frozen=True)
class Evaluation:
    """What `evaluate` found; `to_dict()` is the JSON form (report.json, `--format json`)."""
    checkpoint: str
    data: str
    output: Path
    images: int  # scored (readable, of a known class)
    classes: list[str]
    raw: bool
    tta: bool
    engine: str
    top1: float
    top1_interval: tuple[float, float]  # 95% Wilson interval
    top5: float | None  # only with more than 5 classes
    ece: float
    calibration: dict[str, float]  # temperature, ece_raw / ece_calibrated, nll_raw / nll_calibrated
    per_class: list[dict]  # class, precision, recall, f1, recall_interval, support
    macro: dict[str, float]
    weighted: dict[str, float]
    confusion_matrix: list[list[int]]
    mistakes: list[Mistake]  # most confident first
    unknown_classes: dict[str, int]  # class folders the checkpoint does not know: images in each
    unreadable: list[dict]  # path, error
    files: dict[str, str | None] = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "mistakes"}
        d.update(output=str(self.output), top1_interval=list(self.top1_interval),
                 most_confident_mistakes=[vars(m) for m in self.mistakes])
        return d


def resolve_data_folder(data: Path, class_names: list[str]) -> Path:
    """DATA itself when it holds class folders; DATA/val (valid/, validation/) when DATA is a split root."""
    data = Path(data).expanduser()
    if not data.is_dir():
        raise DataError(f"{data} is not a folder of class folders")
    val = find_val_folder(data)
    if (data / "train").is_dir() and val is not None and "train" not in class_names:
        return val
    return data


def labelled_images(data: Path | str, class_names: list[str]) -> tuple[Path, dict[str, list[Path]], list[Path]]:
    """(what was evaluated, {class: [paths]}, the folders no output may go into) for DATA: a folder of class
    folders, a split root (its val/), or a list `@list.csv` / `@list.txt` whose `label` column, or else each
    image's folder name, is the class (a list with a split column: its val rows, as a split root's val/), or
    WebDataset shards or an hf: dataset (their val split)."""
    if is_packed_root(data):  # shards, an hf: dataset: the val split training makes by default (a shard set's own)
        found: dict[str, list] = {}
        splits = packed_splits(data, 0.2, 0)
        for image, label in splits.val:
            found.setdefault(splits.class_names[label], []).append(image)
        return Path(str(data)), found, dataset_folders(data)
    if is_list_argument(data):
        found: dict[str, list[Path]] = {}
        listed = read_path_list(data)
        split = any(i.split for i in listed)
        for i in listed:
            if not split or i.split == "val":
                found.setdefault(i.label or i.path.parent.name, []).append(i.path)
        return Path(str(data)[1:]).expanduser(), found, dataset_folders(data)
    folder = resolve_data_folder(data, class_names)
    given = Path(data)
    # DATA as given (a split root's train/ too); and for a split folder (hymenoptera/val), the dataset it belongs to
    is_split = given.resolve().name in ("train", "val") and (given.resolve().parent / "train").is_dir()
    return folder, scan_classes(folder), [given.resolve().parent if is_split else given]


def default_output(checkpoint: Path, data: Path) -> Path:
    """Next to the checkpoint: runs/x/eval-best-val. Re-evaluating the same pair replaces its files."""
    return Path(checkpoint).resolve().parent / f"eval-{Path(checkpoint).stem}-{Path(data).resolve().name}"


def evaluate(source: ModelSource | Path, data: Path | str, *, output: Path | None = None, tta: bool = False,
             raw: bool = False, batch_size: int = 32, device: str = "auto", mistakes: int = 16, console=None,
             engine: str = "auto") -> Evaluation | MultilabelEvaluation:
    """Score the checkpoint (or an .onnx exported by finetune) on DATA, write CSV/PNG/JSON files into output.
    `engine`: auto, torch or onnxruntime (deploy.engines). A multi-label checkpoint: a MultilabelEvaluation."""
    checkpoint = source if isinstance(source, (str, Path)) else getattr(source, "path", None)  # a Checkpoint: none
    if checkpoint is None and output is None:
        raise ConfigError("evaluate: give output= for a checkpoint read in memory (there is no file to put it beside)")
    ckpt = load_source(source)
    engine = resolve_engine(engine, ckpt, device)
    if ckpt.task == "multilabel":  # mAP and F1 at its thresholds, on a labels CSV (deploy.multilabel)
        return evaluate_multilabel(ckpt, checkpoint, data, output, tta=tta, batch_size=batch_size, device=device,
                                   console=console, engine=engine)
    names = ckpt.class_names
    folder, found, image_folders = labelled_images(data, names)
    output = Path(output) if output is not None else default_output(Path(checkpoint), folder)
    for root in image_folders:
        refuse_inside(output, root, "the output folder", DataError)
    unknown = {c: len(paths) for c, paths in found.items() if c not in names}
    samples = [(p, names.index(c)) for c, paths in found.items() if c in names for p in paths]
    if not samples:
        has = f"; it has {', '.join(unknown)}" if unknown else ""
        if is_list_argument(data):
            raise DataError(f"no images of the checkpoint's classes ({', '.join(names)}) in the list {folder}{has}. "
                            "The class of a listed image is its 'label' column (CSV), else its folder's name")
        raise DataError(f"no images of the checkpoint's classes ({', '.join(names)}) under {folder}{has}. "
                        "DATA must hold one folder per class")
    make_folder(output, "the output folder", DataError)

    results = predict(ckpt, [p for p, _ in samples], batch_size=batch_size, device=device,
                      tta=tta, raw=True, console=console, engine=engine)
    scored = [(r, label) for r, (_, label) in zip(results, samples) if r.error is None]
    if not scored:
        raise DataError(f"none of the {len(samples)} images under {folder} could be read")
    logits = np.array([r.logits for r, _ in scored], dtype=np.float64)
    labels = np.array([label for _, label in scored])
    t = ckpt.temperature
    probs = softmax(logits, 1.0 if raw else t)
    predicted = probs.argmax(axis=1)
    cm = confusion_matrix(labels, predicted, len(names))
    scores = per_class_scores(cm)

    confidence = probs.max(axis=1)
    wrong = sorted(np.flatnonzero(predicted != labels), key=lambda i: -confidence[i])[:mistakes]
    evaluation = Evaluation(
        checkpoint=str(checkpoint), data=str(folder), output=output, images=int(len(labels)), classes=names,
        raw=raw, tta=tta, engine=engine, top1=top_k_accuracy(probs, labels, 1),
        # 95% Wilson intervals: what the accuracy could be on more images like these (metrics.wilson_interval)
        top1_interval=wilson_interval(int((predicted == labels).sum()), len(labels)),
        top5=top_k_accuracy(probs, labels, 5) if len(names) > 5 else None,
        ece=expected_calibration_error(probs, labels),
        calibration={"temperature": t, "ece_raw": expected_calibration_error(softmax(logits), labels),
                     "ece_calibrated": expected_calibration_error(softmax(logits, t), labels),
                     "nll_raw": nll(logits, labels), "nll_calibrated": nll(logits, labels, t)},
        per_class=[{"class": n, **{k: float(scores[k][i]) for k in ("precision", "recall", "f1")},
                    "recall_interval": list(wilson_interval(int(cm[i, i]), int(scores["support"][i]))),
                    "support": int(scores["support"][i])} for i, n in enumerate(names)],
        **averaged_scores(cm),
        confusion_matrix=cm.tolist(),
        mistakes=[Mistake(scored[i][0].path, names[labels[i]], names[predicted[i]], float(confidence[i]))
                  for i in wrong],
        unknown_classes=unknown,
        unreadable=[{"path": r.path, "error": r.error} for r in results if r.error])
    files = _write_files(output, evaluation.to_dict(), scored, probs, ckpt.preprocessing.size)
    return dataclasses.replace(evaluation, files=files)


def _write_files(output: Path, report: dict, scored, probs: np.ndarray, image_size: int) -> dict:
    names = report["classes"]
    files = {"confusion_csv": output / "confusion_matrix.csv", "confusion_png": output / "confusion_matrix.png",
             "confusion_normalized_png": output / "confusion_matrix_normalized.png",
             "predictions_csv": output / "predictions.csv", "per_class_csv": output / "per_class.csv",
             "mistakes_png": output / "mistakes.png",
             "report_json": output / "report.json"}
    _write_csv(files["confusion_csv"], [["true \\ predicted", *names],
                                        *([n, *row] for n, row in zip(names, report["confusion_matrix"]))])
    lo, hi = report["top1_interval"]
    _write_csv(files["per_class_csv"], [
        ["class", "precision", "recall", "recall_low95", "recall_high95", "f1", "support"],
        *([c["class"], f"{c['precision']:.6f}", f"{c['recall']:.6f}", f"{c['recall_interval'][0]:.6f}",
           f"{c['recall_interval'][1]:.6f}", f"{c['f1']:.6f}", c["support"]] for c in report["per_class"]),
        ["(all: top-1 accuracy)", "", f"{report['top1']:.6f}", f"{lo:.6f}", f"{hi:.6f}", "", report["images"]]])
    rows = ([r.path, names[y], names[p.argmax()], f"{p.max():.6f}", int(p.argmax() == y)]
            for (r, y), p in zip(scored, probs))
    _write_csv(files["predictions_csv"], [["path", "true", "predicted", "prob", "correct"], *rows])
    title = f"top-1 {report['top1']:.3f} on {report['images']} images"
    plot_confusion(files["confusion_png"], report["confusion_matrix"], names, normalize=False, title=title)
    plot_confusion(files["confusion_normalized_png"], report["confusion_matrix"], names, normalize=True, title=title)
    if report["most_confident_mistakes"]:
        plot_mistakes(files["mistakes_png"], report["most_confident_mistakes"], image_size)
    else:
        files["mistakes_png"].unlink(missing_ok=True)  # an old grid from an earlier evaluation would mislead
        files["mistakes_png"] = None
    out = {k: str(v) if v else None for k, v in files.items()}
    atomic_write(files["report_json"], lambda f: f.write(json.dumps({**report, "files": out}, indent=2).encode()))
    return out


def _write_csv(path: Path, rows) -> None:
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    atomic_write(path, lambda f: f.write(buf.getvalue().encode()))
