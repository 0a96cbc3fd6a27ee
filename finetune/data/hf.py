"""Hugging Face datasets as data.root: `hf:SOURCE[:SPLIT]`, SOURCE a folder written by `save_to_disk`, a parquet
file or a folder of them (converted to Arrow once, in finetune's cache), or a dataset name on the Hub
(downloaded by `datasets` into its own cache).

The image column is the one of feature type Image (else one named image or img), the label column the ClassLabel
one (its names are the classes; else one named label or labels, of class numbers or names). The split is the
dataset's own train and validation (val, valid, test) splits; with SPLIT, or with a train split only, that split
is divided by data.val_fraction as a folder without val/ is. Rows are read as stored bytes (never decoded by
`datasets`) and decoded as files are (data.images.load_rgb), so they are the same pixels as the photos they were.
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from ..cache import cache_dir
from ..errors import ConfigError, DataError
from .packed import PackedImage
from .split import stratified_split

PREFIX = "hf:"
VAL_SPLITS = ("validation", "val", "valid", "test")


@dataclass(frozen=True, order=True)
class HFImage(PackedImage):
    """Row `row` of split `split` of a dataset (its `column`)."""
    source: str  # as given after hf:, made absolute when it is a local path
    split: str
    row: int
    column: str
    version: str = ""  # of the split's content (_version)

    def read_bytes(self) -> bytes:
        value = _table(self.source, self.split, self.column)[self.row][self.column]
        if value.get("bytes") is not None:
            return value["bytes"]
        if value.get("path"):
            return Path(value["path"]).read_bytes()
        raise DataError(f"{self} holds no image")

    def stamp(self) -> tuple[str, int, int]:
        return f"{self}@{self.version}", 0, 0

    @property
    def folder(self) -> Path | None:
        return _local(self.source)

    def __str__(self) -> str:
        return f"{PREFIX}{self.source}:{self.split}#{self.row}"


def is_hf_root(root) -> bool:
    return root is not None and str(root).startswith(PREFIX)


def hf_root(root) -> str:
    """data.root as a run records it: hf: and the absolute path of a local source."""
    source, split = _parse(root)
    local = _local(source)
    return PREFIX + (str(local) if local else source) + (f":{split}" if split else "")


def hf_folder(root) -> Path | None:
    return _local(_parse(root)[0])


def hf_splits(root, val_fraction: float, seed: int):
    """(class names, train samples, val samples, source) of an hf: root, as data.folders.Splits takes them."""
    source, split = _parse(root)
    splits = _open(source)
    if split is not None and split not in splits:
        raise DataError(f"{root}: no split {split!r}; it has {', '.join(splits)}")
    names = [split] if split else list(splits)
    train_name = split or ("train" if "train" in names else names[0])
    val_name = None if split else next((n for n in VAL_SPLITS if n in names), None)
    image, label, classes = _columns(splits[train_name], root)
    train = _samples(splits[train_name], source, train_name, image, label, classes)
    if val_name is not None:
        return classes, train, _samples(splits[val_name], source, val_name, image, label, classes), "hf"
    by_class: dict[int, list] = {}
    for sample, number in train:
        by_class.setdefault(number, []).append(sample)
    train, val = stratified_split(by_class, val_fraction, seed)  # HFImages order by split and row
    return classes, train, val, "hf"


def hf_image_at(text: str) -> HFImage:
    """The HFImage that hf:SOURCE:SPLIT#ROW (its str) names."""
    head, _, row = text.rpartition("#")
    source, _, split = head[len(PREFIX):].rpartition(":")
    table = _open(source)[split]
    return HFImage(source, split, int(row), _columns(table, text)[0], _version(table))


def _parse(root) -> tuple[str, str | None]:
    """(source, split or None) of hf:SOURCE[:SPLIT]; a local path's : is part of it only when it exists as a path."""
    text = str(root)[len(PREFIX):]
    if not text:
        raise ConfigError("data.root hf: needs a dataset: hf:PATH_OR_NAME[:split]")
    head, sep, tail = text.rpartition(":")
    if sep and head and "/" not in tail and not Path(text).expanduser().exists():
        return head, tail
    return text, None


def _local(source: str) -> Path | None:
    path = Path(source).expanduser()
    return Path(os.path.abspath(path)) if path.exists() else None


def _datasets():
    try:
        import datasets
    except ImportError:
        raise ConfigError("data.root hf: needs the Hugging Face datasets library: pip install 'finetune[hf]' "
                          "(or pip install datasets)") from None
    return datasets


@functools.lru_cache(maxsize=8)
def _open(source: str) -> dict:
    """{split: Dataset} of a source: a save_to_disk folder, parquet files, or a Hub name. Cached per process: a
    DataLoader worker opens it once (the Arrow files are memory-mapped, not read into memory)."""
    datasets = _datasets()
    local = _local(source)
    try:
        if local is not None and (local.is_file() or not any(local.glob("*.json"))):  # parquet files
            files = [str(local)] if local.is_file() else sorted(map(str, local.rglob("*.parquet")))
            if not files:
                raise DataError(f"hf:{source}: neither a save_to_disk folder nor parquet files")
            loaded = datasets.load_dataset("parquet", data_files={"train": files}, cache_dir=str(cache_dir("hf")))
        elif local is not None:
            loaded = datasets.load_from_disk(str(local))
        else:
            loaded = datasets.load_dataset(source)  # the Hub: into datasets' own cache
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise DataError(f"hf:{source} cannot be opened: {exc}") from None
    if isinstance(loaded, datasets.Dataset):
        loaded = {"train": loaded}
    return dict(loaded)


@functools.lru_cache(maxsize=8)
def _table(source: str, split: str, column: str):
    """The split with its image column left as stored bytes (datasets would decode it with its own rules)."""
    datasets = _datasets()
    return _open(source)[split].cast_column(column, datasets.Image(decode=False))


def _columns(table, root) -> tuple[str, str, list[str]]:
    """(image column, label column, class names) of a split."""
    datasets = _datasets()
    features = table.features
    image = next((c for c, f in features.items() if isinstance(f, datasets.Image)), None) or \
        next((c for c in ("image", "img") if c in features), None)
    label = next((c for c, f in features.items() if isinstance(f, datasets.ClassLabel)), None) or \
        next((c for c in ("label", "labels") if c in features), None)
    if image is None or label is None:
        raise DataError(f"{root}: needs an image column and a label column (found {', '.join(features)})")
    if isinstance(features[label], datasets.ClassLabel):
        return image, label, list(features[label].names)
    values = sorted(set(table[label]))
    return image, label, [str(v) for v in values]


def _samples(table, source: str, split: str, image: str, label: str, classes: list[str]) -> list:
    datasets = _datasets()
    source, values = str(_local(source) or source), table[label]
    if not isinstance(table.features[label], datasets.ClassLabel):  # numbers or names: the train split's classes
        known = {c: i for i, c in enumerate(classes)}
        values = [known.get(str(v), -1) for v in values]
    unknown = next((i for i, v in enumerate(values) if not 0 <= v < len(classes)), None)
    if unknown is not None:
        raise DataError(f"hf:{source}:{split} row {unknown}: label {table[label][unknown]!r} is not one of the "
                        f"classes of its train split ({', '.join(classes)})")
    version = _version(table)
    return [(HFImage(source, split, i, image, version), int(v)) for i, v in enumerate(values)]


def _version(table) -> str:
    """What changes when a split's content does: its Arrow files' names, sizes and mtimes."""
    stamps = []
    for entry in table.cache_files:
        st = os.stat(entry["filename"])
        stamps.append(f"{entry['filename']}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("|".join(stamps).encode()).hexdigest()[:16]
