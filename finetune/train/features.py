"""The frozen-feature cache: the frozen prefix runs once per image, not once per epoch.

With feature-extract or last-stage, `frozen.split_frozen` cuts the model at its first trained module.
The prefix's outputs (the pooled features for feature-extract, the last stage's input for last-stage)
are stored as .npy files, fp16 where they fit, memory-mapped when read, and keyed by everything that
changes them: model source, name and weights (file content hash), preprocessing, the transform, the
cut, and the file list with sizes and mtimes. Val is always cached (its transform is fixed); train is
cached when it does not change between epochs (no augmentation) or as K augmented views; otherwise
the BatchNorm-folded frozen copy recomputes it every step. Training then runs the same epoch loop on
the model from the cut on, with the same sampler the image loader would have used, so cached and
uncached runs see the same batches in the same order.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..config import Recipe
from ..console import literal, progress
from ..data.images import PAD, PAD_LABEL
from ..data.loading import Loaders, prefetched
from ..errors import ConfigError
from ..files import file_sha256, pid_alive
from ..models.registry import ModelInfo
from ..runtime.device import Compute
from ..runtime.threads import one_thread, tuned_threads
from .freeze import FreezePlan
from .prefix import Split, split_frozen

FORMAT = 5  # bumped when the same key would now store other features or files (5: labels of vanished files)
FP16_LIMIT = 1e4  # prefix outputs larger than this (random-init nets) are stored as fp32: fp16 tops out at 65504


@dataclass(frozen=True)
class FeatureCache:
    """Where the frozen prefix's outputs are stored, and everything besides the images that changes them."""
    root: Path
    enabled: bool  # features.cache: auto
    views: int  # training views to cache: features.views with augmentation (0: recompute every epoch), else 1
    train_transform: str  # "eval" without augmentation, else the augmentation, views and seed
    material: dict  # model source and name, weights (a file by content), preprocessing, torch version
    seed: int

    @classmethod
    def from_recipe(cls, recipe: Recipe, info: ModelInfo, enabled: bool = True) -> FeatureCache:
        """enabled: the freeze plan leaves a frozen prefix to cache (and features.cache is auto)."""
        import torch.version

        spec, data = recipe.model, recipe.data
        enabled = enabled and recipe.features.cache == "auto"
        random = data.augment != "none" or data.random_erasing > 0
        # mixup/cutmix mix each batch anew: nothing of train is cached then; else K views of random augmentations
        views = 0 if data.mixup or data.cutmix else recipe.features.views if random else 1
        weights = spec.weights
        if enabled and weights is not None and Path(weights).expanduser().is_file():
            weights = file_sha256(Path(weights).expanduser())
        material = {"format": FORMAT, "source": spec.source, "name": spec.name, "weights": weights,
                    "cifar_stem": spec.cifar_stem, "preprocessing": info.preprocessing.to_dict(),
                    "torch": torch.version.__version__}
        # Random views depend on the augmentation and the seed; without augmentation train uses the eval transform.
        erasing = f"-erase{data.random_erasing}" if data.random_erasing else ""
        kind = f"{data.augment}{erasing}-views{views}-seed{recipe.train.seed}" if random else "eval"
        return cls(cache_root(recipe.features.dir, recipe.data.root), enabled, views, kind, material, recipe.train.seed)

    def key(self, dataset, transform: str) -> str:
        """A hash of everything that changes the features of the dataset's samples: the material, the transform,
        and every file's path, size and mtime with its label."""
        stamps = []
        for path, label in dataset.samples:
            try:
                st = os.stat(path)
                stamp = (st.st_size, st.st_mtime_ns)
            except OSError:  # deleted since the pre-scan: training leaves it out (data.images.missing_label)
                stamp = (-1, -1)
            stamps.append((str(Path(path).resolve()), *stamp, label))
        material = {**self.material, "transform": transform,
                    "files": hashlib.sha256(json.dumps(stamps).encode()).hexdigest()}
        return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Entry:
    """One split's cached features: its folder, the loader whose images it holds, and how many views."""
    folder: Path
    name: str  # train | val
    loader: torch.utils.data.DataLoader
    views: int


def frozen_batches(model: nn.Module, plan: FreezePlan, loaders: Loaders, cache: FeatureCache, compute: Compute,
                   console):
    """(tail_of, train batches, val batches) for fit: tail_of(model) is the model from the cut on (for any copy
    of it, e.g. its moving average), fed prefix outputs (cached, or computed by the fast frozen copy) when the
    plan freezes a prefix; else the identity and the image loaders."""
    if not cache.enabled:
        return _whole, loaders.train, loaders.val
    val_images = image_dataset(loaders.val)
    probe = torch.stack([val_images[i][0] for i in range(min(4, len(val_images)))])
    split, why = split_frozen(model, list(plan.roots), compute.to_device(probe), plan.frozen_bn)
    if split is None:
        console.print(f"features: the whole model runs every step: {literal(why)}", style="dim")
        return _whole, loaders.train, loaders.val

    with torch.no_grad(), compute.autocast():
        sample = split.prefix(compute.to_device(probe[:1])).float()
    layout = (tuple(sample.shape[1:]), np.float16 if float(sample.abs().max()) < FP16_LIMIT else np.float32)
    start, batches, recomputed = time.perf_counter(), [], {}
    dist = compute.dist
    first = dist.local_rank == 0  # computes the features for every rank of its machine; the others wait
    unwritable = prepare_root(cache.root, clean=first)
    if unwritable:
        console.print(f"[yellow]features: the cache folder {literal(cache.root)} cannot be written "
                      f"({literal(unwritable)}): the frozen part runs every epoch instead. Set features.dir or "
                      "$FINETUNE_CACHE_DIR to a folder you can write[/]", soft_wrap=True)
    for name, loader, kind, views in (("train", loaders.train, cache.train_transform, cache.views),
                                      ("val", loaders.val, "eval", 1)):
        images = image_dataset(loader)
        transform = f"{kind}-draft{images.draft_size}-{compute.precision}-{split.boundary}"
        entry = Entry(cache.root / cache.key(images, transform), name, loader, views)
        features = _stored(entry, console) if first else None
        if first and features is None and views and not unwritable and \
                fits_on_disk(cache.root, views * len(images), layout):
            compute_entry(entry, split, layout, cache.seed, compute, console)
            features = load_features(entry.folder)
        if dist.enabled:
            dist.barrier()
            features = features if first else _stored(entry, console)
        if features is not None:
            batches.append(_loader_like(loader, features))
        else:
            recomputed[name] = ("data.augment is random; features.views: K caches K augmented views" if not views
                                else "" if unwritable else "not enough free disk to cache it")
            batches.append(_Prefixed(loader, split, compute))
    cached = [name for name in ("train", "val") if name not in recomputed]
    if cached:
        console.print(f"features: the frozen part before {split.boundary} ran once per image for "
                      f"{' and '.join(cached)}, ready in {time.perf_counter() - start:.1f}s (cache "
                      f"{literal(cache.root)})", style="dim")
    for name, why in recomputed.items():
        if why:
            console.print(f"features: for {name}, the frozen part runs every epoch, BatchNorm folded ({why})",
                          style="dim", soft_wrap=True)
    return split.tail_of, batches[0], batches[1]


def _whole(model: nn.Module) -> nn.Module:
    return model


def _stored(entry: Entry, console) -> FeatureSet | None:
    """The entry's features when they are stored and intact; a damaged entry is removed (it is ours, and only
    a cache) and computed again, with one warning."""
    if not entry.folder.exists():
        return None
    try:
        return load_features(entry.folder)
    except DamagedEntry as why:
        console.print(f"[yellow]features: the cached {entry.name} features in {literal(entry.folder)} are damaged "
                      f"({literal(why)}); computing them again[/]", highlight=False, soft_wrap=True)
        shutil.rmtree(entry.folder, ignore_errors=True)
        return None


def prepare_root(root: Path, clean: bool = True) -> str:
    """Make the cache folder and (with clean) clear what killed runs left half-written in it; "" when it can be
    written, else why not (training then runs the frozen part every epoch instead)."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=root):
            pass
    except OSError as exc:
        return exc.strerror or str(exc)
    for tmp in root.glob(".*.*.*") if clean else []:  # .KEY.PID.XXXX from compute_entry
        parts = tmp.name.split(".")
        if tmp.is_dir() and len(parts) >= 4 and parts[2].isdigit() and not pid_alive(int(parts[2])):
            shutil.rmtree(tmp, ignore_errors=True)
    return ""


def fits_on_disk(root: Path, items: int, layout) -> bool:
    """Whether `items` prefix outputs of this shape and dtype fit in the free space at root, with 1 GiB to spare."""
    shape, dtype = layout
    need = items * math.prod(shape) * np.dtype(dtype).itemsize
    existing = next(p for p in (root, *root.parents) if p.exists())
    return need + 2**30 < shutil.disk_usage(existing).free


def cache_root(features_dir: Path | None, data_root: Path) -> Path:
    if features_dir is not None:
        root = Path(features_dir).expanduser()
    elif os.environ.get("FINETUNE_CACHE_DIR"):
        root = Path(os.environ["FINETUNE_CACHE_DIR"]).expanduser()
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "finetune" / "features"
    data = Path(data_root).expanduser().resolve()
    if root.resolve() == data or data in root.resolve().parents:
        raise ConfigError(f"features.dir {root} is inside the dataset {data}; finetune never writes there. "
                          "Choose a folder outside it")
    return root


# ---------------------------------------------------------------- compute / store / load


class FeatureSet(torch.utils.data.Dataset):
    """Cached prefix outputs (views x N x ..., memory-mapped) and labels; item i of the current view."""

    def __init__(self, features: np.ndarray, labels: np.ndarray):
        self.features, self.labels, self.view = features, labels, 0

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, item):
        i = item[0] if isinstance(item, tuple) else item  # training samplers yield (index, sample seed)
        if i == PAD:  # padding of a rank's last batch (data.sampling.EpochSampler.shard)
            return torch.zeros(self.features.shape[2:]), PAD_LABEL
        return torch.from_numpy(np.asarray(self.features[self.view, i], dtype=np.float32)), int(self.labels[i])


def load_features(folder: Path) -> FeatureSet:
    """The entry's features (memory-mapped) and labels, once their checksums match what was written last;
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


class DamagedEntry(Exception):
    """A cache entry whose files are missing, truncated or changed since they were written."""


ARRAYS, CHECKSUMS = ("features.npy", "labels.npy"), "checksums.json"


def _crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            crc = zlib.crc32(chunk, crc)
    return crc


def compute_entry(entry: Entry, split: Split, layout, seed: int, compute: Compute, console) -> None:
    """Run the frozen prefix over the entry's images (in file order) `views` times; write the outputs atomically."""
    dataset = image_dataset(entry.loader)
    cpu = compute.device.type == "cpu"  # decode in a thread of this process, as predict does (data.prefetched)
    loader = entry.loader
    ordered = torch.utils.data.DataLoader(dataset, batch_size=loader.batch_size, shuffle=False,
                                          num_workers=0 if cpu else loader.num_workers, pin_memory=loader.pin_memory,
                                          worker_init_fn=loader.worker_init_fn,
                                          generator=torch.Generator().manual_seed(seed))
    folder = entry.folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.{os.getpid()}.", dir=folder.parent))
    try:
        shape, dtype = layout
        out = np.lib.format.open_memmap(tmp / "features.npy", mode="w+", dtype=dtype,
                                        shape=(entry.views, len(dataset), *shape))
        with progress(console) as bar, torch.inference_mode():
            task = bar.add_task(f"computing {entry.name} features", total=entry.views * len(ordered))
            labels = np.array([label for _, label in dataset.samples], dtype=np.int64)
            for v in range(entry.views):
                row = 0
                with torch.random.fork_rng(devices=[]):  # view v's augmentations: from (seed, v), not the run's RNG
                    torch.manual_seed(int(np.random.SeedSequence([seed, v]).generate_state(1)[0]))
                    for images, got in (tuned_threads(prefetched(ordered)) if cpu else ordered):
                        with compute.autocast():
                            batch = split.prefix(compute.to_device(images))
                        out[v, row:row + len(batch)] = batch.float().cpu().numpy()
                        # an image that vanished since the pre-scan keeps its negative label (data.images.missing_label)
                        labels[row:row + len(batch)] = np.minimum(labels[row:row + len(batch)], got.numpy())
                        row += len(batch)
                        bar.advance(task)
        out.flush()
        del out
        np.save(tmp / "labels.npy", labels)
        # written last: an entry is trusted only when its arrays still match (load_features)
        (tmp / CHECKSUMS).write_text(json.dumps({name: _crc32(tmp / name) for name in ARRAYS}))
        try:
            os.replace(tmp, folder)  # atomic: a crash leaves no half-written cache entry
        except OSError:  # another run finished the same entry first: theirs is as good as ours
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class _Prefixed:
    """The image loader's batches, turned into prefix outputs by the fast frozen copy as they arrive."""

    def __init__(self, loader, split: Split, compute: Compute):
        self.loader, self.split, self.compute = loader, split, compute
        self.dataset, self.batch_size = loader.dataset, loader.batch_size

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for images, *labels in self.loader:  # labels, and soft targets with mixup/cutmix
            with torch.no_grad(), self.compute.autocast():  # not across the yield: the step needs its own grad mode
                features = self.split.prefix(self.compute.to_device(images))
            yield features, *labels


class _EpochViews:
    """Iterates a loader of cached features; epoch e reads view e mod K (always view 0 without augmentation)."""

    def __init__(self, loader, features: FeatureSet):
        self.loader, self.features, self.epoch = loader, features, 0
        self.dataset, self.batch_size = features, loader.batch_size

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        epoch = getattr(self.loader.sampler, "epoch", None)  # sampling.EpochSampler: 1-based, set by fit (resume too)
        self.features.view = (epoch - 1 if epoch else self.epoch) % self.features.features.shape[0]
        self.epoch += 1
        # A head on pooled features (views x N x dim) is a few tiny matmuls per step: one thread (runtime.threads);
        # a last stage's convs keep them all.
        with one_thread(self.features.features.ndim == 3):
            yield from self.loader


def image_dataset(loader):
    """The ImageDataset under a loader (training wraps it in sampling.SeededDataset)."""
    return getattr(loader.dataset, "dataset", loader.dataset)


def _loader_like(image_loader, features: FeatureSet) -> _EpochViews:
    """Batches of cached features in exactly the order `image_loader` would give images: its own sampler."""
    loader = torch.utils.data.DataLoader(features, batch_size=image_loader.batch_size,
                                         sampler=image_loader.sampler, num_workers=0,
                                         pin_memory=image_loader.pin_memory,
                                         generator=image_loader.generator)  # else epochs draw from torch's global RNG
    return _EpochViews(loader, features)
