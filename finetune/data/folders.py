"""An ImageFolder on disk: its class folders, its train/val split, and the files left out.

Nothing here writes under the dataset root.
"""

from __future__ import annotations

import itertools
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import DataError
from .hf import hf_folder, hf_root, hf_splits, is_hf_root
from .lists import LIST_PREFIX, is_list_argument, labelled_tree, read_path_list
from .multilabel import multilabel_splits
from .shard_fetch import remote_text
from .shard_reader import is_shard_root, shard_folder, shard_images, shard_splits
from .split import stratified_split

if TYPE_CHECKING:
    import numpy as np

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
VAL_FOLDERS = ("val", "valid", "validation")

Sample = tuple[Path, int]


@dataclass
class Splits:
    class_names: list[str]
    train: list[Sample]
    val: list[Sample]
    source: str  # "folders" (train/ + val/) or "split" (seeded stratified split)
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # files left out, with the reason
    targets: np.ndarray | None = None  # task multilabel: the multi-hot rows (N x K) the samples' ints index

    @property
    def multilabel(self) -> bool:
        return self.targets is not None

    def counts(self, which: str) -> dict[str, int]:
        """Images of each class (multilabel: images showing each label)."""
        if self.multilabel:
            rows = [i for _, i in getattr(self, which)]
            return dict(zip(self.class_names, map(int, self.targets[rows].sum(0)))) if rows else \
                {name: 0 for name in self.class_names}
        c = Counter(label for _, label in getattr(self, which))
        return {name: c.get(i, 0) for i, name in enumerate(self.class_names)}


def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def dataset_of(photo: Path) -> Path:
    """The folder a photo's dataset starts at, as far as its place says: ROOT/SPLIT/CLASS/photo, ROOT/CLASS/photo
    when every other folder beside CLASS holds images too, or else the photo's own folder."""
    folder, up = photo.parent, photo.parent.parent
    if up.name.lower() in ("train", "test", *VAL_FOLDERS):
        return up.parent
    try:
        others = [d for d in up.iterdir() if d.is_dir() and not d.name.startswith(".") and d != folder]
        classes = bool(others) and all(any(map(is_image_name, itertools.islice(d.iterdir(), 100))) for d in others)
    except OSError:
        return folder
    return up if classes else folder


def scan_classes(folder: Path, keep=is_image_name) -> dict[str, list[Path]]:
    """{class name: sorted paths kept by `keep` (image names by default)} for the class subfolders of
    `folder`, in sorted class order."""
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    # not only regular files: a FIFO, a broken link named like an image, or a link to a folder (which rglob does not
    # follow: it may loop) is reported by the file checks, not lost
    return {c: sorted(p for p in (folder / c).rglob("*") if (p.is_symlink() or not p.is_dir()) and keep(p))
            for c in classes}


def find_val_folder(root: Path) -> Path | None:
    return next((root / v for v in VAL_FOLDERS if (root / v).is_dir()), None)


def split_folders(root: Path) -> dict[str, Path]:
    """{"train": root/train, "val": root/val} when both exist, else {"all": root} (split at train time)."""
    val_dir = find_val_folder(root)
    if (root / "train").is_dir() and val_dir is not None:
        return {"train": root / "train", "val": val_dir}
    return {"all": root}


def is_packed_root(root) -> bool:
    """data.root names images packed in files of their own kind: WebDataset shards, an hf: dataset."""
    return is_shard_root(root) or is_hf_root(root)


def packed_images(root) -> list:
    """Every image of a packed root (predict), in the order it is stored (shard and offset; split and row)."""
    if is_shard_root(root):
        return shard_images(root)
    splits = packed_splits(root, 0.2, 0)
    return sorted(image for image, _ in splits.train + splits.val)


def packed_splits(root, val_fraction: float, seed: int) -> Splits:
    """The splits of shards or an hf: dataset, as stored (evaluate's val may come without a train split)."""
    return Splits(*(shard_splits if is_shard_root(root) else hf_splits)(root, val_fraction, seed))


def absolute_root(root: Path) -> Path:
    """data.root as a run records it, so report, evaluate and --resume find it from anywhere: an absolute folder,
    or @ and the list file's absolute path."""
    if is_hf_root(root):
        return Path(hf_root(root))
    if remote_text(root):
        return Path(remote_text(root))
    if is_list_argument(root):
        return Path(LIST_PREFIX + os.path.abspath(Path(str(root)[len(LIST_PREFIX):]).expanduser()))
    return Path(os.path.abspath(Path(root).expanduser()))


def dataset_folders(root: Path | None) -> list[Path]:
    """The folders finetune must never write into for data.root: the root, or for a `@list.csv` the dataset folder
    of every folder its images are in (`dataset_of`); none when there is no root or the list cannot be read."""
    if root is None:
        return []
    if is_shard_root(root):
        return [folder] if (folder := shard_folder(root)) else []
    if is_hf_root(root):
        return [folder] if (folder := hf_folder(root)) else []
    if not is_list_argument(root):
        return [Path(root)]
    try:
        listed = read_path_list(root)
    except DataError:
        return []
    first = {}
    for i in listed:
        first.setdefault(i.path.parent, i.path)
    return sorted({dataset_of(Path(os.path.abspath(p))) for p in first.values()})


def resolve_splits(root: Path | None, val_fraction: float, seed: int, screen=None, task: str = "multiclass"
                   ) -> Splits:
    """train/ + val/ (or valid/, validation/) when present, else a seeded split stratified by class. `root` may
    also be a `@list.csv` with path and label columns (lists.labelled_tree), split by its split column or the same
    way, or WebDataset shards (data.shard_reader: their samples are ShardMembers, not paths). task multilabel: a
    labels CSV (data.multilabel).

    screen(tree) -> {path: reason} names files to leave out (unreadable ones, label conflicts); `tree` is
    {split: {class: [paths]}} as scanned. They land in `skipped`.
    """
    if root is None:
        raise DataError("no dataset given: set data.root in the recipe or pass --data ROOT")
    if task == "multilabel":
        if is_packed_root(root):
            raise DataError(f"data.root {root}: task multilabel reads a labels CSV; shards and hf: datasets are read "
                            "with one class per image")
        return Splits(*multilabel_splits(root, val_fraction, seed, screen))
    if is_packed_root(root):  # shards are checked when written (finetune shard), and their index checks each
        splits = packed_splits(root, val_fraction, seed)
        _check(splits, root)
        return splits
    if is_list_argument(root):
        scanned, unmatched = labelled_tree(root), f"the val rows of {root} have classes with no train rows"
    else:
        root = Path(root).expanduser()
        if not root.is_dir():
            raise DataError(f"data root {root} is not a folder")
        scanned = {split: scan_classes(folder) for split, folder in split_folders(root).items()}
        unmatched = f"{find_val_folder(root)} has classes with no train/ folder"
    skipped = screen(scanned) if screen else {}
    for classes in scanned.values():
        for name in classes:
            classes[name] = [p for p in classes[name] if p not in skipped]
    if "val" in scanned:
        train, val = scanned["train"], scanned["val"]
        unknown = sorted(set(val) - set(train))
        if unknown:
            raise DataError(f"{unmatched}: {', '.join(unknown)}")
        names = sorted(train)
        splits = Splits(names, _label(train, names), _label(val, names), "folders")
    else:
        classes = scanned["all"]
        names = sorted(classes)
        train, val = stratified_split({label: classes[name] for label, name in enumerate(names)}, val_fraction, seed)
        splits = Splits(names, train, val, "split")
    splits.skipped = sorted(skipped.items())
    _check(splits, root)
    return splits


def _label(classes: dict[str, list[Path]], names: list[str]) -> list[Sample]:
    return [(p, names.index(c)) for c in names for p in classes.get(c, [])]


def _check(splits: Splits, root: Path) -> None:
    if len(splits.class_names) < 2:
        raise DataError(f"{root} needs at least two class folders with images in them "
                        f"(found {len(splits.class_names)}: {', '.join(splits.class_names) or 'none'}); "
                        "see data/README.md")
    empty = [n for n, c in splits.counts("train").items() if c == 0]
    if empty:
        left_out = (f" ({len(splits.skipped)} file(s) left out; run `finetune inspect {root}`)"
                    if splits.skipped else "")
        raise DataError(f"class folder(s) with no usable training images under {root}: {', '.join(empty)}{left_out}. "
                        "Add readable images or remove the folder")
    if not splits.val:
        raise DataError(f"no validation images under {root}: add a val/ folder or more images per class")
