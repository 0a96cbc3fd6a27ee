"""WebDataset shards as a dataset to train on: data.root is a `finetune shard` folder (it holds dataset.json), one
.tar, or a brace pattern of tars (/data/train-{000000..000099}.tar); or the same behind a URL (a set's URL, a
URL pattern, `pipe:COMMAND`), whose shards are fetched once into the cache (data.shard_fetch) and then read as
local ones. A set's dataset.json is fetched each time, and a shard again when its size there changes; shards named
by a pattern are taken as immutable, read from the cache once fetched.

Each tar is indexed once: its headers are read (the images' bytes are skipped, never decoded) with the small .cls
and .json members, and the index is kept in the per-file results cache, trusted while the shard's size and mtime
stay the same. The first indexing checks the shard against the size and sha256 dataset.json lists. Samples are
`ShardMember`s: a loader reads one image's bytes at its offset in its shard (random access, as webdataset's indexed
`wids` reader does), so every part of a run works on shards as on files: the seeded resumable order, data
parallel, the feature cache, evaluate.

The order is the ImageFolder's: class by class, by the path each image came from (the .json member `finetune
shard` writes), so a run on the shards of a folder trains on the same images in the same order as the run on the
folder. Shards without .json members keep their order within each class; without a dataset.json the classes are
the .cls numbers and the images are split by data.val_fraction as a folder without val/ is.
"""

from __future__ import annotations

import json
import os
import re
import tarfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ..errors import ConfigError, DataError
from .packed import PackedImage
from .shard_fetch import cache_folder, fetch, local_names, remote_text
from .split import stratified_split

INDEX = "dataset.json"  # what `finetune shard` writes last: the classes and each split's shards
FORMAT = "finetune-shards/1"
IMAGE_EXTENSIONS = {"jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "ppm", "pgm"}  # a member's image
INDEX_VERSION = "1"  # of the per-shard index in the results cache


@dataclass(frozen=True, order=True)
class ShardMember(PackedImage):
    """One image in a shard: where its bytes are. Stands where a file's path does in a sample (path, label)."""
    shard: str  # the tar's absolute path
    offset: int  # of the image's bytes
    size: int
    name: str  # the tar member's name, KEY.ext
    source: str = ""  # the path it was sharded from (its .json), "" when the shard does not say

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.name).suffix

    def read_bytes(self) -> bytes:
        with open(self.shard, "rb") as f:
            f.seek(self.offset)
            data = f.read(self.size)
        if len(data) != self.size:
            raise DataError(f"{self} is cut short: the shard is truncated")
        return data

    def stamp(self) -> tuple[str, int, int]:
        """(identity, size, mtime_ns) for cache keys: the member within its shard, and the shard's size and mtime."""
        st = os.stat(self.shard)
        return f"{self}@{self.offset}", st.st_size, st.st_mtime_ns

    @property
    def folder(self) -> Path:
        return Path(self.shard).parent

    def __str__(self) -> str:
        return f"{self.shard}#{self.name}"


@dataclass
class Shard:
    name: str
    images: int
    bytes: int
    sha256: str
    counts: dict[str, int]


@dataclass
class ShardSet:
    """What dataset.json says: the classes, and each split's shards."""
    classes: list[str]
    seed: int
    val_fraction: float
    source: str
    splits: dict[str, list[Shard]] = field(default_factory=dict)
    skipped: int = 0
    format: str = FORMAT

    def images(self, split: str) -> int:
        return sum(s.images for s in self.splits.get(split, []))

    def by_name(self) -> dict[str, Shard]:
        """Every shard of every split, by file name."""
        return {s.name: s for split in self.splits.values() for s in split}


def read_shard_set(folder: Path) -> ShardSet:
    """The dataset.json of a shard folder."""
    path = Path(folder) / INDEX
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if raw.get("format") != FORMAT:
            raise ValueError(f"format {raw.get('format')!r}, expected {FORMAT}")
        raw["splits"] = {k: [Shard(**s) for s in v] for k, v in raw["splits"].items()}
        return ShardSet(**raw)
    except FileNotFoundError:
        raise DataError(f"{folder} has no {INDEX}: not a finished `finetune shard` folder") from None
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None


def is_shard_root(root) -> bool:
    """data.root names shards: a folder with dataset.json, a .tar file, or a pattern/URL of .tar files."""
    if root is None:
        return False
    if remote_text(root):
        return True
    text = str(root)
    if "{" in text and ".tar" in text:
        return True
    path = Path(text).expanduser()
    return path.suffix == ".tar" or (path.is_dir() and (path / "dataset.json").is_file())


def shard_folder(root) -> Path | None:
    """The folder a shard root's files are in (never written into); None for a URL (its copies are the cache's)."""
    if remote_text(root):
        return None
    path = Path(str(root)).expanduser()
    return path if path.is_dir() else path.parent


def shard_splits(root, val_fraction: float, seed: int):
    """(class names, train samples, val samples, source) of a shard root, as data.folders.Splits takes them."""
    folder, files, listed = _source(root)
    if listed is not None:
        shards = {split: [folder / s.name for s in listed.splits.get(split, [])] for split in ("train", "val")}
        if files is not None:  # the pattern picks shards of each split; val is the set's own where it names none
            known = {p.name for p in shards["train"] + shards["val"]}
            unknown = [p.name for p in files if p.name not in known]
            if unknown:
                raise DataError(f"{unknown[0]} is not listed in {folder / INDEX}: give shards of that set")
            val = {v.name for v in shards["val"]}
            shards = {"train": [p for p in files if p.name not in val],
                      "val": [p for p in files if p.name in val] or shards["val"]}
        expected = listed.by_name()
        names = list(listed.classes)
        with _index_cache(folder) as cache:
            members = {split: [m for p in paths for m in index_shard(p, cache, expected.get(p.name))]
                       for split, paths in shards.items()}
        _check_labels(members, names, folder)
        return names, _ordered(members["train"]), _ordered(members["val"]), "shards"
    with _index_cache(folder) as cache:
        pooled = [m for p in files or [] for m in index_shard(p, cache)]
    if not pooled:
        raise DataError(f"data.root {remote_text(root) or root}: no images in those shards")
    numbers = sorted({label for _, label, _ in pooled})
    names = _class_names(pooled, numbers)
    relabel = {n: i for i, n in enumerate(numbers)}
    by_class: dict[int, list] = {}
    for member, label, _ in pooled:
        by_class.setdefault(relabel[label], []).append(member)
    train, val = stratified_split(by_class, val_fraction, seed, _sorted)
    return names, train, val, "shards"


def _located(text: str) -> tuple[Path, list[Path] | None]:
    """(folder, the tars a pattern or a .tar names, or None for a whole set) of a local root."""
    folder = shard_folder(text)
    return folder, None if Path(text).expanduser().is_dir() else [Path(p) for p in _expand(text)]


def _fetched(url: str) -> tuple[Path, list[Path] | None]:
    """As _located, for a URL: a pattern's shards are fetched when not in the cache; a set's dataset.json is fetched,
    then the shards it lists that the cache lacks or holds at another size."""
    from ..console import stderr_console

    folder = cache_folder(url)
    folder.mkdir(parents=True, exist_ok=True)
    if "{" in url or re.search(r"\.tar($|\?)", url):  # a pattern, or one shard (a signed URL has a ?query)
        urls = _expand(url)
        files = [folder / name for name in local_names(urls)]
        fetch([(u, f, None) for u, f in zip(urls, files)], stderr_console())
        return folder, files
    fetch([(f"{url.rstrip('/')}/{INDEX}", folder / INDEX, -1)])
    listed = read_shard_set(folder).by_name().values()
    fetch([(f"{url.rstrip('/')}/{s.name}", folder / s.name, s.bytes) for s in listed], stderr_console())
    return folder, None


def fetch_shards(root) -> None:
    """Fetch what a URL root names into the cache, if it is one (before a data-parallel run's first collective,
    which would time out waiting for a long fetch)."""
    if url := remote_text(root):
        _fetched(url)


def shard_images(root) -> list[ShardMember]:
    """Every image of the shards a root names (predict): a set's shards, or exactly those a pattern or .tar names,
    in shard order."""
    folder, files, listed = _source(root)
    expected = listed.by_name() if listed else {}
    with _index_cache(folder) as cache:
        return sorted(m for p in files or [folder / name for name in expected]
                      for m, _, _ in index_shard(p, cache, expected.get(p.name)))


def _source(root) -> tuple[Path, list[Path] | None, ShardSet | None]:
    """(folder, the tars a pattern or a .tar names or None for a whole set, the folder's dataset.json if any)."""
    url = remote_text(root)
    folder, files = _fetched(url) if url else _located(str(root))
    return folder, files, read_shard_set(folder) if (folder / INDEX).is_file() else None


def shard_member_at(text: str) -> ShardMember | None:
    """The ShardMember that SHARD.tar#MEMBER (its str, as predictions and evaluations record it) names, if any."""
    shard, sep, name = str(text).rpartition("#")
    if not (sep and shard.endswith(".tar") and os.path.isfile(shard)):
        return None
    with _index_cache(Path(shard).parent) as cache:
        return next((m for m, _, _ in index_shard(Path(shard), cache) if m.name == name), None)


@contextmanager
def _index_cache(folder: Path):
    from ..cache import FileResults

    cache = FileResults("shard_index", INDEX_VERSION, root=folder)
    try:
        yield cache
    finally:
        cache.close()


def index_shard(path: Path, cache, expected=None) -> list[tuple[ShardMember, int, str]]:
    """[(member, class number, class name or "")] of one shard's images, in the shard's order: from `cache`
    (cache.FileResults) while the shard is unchanged, else read from its headers (and checked against `expected`,
    its entry in dataset.json)."""
    path = Path(os.path.abspath(path))
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise DataError(f"shard {path} is missing" + (" (dataset.json lists it)" if expected else "")) from None
    if expected is not None and st.st_size != expected.bytes:
        raise DataError(f"shard {path} is {st.st_size} bytes where dataset.json says {expected.bytes}: it is "
                        "truncated or was replaced; write the shards again (finetune shard --overwrite)")
    cached = cache.get(str(path), st)
    if cached is not None:
        rows = json.loads(cached)
    else:
        if expected is not None:
            from ..files import file_sha256

            if file_sha256(path) != expected.sha256:
                raise DataError(f"shard {path} does not match the sha256 in dataset.json: it is damaged or was "
                                "replaced; write the shards again (finetune shard --overwrite)")
        rows = _read_index(path, st.st_size)
        cache.put([(str(path), st, json.dumps(rows))])
    return [(ShardMember(str(path), offset, size, name, source), label, cls)
            for name, offset, size, label, cls, source in rows]


def _read_index(path: Path, file_size: int) -> list[list]:
    """[name, offset, size, class number, class name, source path] per image, from the tar's headers."""
    groups: dict[str, dict[str, tarfile.TarInfo]] = {}
    order: list[str] = []
    try:
        with tarfile.open(path, "r:") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                if info.offset_data + info.size > file_size:
                    raise tarfile.ReadError(f"{info.name} runs past the end of the file")
                folder, base = os.path.split(info.name)
                key, _, ext = base.partition(".")
                key = f"{folder}/{key}" if folder else key
                if key not in groups:
                    groups[key] = {}
                    order.append(key)
                groups[key][ext.lower()] = info
            rows = []
            for key in order:
                parts = groups[key]
                image = next((parts[e] for e in parts if e.rsplit(".", 1)[-1] in IMAGE_EXTENSIONS), None)
                if image is None:
                    continue
                if "cls" not in parts:
                    raise DataError(f"{path}: {image.name} has no {key}.cls member (its class number)")
                label = int(tar.extractfile(parts["cls"]).read().decode().strip())
                meta = json.loads(tar.extractfile(parts["json"]).read()) if "json" in parts else {}
                rows.append([image.name, image.offset_data, image.size, label, str(meta.get("class", "")),
                             str(meta.get("path", ""))])
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        raise DataError(f"shard {path} cannot be read ({exc}): it is truncated or damaged; write it again") from None
    return rows


def _expand(pattern: str) -> list[str]:
    try:
        from webdataset.shardlists import expand_urls
    except ImportError:
        raise ConfigError("shards need webdataset, which is not installed: pip install 'finetune[shards]' "
                          "(or pip install webdataset)") from None
    return [p if remote_text(p) else os.path.expanduser(p) for p in expand_urls(pattern)]


def _check_labels(members: dict, names: list[str], folder: Path) -> None:
    for items in members.values():
        bad = next((m for m, label, _ in items if not 0 <= label < len(names)), None)
        if bad is not None:
            raise DataError(f"{bad} has a class number outside the {len(names)} classes of {folder}/dataset.json")


def _ordered(items) -> list:
    """(member, label) class by class, by source path (the folder's order); shard order where there is none."""
    by_class: dict[int, list] = {}
    for member, label, _ in items:
        by_class.setdefault(label, []).append(member)
    return [(m, label) for label in sorted(by_class) for m in _sorted(by_class[label])]


def _sorted(members: list[ShardMember]) -> list[ShardMember]:
    if all(m.source for m in members):
        return sorted(members, key=lambda m: PurePosixPath(m.source).parts)
    return sorted(members, key=lambda m: (m.shard, m.offset))


def _class_names(pooled, numbers: list[int]) -> list[str]:
    named = {}
    for _, label, cls in pooled:
        if cls:
            named.setdefault(label, cls)
    return [named.get(n, str(n)) for n in numbers]
