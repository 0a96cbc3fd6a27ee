"""The dataset doctor: inspect an ImageFolder and report every finding with a path and a kind.

It reads (and caches, outside the dataset) per-file checks from `filecheck`, then looks across files:
duplicates, label conflicts, train/val leakage, empty or single classes, names, imbalance. It never
modifies, moves or re-saves anything under the root.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..config.recipe import root_text
from ..errors import DataError
from .filecheck import SMALL_SIDE, check_files
from .folders import is_image_name, scan_classes, split_folders
from .shard_reader import is_shard_root

IMBALANCE_WARN = 3.0  # largest / smallest class; above this the loss or the sampler should compensate

# kind -> (severity, what it means for training). Errors block `inspect --strict`; unreadable files
# are left out of training, odd-but-usable ones are used as described.
KINDS = {
    "empty-file": ("error", "left out of training"),
    "truncated": ("error", "the file ends early; left out of training"),
    "corrupt": ("error", "the data cannot be decoded; left out of training"),
    "not-image": ("error", "left out of training"),
    "too-large": ("error", "decompression-bomb sized; not decoded, left out of training"),
    "unreadable": ("error", "cannot be read; left out of training"),
    "ignored-extension": ("warning", ""),
    "extension-mismatch": ("warning", "content does not match the extension; read by content, used"),
    "animated": ("warning", "animated; only the first frame is used"),
    "small": ("warning", f"under {SMALL_SIDE} px on a side; upscaled a lot, check it is not a thumbnail"),
    "grayscale": ("info", "grayscale; used as RGB"),
    "transparency": ("info", "transparent pixels; composited on white"),
    "cmyk": ("info", "CMYK; converted to RGB"),
    "16-bit": ("info", "16 bits per channel; scaled to 8-bit"),
    "exif-rotated": ("info", "EXIF orientation; rotated upright when loaded"),
    "placeholder": ("warning", "only a handful of colours: a graphic or an 'image not found' placeholder, "
                               "not a photo? Remove it if so; training uses it"),
    "trailing-data": ("info", "extra bytes after the end of the image; ignored"),
    "duplicate": ("warning", ""),
    "label-conflict": ("error", ""),
    "leakage": ("error", ""),
    "empty-class": ("error", ""),
    "no-val-images": ("warning", ""),
    "unknown-val-class": ("error", ""),
    "single-class": ("error", ""),
    "class-name": ("info", ""),
    "imbalance": ("warning", ""),
}
SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}


@dataclass
class Finding:
    kind: str
    path: str
    message: str
    related: list[str] = field(default_factory=list)  # the other copies of a duplicate
    severity: str = ""  # error | warning | info; the kind's own unless said otherwise

    def __post_init__(self):
        self.severity = self.severity or KINDS[self.kind][0]

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Report:
    root: str
    layout: str  # "folders" (train/ + val/) or "split" (class folders, split at train time)
    counts: dict[str, dict[str, int]]  # split -> class -> usable images
    files: int
    findings: list[Finding]
    seconds: float
    imbalance: float | None = None  # largest / smallest class among training classes with usable images

    @property
    def blocking(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    def to_dict(self) -> dict:
        return {"root": self.root, "layout": self.layout, "counts": self.counts, "imbalance": self.imbalance,
                "files": self.files, "seconds": round(self.seconds, 3), "blocking": len(self.blocking),
                "findings": [f.to_dict() for f in self.findings]}


def inspect_dataset(root: Path, console=None) -> Report:
    """Scan ROOT (train/ + val/, or class folders) and report what training would trip over."""
    start = time.perf_counter()
    if is_shard_root(root):
        raise DataError(f"{root_text(root)} holds shards: `finetune shard` checked their images as it wrote them "
                        "(dataset.json counts those it left out), and training checks each shard against it; inspect "
                        "the folder the shards were made from")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"data root {root} is not a folder")
    folders = split_folders(root)
    tree = {split: scan_classes(folder, keep=lambda p: True) for split, folder in folders.items()}
    paths = [p for classes in tree.values() for files in classes.values() for p in files]
    checks = check_files(paths, console, label="inspecting", root=root)
    findings: list[Finding] = []
    for p in paths:
        c = checks[p]
        if c.problem:
            meaning = KINDS[c.problem][1]
            # a file training never looks at (.txt, .DS_Store, Thumbs.db, ._photo.jpg, a FIFO or a link to a folder
            # not named like an image) cannot hurt it: not blocking
            severity = "warning" if not is_image_name(p) else ""
            message = f"{c.detail}; {meaning}" if meaning and not severity else c.detail
            findings.append(Finding(c.problem, str(p), message, severity=severity))
        findings += [Finding(flag, str(p), f"{c.detail}: {KINDS[flag][1]}") for flag in c.flags]
    counts = {split: {name: sum(checks[p].usable for p in files) for name, files in classes.items()}
              for split, classes in tree.items()}
    findings += _class_findings(counts, folders)
    findings += _duplicates(tree, checks, multi_split=len(folders) > 1)
    findings.sort(key=lambda f: (SEVERITY_ORDER[f.severity], f.kind, f.path))
    train = [n for n in counts.get("train", counts.get("all", {})).values() if n]
    return Report(str(root), "folders" if "val" in folders else "split", counts, len(paths), findings,
                  time.perf_counter() - start, round(max(train) / min(train), 2) if train else None)


def training_screen(tree: dict[str, dict[str, list[Path]]], console=None, root: Path | None = None
                     ) -> dict[Path, str]:
    """{path: 'kind: detail'} for the files training leaves out (what resolve_splits' screen returns): those that
    cannot be read, both copies of a label conflict (the same bytes in two classes: which label is right?), and
    the train copy of an image that is also in val (it would inflate validation accuracy)."""
    paths = [p for classes in tree.values() for files in classes.values() for p in files]
    checks = check_files(paths, console, root=root)
    out = {p: f"{c.problem}: {c.detail}" for p, c in checks.items() if not c.usable}
    for f in _duplicates(tree, checks, multi_split=len(tree) > 1):
        if f.kind == "label-conflict":
            out[Path(f.path)] = out[Path(f.related[0])] = f"label-conflict: the same image as {f.related[0]} / {f.path}"
        elif f.kind == "leakage":
            out[Path(f.related[0])] = f"leakage: the same image is in val as {f.path}"
    return out


def _class_findings(counts: dict[str, dict[str, int]], folders: dict[str, Path]) -> list[Finding]:
    out = []
    train = counts.get("train", counts.get("all", {}))
    train_key = "train" if "train" in counts else "all"
    for name, n in train.items():
        if n == 0:
            out.append(Finding("empty-class", str(folders[train_key] / name),
                               f"class {name!r} has no usable images; add some or remove the folder"))
        if " " in name or not name.isascii():
            out.append(Finding("class-name", str(folders[train_key] / name),
                               f"class name {name!r} has spaces or non-ASCII characters (works; shown as is)"))
    for name, n in counts.get("val", {}).items():
        if name not in train:
            out.append(Finding("unknown-val-class", str(folders["val"] / name),
                               f"val class {name!r} has no train folder; add train/{name} or remove it"))
        elif n == 0:
            out.append(Finding("no-val-images", str(folders["val"] / name), f"class {name!r} has no usable val images"))
    if "val" in counts:
        for name in sorted(set(train) - set(counts["val"])):
            out.append(Finding("no-val-images", str(folders["train"] / name), f"class {name!r} has no val folder"))
    usable = {name: n for name, n in train.items() if n > 0}
    if len(usable) < 2:
        out.append(Finding("single-class", str(folders[train_key]),
                           f"{len(usable)} class(es) with usable images ({', '.join(usable) or 'none'}); "
                           "training needs at least two class folders"))
    elif max(usable.values()) / min(usable.values()) > IMBALANCE_WARN:
        big, small = max(usable, key=usable.get), min(usable, key=usable.get)
        out.append(Finding("imbalance", str(folders[train_key]),
                           f"largest/smallest class {usable[big] / usable[small]:.1f}x ({big} {usable[big]}, "
                           f"{small} {usable[small]}); consider data.class_weights: auto or data.sampler: balanced"))
    return out


def _duplicates(tree: dict[str, dict[str, list[Path]]], checks, multi_split: bool) -> list[Finding]:
    """Exact copies by content hash. Each copy after the first (train before val) gets one finding:
    leakage when it sits in another split, label-conflict in another class, else duplicate."""
    groups = defaultdict(list)
    for split, classes in tree.items():
        for name, files in classes.items():
            for p in files:
                if checks[p].usable:
                    groups[checks[p].digest].append((split, name, p))
    out = []
    for copies in groups.values():
        (split0, name0, first), *rest = copies
        for split, name, p in rest:
            if split != split0:
                kind = "leakage"
                what = f"the same image is in {split0} ({name0}) and {split} ({name}): it inflates validation accuracy"
            elif name != name0:
                kind, what = "label-conflict", f"the same image is labelled {name0!r} and {name!r}"
            else:
                kind = "duplicate"
                what = "an exact copy in the same class" + ("" if multi_split else
                                                            "; the split may put the copies in both train and val")
            out.append(Finding(kind, str(p), f"{what}; keep one", [str(first)]))
    return out


def print_report(report: Report, console) -> None:
    """The table form, for people."""
    from rich.table import Table

    from ..console import literal

    splits = list(report.counts)
    classes = sorted({c for per in report.counts.values() for c in per})
    layout = "train/ and val/ folders" if report.layout == "folders" else "class folders (split at train time)"
    console.print(f"[bold]{literal(report.root)}[/]: {len(classes)} classes, {layout}", highlight=False)
    table = Table("class", *splits, title="usable images per class")
    for c in classes:
        table.add_row(literal(c), *[str(report.counts[s].get(c, "-")) for s in splits])
    console.print(table)
    if report.findings:
        colors = {"error": "red", "warning": "yellow", "info": "blue"}
        found = Table("severity", "kind", title=f"findings (paths under {literal(report.root)})")
        found.add_column("path", overflow="fold", ratio=1)
        found.add_column("finding", ratio=2)
        for f in report.findings:
            related = f" (copy of {', '.join(_short(r, report.root) for r in f.related)})" if f.related else ""
            found.add_row(f"[{colors[f.severity]}]{f.severity}[/]", f.kind, literal(_short(f.path, report.root)),
                          literal(f.message + related))
        console.print(found)
    tally = {s: sum(f.severity == s for f in report.findings) for s in SEVERITY_ORDER}
    ratio = f"imbalance (largest/smallest class) {report.imbalance}x; " if report.imbalance else ""
    console.print(f"{ratio}{report.files} files checked in {report.seconds:.2f}s: {tally['error']} error(s), "
                  f"{tally['warning']} warning(s), {tally['info']} note(s)", highlight=False)


def _short(path: str, root: str) -> str:
    try:
        return str(Path(path).relative_to(root)) or "."
    except ValueError:
        return path
