"""Lists of image paths people already have: `@list.txt` (one path per line) or `@list.csv` (a `path` column,
and for evaluate an optional `label` column), given to predict and evaluate instead of folders; a `@list.csv`
whose every row has a label is a dataset to train on (data.root: "@labels.csv"), split by its optional `split`
column (train / val) or else as a folder of class folders would be.

Paths are taken literally (no globbing: names may hold `*` or `[`), relative ones relative to the list
file's folder. A listed file that does not exist is kept and reported by predict like any unreadable image,
never dropped: a stale line in a list is something to see.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError

LIST_PREFIX = "@"
MAX_LIST_BYTES = 256 << 20  # ~2 million paths; more is not a list someone keeps by hand


@dataclass(frozen=True)
class ListedImage:
    path: Path
    label: str | None  # the CSV's `label` column, when it has one
    split: str | None = None  # the CSV's `split` column: train or val (valid, validation), when it has one
    labels: str | None = None  # the CSV's `labels` cell as written ("" when empty), None without that column


def is_list_argument(item: str | Path) -> bool:
    """`@something`: a list file. A file whose name really starts with @ is given as ./@name."""
    return str(item).startswith(LIST_PREFIX) and len(str(item)) > 1


def read_path_list(item: str | Path) -> list[ListedImage]:
    """The images of the list file `@PATH`: one path per line (blank lines and lines starting with # skipped),
    or, for a .csv file, the `path` column (and `label`, if present) of a CSV with a header row."""
    path = Path(str(item)[len(LIST_PREFIX):]).expanduser()
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise DataError(f"list {item}: {path} is not a file (a list is a .txt with one path per line, or a .csv "
                            "with a path column)")
        if size > MAX_LIST_BYTES:
            raise DataError(f"list {item} is {size / 2**20:.0f} MiB; split it into lists of under "
                            f"{MAX_LIST_BYTES >> 20} MiB")
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"no such list file: {path} (from {item}; a list is a .txt with one path per line, "
                        "or a .csv with a path column)") from None
    except OSError as exc:
        raise DataError(f"cannot read list {path}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"list {path} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
                        "save it as UTF-8") from None
    base = path.parent
    if path.suffix.lower() == ".csv":
        rows = _csv_rows(text, path)
    else:
        rows = [(line.strip(), None, None, None) for line in text.splitlines()
                if line.strip() and not line.startswith("#")]
    if not rows:
        raise DataError(f"list {path} names no images")
    return [ListedImage(_resolve(p, base), label, split, labels) for p, label, split, labels in rows]


def labelled_tree(item: str | Path) -> dict[str, dict[str, list[Path]]]:
    """The `@list.csv` to train on as folders would be scanned: {"train": {class: paths}, "val": {...}} when it has
    a `split` column, else {"all": {class: paths}} (split at train time); classes and paths sorted."""
    where = str(item)[len(LIST_PREFIX):]
    if Path(where).suffix.lower() != ".csv":
        raise DataError(f"list {where} is not a .csv: to train on a list, give a CSV with path and label columns "
                        "(and optionally split: train or val)")
    listed = read_path_list(item)
    unlabelled = next((n for n, i in enumerate(listed, 2) if i.label is None), None)
    if unlabelled is not None:
        several = " (its labels column: several labels per image need task: multilabel)" \
            if listed[unlabelled - 2].labels is not None else ""
        raise DataError(f"list {where} line {unlabelled} has no label{several}; to train on a list, give every row a "
                        "label (a CSV with path and label columns)")
    splits = {i.split for i in listed}
    if splits != {None} and None in splits:
        line = next(n for n, i in enumerate(listed, 2) if i.split is None)
        raise DataError(f"list {where} line {line} has no split; fill the split column in on every row (train or "
                        "val) or leave the column out to split at train time")
    tree: dict[str, dict[str, list[Path]]] = {}
    for i in listed:
        tree.setdefault(i.split or "all", {}).setdefault(i.label, []).append(i.path)
    if splits != {None} and set(tree) != {"train", "val"}:
        raise DataError(f"list {where} needs rows of both splits, train and val (it has {', '.join(sorted(tree))})")
    return {split: {c: sorted(tree[split][c]) for c in sorted(tree[split])} for split in sorted(tree)}


SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val"}


def _csv_rows(text: str, path: Path) -> list[tuple[str, str | None, str | None, str | None]]:
    reader = csv.DictReader(io.StringIO(text))
    fields = [f.strip() for f in (reader.fieldnames or [])]
    if "path" not in fields:
        raise DataError(f"list {path} is a CSV without a 'path' column (its header: {', '.join(fields) or 'empty'}); "
                        "name the column of image paths 'path'")
    reader.fieldnames = fields
    rows = []
    for number, row in enumerate(reader, 2):
        value = (row.get("path") or "").strip()
        if not value:
            raise DataError(f"list {path} line {number}: the path is empty")
        label, split = (_cell(row, key) for key in ("label", "split"))
        if split is not None and split.lower() not in SPLIT_NAMES:
            raise DataError(f"list {path} line {number}: split {split!r} is not train or val")
        labels = (row.get("labels") or "").strip() if "labels" in fields else None  # multi-label (data.multilabel)
        rows.append((value, label, SPLIT_NAMES[split.lower()] if split else None, labels))
    return rows


def _cell(row: dict, key: str) -> str | None:
    value = row.get(key)
    return value.strip() if isinstance(value, str) and value.strip() else None


def _resolve(text: str, base: Path) -> Path:
    p = Path(text).expanduser()
    return p if p.is_absolute() else base / p
