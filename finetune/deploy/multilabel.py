"""evaluate for a multi-label checkpoint (task multilabel): mAP, micro and macro F1 at the checkpoint's per-label
thresholds, and per label its AP, precision, recall, F1 and threshold; on a labels CSV (data.multilabel: @labels.csv
or a folder holding labels.csv; with a split column, its val rows). Labels the checkpoint does not know are
reported, not scored; a label with no positive image here has no AP and is left out of the mAP (said in the
output)."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data.folders import dataset_folders
from ..data.multilabel import label_list, read_label_csv
from ..errors import DataError
from ..files import atomic_write, make_folder, refuse_inside
from ..metrics import mean_average_precision, multilabel_f1, sigmoid
from .predict import predict


@dataclass(frozen=True)
class MultilabelEvaluation:
    """What `evaluate` found for a multi-label checkpoint; `to_dict()` is the JSON form (report.json)."""
    checkpoint: str
    data: str
    output: Path
    images: int  # scored (readable)
    classes: list[str]
    engine: str
    tta: bool
    map: float  # over the labels with a positive image here
    micro_f1: float
    macro_f1: float
    exact_match: float  # images whose every label is decided right
    per_class: list[dict]  # class, ap (None: no positive image), threshold, precision, recall, f1, support
    unknown_labels: dict[str, int]  # labels the checkpoint does not know: images with each
    unreadable: list[dict]
    files: dict[str, str | None] = field(default_factory=dict)
    task: str = "multilabel"

    def to_dict(self) -> dict:
        return {**{k: getattr(self, k) for k in self.__dataclass_fields__}, "output": str(self.output)}


def evaluate_multilabel(ckpt, checkpoint: str, data: Path | str, output: Path | None, *, tta: bool,
                        batch_size: int, device: str, console, engine: str) -> MultilabelEvaluation:
    """Score the multi-label `ckpt` (a Checkpoint or OnnxModel; `checkpoint` its path) on DATA's labels CSV."""
    names = ckpt.class_names
    rows = read_label_csv(data)
    if any(r.split for r in rows):
        rows = [r for r in rows if r.split == "val"]
    where = Path(label_list(data)[1:])
    output = Path(output) if output is not None else \
        Path(checkpoint).resolve().parent / f"eval-{Path(checkpoint).stem}-{where.parent.name}"
    for root in dataset_folders(label_list(data)) + [where.parent]:
        refuse_inside(output, root, "the output folder", DataError)
    if not rows:
        raise DataError(f"{where} has no val rows to evaluate on")
    unknown: dict[str, int] = {}
    for r in rows:
        for name in r.labels:
            if name not in names:
                unknown[name] = unknown.get(name, 0) + 1
    make_folder(output, "the output folder", DataError)
    results = predict(ckpt, [r.path for r in rows], batch_size=batch_size, device=device, tta=tta, raw=True,
                      console=console, engine=engine)
    scored = [(res, r) for res, r in zip(results, rows) if res.error is None]
    if not scored:
        raise DataError(f"none of the {len(rows)} images in {where} could be read")
    probs = sigmoid(np.array([res.logits for res, _ in scored], dtype=np.float64))
    targets = np.array([[float(n in r.labels) for n in names] for _, r in scored])
    thresholds = np.asarray(ckpt.thresholds)
    decided = probs >= thresholds
    mean_ap, ap = mean_average_precision(probs, targets)
    f1 = multilabel_f1(decided, targets)
    evaluation = MultilabelEvaluation(
        checkpoint=str(checkpoint), data=str(where), output=output, images=len(scored), classes=names,
        engine=engine, tta=tta, map=mean_ap, micro_f1=f1["micro_f1"], macro_f1=f1["macro_f1"],
        exact_match=float((decided == (targets > 0.5)).all(1).mean()),
        per_class=[{"class": n, "ap": None if np.isnan(ap[k]) else float(ap[k]), "threshold": float(thresholds[k]),
                    **{m: float(f1[m][k]) for m in ("precision", "recall", "f1")}, "support": int(f1["support"][k])}
                   for k, n in enumerate(names)],
        unknown_labels=unknown, unreadable=[{"path": res.path, "error": res.error} for res in results if res.error])
    files = {"per_class_csv": output / "per_class.csv", "predictions_csv": output / "predictions.csv",
             "report_json": output / "report.json"}
    _write_csv(files["per_class_csv"], [["class", "ap", "threshold", "precision", "recall", "f1", "support"],
                                        *([c["class"], "" if c["ap"] is None else f"{c['ap']:.6f}",
                                           f"{c['threshold']:.6f}", f"{c['precision']:.6f}", f"{c['recall']:.6f}",
                                           f"{c['f1']:.6f}", c["support"]] for c in evaluation.per_class),
                                        ["(all: mAP; macro-F1)", f"{mean_ap:.6f}", "", "", "",
                                         f"{f1['macro_f1']:.6f}", len(scored)],
                                        ["(all: micro-F1)", "", "", "", "", f"{f1['micro_f1']:.6f}", len(scored)]])
    _write_csv(files["predictions_csv"], [["path", "true", "predicted", *(f"prob_{n}" for n in names)],
                                          *([res.path, "|".join(r.labels), "|".join(t.label for t in res.top),
                                             *(f"{p:.6f}" for p in probs[i])] for i, (res, r) in enumerate(scored))])
    out = {k: str(v) for k, v in files.items()}
    evaluation = MultilabelEvaluation(**{**vars(evaluation), "files": out})
    atomic_write(files["report_json"], lambda f: f.write(json.dumps(evaluation.to_dict(), indent=2).encode()))
    return evaluation


def _write_csv(path: Path, rows) -> None:
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    atomic_write(path, lambda f: f.write(buf.getvalue().encode()))
