"""Multi-label data (task: multilabel): a CSV with a `path` column and a `labels` column, several labels in a cell
separated by `|` or `;` ("red|striped"), an optional `split` column (train / val) as for `@list.csv`
(data.lists). Given as `@labels.csv`, or as a folder of images that holds `labels.csv`; relative paths are taken
relative to the CSV's folder (data.lists).

An empty `labels` cell is an image that shows none of the labels (all its targets 0): in multi-label sets such
negatives are ordinary ("no defect", "none of these tags") and dropping them would teach the model that every
image has a label. A missing `labels` column, or an empty label between separators ("red||striped"), is a
mistake and said so.

A sample's int in `Splits.train` / `Splits.val` is its row of `Splits.targets` (multi-hot, float32): train rows
first, then val. Everything that carries an int label (the feature store, padding and unreadable images as
negative labels, the seeded data order, data-parallel shards) carries multi-label samples unchanged; the loss
(train.multilabel) looks the targets up.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError
from .lists import LIST_PREFIX, is_list_argument, read_path_list

LABELS_FILE = "labels.csv"  # what a folder given as data.root holds
SEPARATOR = re.compile(r"[|;]")


@dataclass(frozen=True)
class LabelledImage:
    path: Path
    labels: tuple[str, ...]  # none: a negative for every label
    split: str | None = None  # train or val, from the split column


def label_list(root: Path | str) -> str:
    """The `@labels.csv` that data.root names: itself, or a folder's labels.csv."""
    if is_list_argument(root):
        return str(root)
    folder = Path(root).expanduser()
    if folder.is_dir() and (folder / LABELS_FILE).is_file():
        return LIST_PREFIX + str(folder / LABELS_FILE)
    raise DataError(f"task multilabel reads its labels from a CSV (path and labels columns): give data.root "
                    f"@labels.csv, or a folder holding {LABELS_FILE}; {folder} is neither")


def parse_labels(cell: str, where: str, line: int) -> tuple[str, ...]:
    """The labels of one `labels` cell: split on | or ;, stripped, repeats dropped; empty cell: none."""
    if not cell.strip():
        return ()
    names = [name.strip() for name in SEPARATOR.split(cell)]
    if not all(names):
        raise DataError(f"list {where} line {line}: an empty label in {cell!r}; separate labels with | or ; "
                        "(e.g. red|striped), nothing between two separators")
    return tuple(dict.fromkeys(names))


def read_label_csv(root: Path | str) -> list[LabelledImage]:
    """The rows of the labels CSV of data.root, checked: a labels column, labels well formed, a split on every row
    or none, no path twice."""
    item = label_list(root)
    where = item[len(LIST_PREFIX):]
    if Path(where).suffix.lower() != ".csv":
        raise DataError(f"list {where} is not a .csv: task multilabel needs a CSV with path and labels columns")
    listed = read_path_list(item)
    if listed[0].labels is None:
        raise DataError(f"list {where} has no 'labels' column; task multilabel needs one (labels separated by | or "
                        "; , empty for an image with none)")
    rows = [LabelledImage(i.path, parse_labels(i.labels, where, n), i.split) for n, i in enumerate(listed, 2)]
    splits = {r.split for r in rows}
    if splits != {None} and None in splits:
        line = next(n for n, r in enumerate(rows, 2) if r.split is None)
        raise DataError(f"list {where} line {line} has no split; fill the split column in on every row (train or "
                        "val) or leave the column out to split at train time")
    first: dict[Path, int] = {}
    for n, r in enumerate(rows, 2):
        if r.path in first:
            raise DataError(f"list {where} line {n} repeats the image of line {first[r.path]} ({r.path}); give "
                            "each image once, with all its labels in one cell")
        first[r.path] = n
    return rows


def multilabel_splits(root: Path | str, val_fraction: float, seed: int, screen=None) -> tuple:
    """What data.folders.Splits is made of for a multi-label CSV, in its field order (class names, train, val,
    source, skipped, targets): by its split column, else a seeded random share of `val_fraction` held out
    (not stratified: an image has several labels). `screen(tree)` as for folders.resolve_splits, the tree
    {split: {"images": paths}}. Every label needs a train image; one without val images has no AP (left out of
    the mAP, and said so by evaluate)."""
    import numpy as np  # here: the command line reads this module before it needs numpy

    rows = read_label_csv(root)
    where = label_list(root)[len(LIST_PREFIX):]
    tree: dict[str, dict[str, list[Path]]] = {}
    for r in rows:
        tree.setdefault(r.split or "all", {}).setdefault("images", []).append(r.path)
    skipped = screen(tree) if screen else {}
    rows = [r for r in rows if r.path not in skipped]
    names = sorted({name for r in rows for name in r.labels})
    if len(names) < 2:
        raise DataError(f"list {where} needs at least two labels among its readable images (found "
                        f"{len(names)}: {', '.join(names) or 'none'})")
    if any(r.split for r in rows):
        train, val = [r for r in rows if r.split == "train"], [r for r in rows if r.split == "val"]
    else:
        order = list(range(len(rows)))
        random.Random(seed).shuffle(order)
        n_val = max(1, round(len(rows) * val_fraction)) if len(rows) > 1 else 0
        held = set(order[:n_val])
        train = [r for i, r in enumerate(rows) if i not in held]
        val = [r for i, r in enumerate(rows) if i in held]
    if not val:
        raise DataError(f"no validation images in {where}: add val rows (split column) or more images")
    unseen = [n for n in names if not any(n in r.labels for r in train)]
    if unseen:
        raise DataError(f"label(s) with no training image in {where}: {', '.join(unseen)}; add train images with "
                        "them or remove them from the val rows")
    targets = np.zeros((len(train) + len(val), len(names)), dtype=np.float32)
    for i, r in enumerate(train + val):
        targets[i, [names.index(n) for n in r.labels]] = 1.0
    return (names, [(r.path, i) for i, r in enumerate(train)], [(r.path, len(train) + j) for j, r in enumerate(val)],
            "folders" if val[0].split else "split", sorted(skipped.items()), targets)
