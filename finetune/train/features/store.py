"""The feature store: a folder of entries, one per key, each the frozen part's outputs for one split's images (or
for those of one input shard: `FeatureSet.joined` reads several as one).

An entry is `features.npy` (views x N x ..., fp16 where the values fit, memory-mapped when read), `labels.npy`
and `checksums.json` (CRC32 of both, written last). It is written into a temporary folder and renamed into
place, so a crash leaves no half-written entry; one whose arrays no longer match their checksums is damaged,
removed (it is ours, and only a cache) and computed again. The store never lives inside a dataset.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import zlib
from pathlib import Path

import numpy as np
import torch

from ...cache import cache_dir
from ...console import literal
from ...data.folders import dataset_folders
from ...data.images import PAD, PAD_LABEL
from ...errors import ConfigError
from ...files import pid_alive

ARRAYS, CHECKSUMS = ("features.npy", "labels.npy"), "checksums.json"
FP16_LIMIT = 1e4  # prefix outputs larger than this (random-init nets) are stored as fp32: fp16 tops out at 65504
SPARE_DISK = 2**30  # an entry is written only if it leaves this much free


class FeatureSet(torch.utils.data.Dataset):
    """Stored prefix outputs (views x N x ..., memory-mapped) and labels; item i of the current view."""

    def __init__(self, features: np.ndarray, labels: np.ndarray):
        self.features, self.labels, self.view = features, labels, 0

    @property
    def views(self) -> int:
        return self.features.shape[0]

    def __len__(self) -> int:
        return len(self.labels)

    @classmethod
    def joined(cls, parts: list[FeatureSet], rows: list[list[int]]) -> FeatureSet:
        """One set of several entries: row rows[p][r] is row r of parts[p]."""
        labels = np.empty(sum(len(r) for r in rows), dtype=np.int64)
        for part, where in zip(parts, rows):
            labels[where] = part.labels
        return cls(JoinedRows([p.features for p in parts], rows), labels)

    def __getitem__(self, item):
        i = item[0] if isinstance(item, tuple) else item  # training samplers yield (index, sample seed)
        if i == PAD:  # padding of a rank's last batch (data.sampling.EpochSampler.shard)
            return torch.zeros(self.features.shape[2:]), PAD_LABEL
        return torch.from_numpy(np.asarray(self.features[self.view, i], dtype=np.float32)), int(self.labels[i])


class JoinedRows:
    """Several entries' features (views x N_p x ...) read as one views x N x ... array: [v, i] is one image's,
    [v] one whole view (gathered), as from one entry's memory-mapped array."""

    def __init__(self, parts: list[np.ndarray], rows: list[list[int]]):
        self.parts, self.rows = parts, rows
        n = sum(len(r) for r in rows)
        self.where = np.empty((n, 2), dtype=np.int64)  # row i: (part, its row there)
        for p, where in enumerate(rows):
            self.where[where, 0], self.where[where, 1] = p, np.arange(len(where))
        self.shape, self.dtype = (parts[0].shape[0], n, *parts[0].shape[2:]), parts[0].dtype
        self.ndim = len(self.shape)

    def __getitem__(self, key):
        if isinstance(key, tuple):
            v, i = key
            p, r = self.where[i]
            return self.parts[p][v, r]
        out = np.empty(self.shape[1:], dtype=self.dtype)
        for part, where in zip(self.parts, self.rows):
            out[where] = part[key]
        return out


class DamagedEntry(Exception):
    """An entry whose files are missing, truncated or changed since they were written."""


class FeatureStore:
    """Entries under `root`, by key."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def prepare(self, clean: bool = True) -> str:
        """Make the folder and (with clean) clear what killed runs left half-written in it; "" when it can be
        written, else why not (the frozen part then runs every epoch instead)."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.root):
                pass
        except OSError as exc:
            return exc.strerror or str(exc)
        for tmp in self.root.glob(".*.*.*") if clean else []:  # .KEY.PID.XXXX from begin()
            parts = tmp.name.split(".")
            if tmp.is_dir() and len(parts) >= 4 and parts[2].isdigit() and not pid_alive(int(parts[2])):
                shutil.rmtree(tmp, ignore_errors=True)
        return ""

    def fits(self, items: int, layout: tuple) -> bool:
        """Whether `items` outputs of this (shape, dtype) fit in the free space, with SPARE_DISK to spare."""
        shape, dtype = layout
        need = items * math.prod(shape) * np.dtype(dtype).itemsize
        existing = next(p for p in (self.root, *self.root.parents) if p.exists())
        return need + SPARE_DISK < shutil.disk_usage(existing).free

    def load(self, key: str, what: str, console) -> FeatureSet | None:
        """The entry's features when stored and intact; a damaged entry is removed, with one warning."""
        folder = self.root / key
        if not folder.exists():
            return None
        try:
            return read_entry(folder)
        except DamagedEntry as why:
            console.print(f"[yellow]features: the cached {what} features in {literal(folder)} are damaged "
                          f"({literal(why)}); computing them again[/]", highlight=False, soft_wrap=True)
            shutil.rmtree(folder, ignore_errors=True)
            return None

    def begin(self, key: str, shape: tuple, dtype) -> Path:
        """A temporary folder holding the entry's features.npy, allocated (open_rows opens it, in any process)."""
        folder = self.root / key
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.{os.getpid()}.", dir=folder.parent))
        try:
            np.lib.format.open_memmap(tmp / "features.npy", mode="w+", dtype=dtype, shape=shape).flush()
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return tmp

    def finish(self, key: str, tmp: Path, labels: np.ndarray) -> FeatureSet:
        """The entry in `tmp` (features filled) with its labels and checksums, renamed into place."""
        folder = self.root / key
        try:
            np.save(tmp / "labels.npy", labels)
            # written last: an entry is trusted only when its arrays still match (read_entry)
            (tmp / CHECKSUMS).write_text(json.dumps({name: _crc32(tmp / name) for name in ARRAYS}))
            try:
                os.replace(tmp, folder)  # atomic: a crash leaves no half-written entry
            except OSError:  # another run finished the same entry first: theirs is as good as ours
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return read_entry(folder)


def open_rows(tmp: Path) -> np.ndarray:
    """The features.npy of an entry being written (FeatureStore.begin), memory-mapped for writing."""
    return np.lib.format.open_memmap(tmp / "features.npy", mode="r+")


def read_entry(folder: Path) -> FeatureSet:
    """An entry's features (memory-mapped) and labels, once their checksums match what was written last;
    DamagedEntry when they do not, or cannot be read at all."""
    try:
        expected = json.loads((folder / CHECKSUMS).read_text())
        if {name: _crc32(folder / name) for name in ARRAYS} != expected:
            raise DamagedEntry("its data does not match its checksum")
        return FeatureSet(np.load(folder / "features.npy", mmap_mode="r"), np.load(folder / "labels.npy"))
    except DamagedEntry:
        raise
    except (OSError, ValueError, TypeError, EOFError) as exc:  # missing, truncated, overwritten
        raise DamagedEntry(f"{type(exc).__name__}: {str(exc)[:120]}") from None


def storage_dtype(sample: torch.Tensor):
    """fp16 where the prefix's outputs fit it (half the disk and reads), else fp32."""
    return np.float16 if float(sample.abs().max()) < FP16_LIMIT else np.float32


def store_root(features_dir: Path | None, data_root: Path) -> Path:
    """features.dir, else the cache folder's features/; never inside the dataset."""
    if features_dir is not None:
        root = Path(features_dir).expanduser()
    else:
        root = cache_dir("features")
    for data in dataset_folders(data_root):
        data = Path(data).expanduser().resolve()
        if root.resolve() == data or data in root.resolve().parents:
            raise ConfigError(f"features.dir {root} is inside the dataset {data}; finetune never writes there. "
                              "Choose a folder outside it")
    return root


def _crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            crc = zlib.crc32(chunk, crc)
    return crc
