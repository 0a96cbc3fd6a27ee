"""WebDataset shards written from a dataset (`finetune shard DIR OUT`): the tar layout timm, OpenCLIP and most
large-scale vision training read.

Each image is three members of a plain tar that share a key: KEY.<ext> (the file's own bytes, never re-encoded),
KEY.cls (the class index) and KEY.json (class name and the path it came from). The split is the one training
makes (resolve_splits with the training screen: unreadable files, label conflicts and train copies of val images
are left out, and counted), and each split is shuffled once by the seed before it is cut into shards, so every
shard holds a mix of classes (streaming readers shuffle shards and a buffer, never the whole set). Members carry a
fixed owner, mode and time, so the same input and seed give byte-identical shards. Each shard is written to a
temporary file and renamed into place; dataset.json, written last, lists the classes and, per shard, its images,
per-class counts, bytes and sha256: a folder without it is an interrupted write.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import re
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from ..config.recipe import root_text
from ..errors import ConfigError, DataError
from ..files import atomic_write, file_sha256, make_folder, refuse_inside, write_text
from .folders import absolute_root, dataset_folders, is_packed_root, resolve_splits
from .lists import is_list_argument
from .shard_reader import INDEX, Shard, ShardSet

MTIME = 946_684_800  # 2000-01-01: every member's time, so a rerun writes the same bytes
SPLITS = ("train", "val")
SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
              "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


@dataclass(frozen=True)
class ShardLimit:
    """Where a shard ends: after this many images, or once it holds this many bytes of images (the one that
    makes it pass the size stays in it)."""
    images: int | None = None
    bytes: int | None = None

    def full(self, images: int, size: int) -> bool:
        return (self.images is not None and images >= self.images) or (self.bytes is not None and size >= self.bytes)


def parse_shard_size(text: str) -> ShardLimit:
    """--shard-size: a number of images (10000) or a size (1GB, 500MB, 2GiB)."""
    parts = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(text))
    unit = parts and parts.group(2).lower()
    if not parts or unit not in SIZE_UNITS or float(parts.group(1)) <= 0:
        raise ConfigError(f"--shard-size {text!r}: give a number of images (10000) or a size (1GB, 500MB)")
    if not parts.group(2):
        if "." in parts.group(1):
            raise ConfigError(f"--shard-size {text!r}: a number of images is a whole number")
        return ShardLimit(images=int(parts.group(1)))
    return ShardLimit(bytes=max(1, int(float(parts.group(1)) * SIZE_UNITS[unit])))


def write_shards(root: Path, out: Path, limit: ShardLimit, val_fraction: float, seed: int, console=None,
                 overwrite: bool = False) -> ShardSet:
    """Shards of `root` (an ImageFolder or @labels.csv) in `out` as train-000000.tar..., val-000000.tar...,
    and out/dataset.json. `out` must be new or empty, or (overwrite) hold an earlier shard set, which is replaced."""
    from .doctor import training_screen

    _webdataset()  # before the screen reads every file
    if is_packed_root(root):
        raise DataError(f"{root_text(root)} is already a dataset of its own format (shards, hf:): `finetune shard` "
                        "reads a folder of photos or an @list of them")
    if not 0 < val_fraction < 1:
        raise ConfigError(f"--val-fraction {val_fraction}: give a share of each class above 0 and below 1, e.g. 0.2")
    refuse_inside(out, dataset_folders(root), "the shard folder", error=DataError)
    _prepare(Path(out), overwrite)
    splits = resolve_splits(root, val_fraction, seed, screen=lambda tree: training_screen(tree, console, root))
    base = Path(str(root)[1:]).expanduser().parent if is_list_argument(root) else Path(root).expanduser()
    shards = ShardSet(splits.class_names, seed, val_fraction, str(absolute_root(root)), skipped=len(splits.skipped))
    rng = random.Random(seed)
    for split in SPLITS:
        samples = list(getattr(splits, split))
        rng.shuffle(samples)
        shards.splits[split] = _write_split(Path(out), split, samples, splits.class_names, base, limit, console)
    write_text(Path(out) / INDEX, json.dumps(asdict(shards), indent=2, ensure_ascii=False) + "\n")
    return shards


def _prepare(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} is a file; give a folder for the shards")
    present = sorted(out.iterdir()) if out.is_dir() else []
    if present:
        ours = [p for p in present if p.name == INDEX or re.fullmatch(r"(train|val)-\d{6}\.tar", p.name)]
        replaceable = (out / INDEX).is_file() and len(ours) == len(present)
        if not (overwrite and replaceable):
            why = "pass --overwrite to replace the shards in it" if replaceable else "give a new or empty folder"
            raise DataError(f"{out} is not empty ({len(present)} entries); {why}")
        (out / INDEX).unlink()  # first: a folder without it is an unfinished write, whatever happens next
        for p in ours:
            p.unlink(missing_ok=True)
    make_folder(out, "the shard folder", error=DataError)


def _write_split(out: Path, split: str, samples: list, classes: list[str], base: Path, limit: ShardLimit,
                 console) -> list[Shard]:
    """The split's shards, read and written one image at a time (memory holds one image, whatever the shard size);
    an empty split still gets one empty shard, so every split named in dataset.json has a file."""
    from ..console import track

    remaining = iter(track(samples, f"{split} shards", console))
    shards, start = [], 0
    while (first := next(remaining, None)) is not None or not shards:
        items = [] if first is None else itertools.chain([first], remaining)
        shards.append(_write_shard(out / f"{split}-{len(shards):06d}.tar", split, start, items, classes, base, limit))
        start += shards[-1].images
    return shards


def _write_shard(path: Path, split: str, start: int, items, classes: list[str], base: Path, limit: ShardLimit
                 ) -> Shard:
    """One shard: images from `items` until the limit. Keys are SPLIT + the image's place in the split
    (WebDataset groups members by the name before the first dot: a key made of file names could merge two)."""
    wds = _webdataset()
    counts, size = Counter(), 0

    def write(f):
        nonlocal size
        sink = wds.TarWriter(f, user="finetune", group="finetune", mode=0o444, mtime=MTIME)
        for i, (image, label) in enumerate(items, start):
            try:
                data = Path(image).read_bytes()
            except OSError as exc:
                raise DataError(f"cannot read {image} while sharding: {exc.strerror or exc}") from None
            sink.write({"__key__": f"{split}{i:09d}", Path(image).suffix.lower().lstrip(".") or "image": data,
                        "cls": label, "json": {"class": classes[label], "path": _relative(image, base)}})
            counts[classes[label]] += 1
            size += len(data)
            if limit.full(sum(counts.values()), size):
                break
        sink.close()

    atomic_write(path, write)
    return Shard(path.name, sum(counts.values()), path.stat().st_size, file_sha256(path),
                 {c: counts[c] for c in classes if counts[c]})


def _webdataset():
    try:
        import webdataset
    except ImportError:
        raise ConfigError("shards need webdataset, which is not installed: pip install 'finetune[shards]' "
                          "(or pip install webdataset)") from None
    return webdataset


def _relative(path: Path, base: Path) -> str:
    return os.path.relpath(os.path.abspath(path), os.path.abspath(base))
