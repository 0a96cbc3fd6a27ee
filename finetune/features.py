"""The frozen-feature cache: with feature-extract, run the frozen backbone once per image, not once per epoch.

The head's input (the backbone's pooled features) is captured with a forward pre-hook on the head
module, so the same code serves torchvision, scratch and timm models. Features are stored as fp16
.npy files and memory-mapped when read, keyed by everything that changes them: model source, name
and weights (file content hash), preprocessing, the transform, the file list with sizes and mtimes.
Training then runs `engine.run_epoch` on the head alone, with the same sampler object the image
loader would have used, so cached and uncached runs see the same batches in the same order.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .config import Recipe
from .errors import ConfigError
from .models.registry import ModelInfo
from .strategy import set_train_mode
from .threads import tuned_threads

FORMAT = 1


def use_cached_features(recipe: Recipe, model: nn.Module, info: ModelInfo, train_loader, val_loader,
                        device: torch.device, amp, console):
    """(net, train_loader, val_loader) for fit: the head on cached features when the strategy allows it,
    else (model, the image loaders) unchanged."""
    if recipe.features.cache == "off" or recipe.strategy.name != "feature-extract":
        return model, train_loader, val_loader
    random_parts = stochastic_before_head(model, info.head_name)
    views = recipe.features.views if recipe.data.augment != "none" else 1
    if random_parts or views == 0:
        why = (f"{', '.join(random_parts[:3])} before the head is random in training" if random_parts else
               f"data.augment is {recipe.data.augment} (features.views: K caches K augmented views)")
        console.print(f"features: the frozen backbone runs every epoch: {why}", style="dim")
        return model, train_loader, val_loader
    root = cache_root(recipe)
    # Random views depend on the augmentation and the seed; without augmentation train uses the eval transform.
    train_kind = "eval" if recipe.data.augment == "none" else f"{recipe.data.augment}-views{views}-seed{recipe.train.seed}"
    precision = f"{device.type}-{getattr(amp, 'fast_dtype', 'float32')}"
    start = time.perf_counter()
    sets = []
    for loader, kind, n_views in ((train_loader, train_kind, views), (val_loader, "eval", 1)):
        images = image_dataset(loader)
        key = feature_key(recipe, info, images, f"{kind}-draft{images.draft_size}-{precision}")
        sets.append(load_or_compute(root / key, model, info, loader, n_views, recipe.train.seed, device, amp, console))
    console.print(f"features: {len(sets[0].labels)} train / {len(sets[1].labels)} val images ready in "
                  f"{time.perf_counter() - start:.1f}s (cache {root})")
    head = model.get_submodule(info.head_name)
    return head, _loader_like(train_loader, sets[0]), _loader_like(val_loader, sets[1])


def stochastic_before_head(model: nn.Module, head_name: str) -> list[str]:
    """Modules before the head that would still behave randomly (or per batch) while the head trains:
    caching their output would freeze one random draw, so such models are not cached."""
    was_training = model.training
    set_train_mode(model)  # exactly the modes the uncached path trains in
    found = []
    for name, m in model.named_modules():
        if name == head_name or name.startswith(head_name + ".") or not m.training:
            continue
        rate = getattr(m, "drop_rate", 0) or getattr(m, "drop_prob", 0)  # timm's model-level dropout, DropPath
        if isinstance(m, nn.modules.dropout._DropoutNd):
            rate = m.p
        if rate or isinstance(m, nn.modules.batchnorm._BatchNorm):  # a parameter-free BN still uses batch stats
            found.append(name or "(model)")
    model.train(was_training)
    return found


# ---------------------------------------------------------------- the key


def cache_root(recipe: Recipe) -> Path:
    if recipe.features.dir is not None:
        root = Path(recipe.features.dir).expanduser()
    elif os.environ.get("FINETUNE_CACHE_DIR"):
        root = Path(os.environ["FINETUNE_CACHE_DIR"]).expanduser()
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "finetune" / "features"
    data = Path(recipe.data.root).expanduser().resolve()
    if root.resolve() == data or data in root.resolve().parents:
        raise ConfigError(f"features.dir {root} is inside the dataset {data}; finetune never writes there. "
                          "Choose a folder outside it")
    return root


def feature_key(recipe: Recipe, info: ModelInfo, dataset, transform: str) -> str:
    """A hash of everything that changes the features of the dataset's samples."""
    import torch.version

    spec = recipe.model
    weights = spec.weights
    if weights is not None and Path(weights).expanduser().is_file():
        weights = file_digest(Path(weights).expanduser())
    stamps = []
    for path, label in dataset.samples:
        st = os.stat(path)
        stamps.append((str(Path(path).resolve()), st.st_size, st.st_mtime_ns, label))
    material = {"format": FORMAT, "source": spec.source, "name": spec.name, "weights": weights,
                "cifar_stem": spec.cifar_stem, "preprocessing": info.preprocessing.to_dict(), "transform": transform,
                "torch": torch.version.__version__,
                "files": hashlib.sha256(json.dumps(stamps).encode()).hexdigest()}
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:32]


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------- compute / store / load


class FeatureSet(torch.utils.data.Dataset):
    """Cached features (views x N x D, fp16, memory-mapped) and labels; item i of the current view."""

    def __init__(self, features: np.ndarray, labels: np.ndarray):
        self.features, self.labels, self.view = features, labels, 0

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, item):
        i = item[0] if isinstance(item, tuple) else item  # training samplers yield (index, sample seed)
        return torch.from_numpy(np.asarray(self.features[self.view, i], dtype=np.float32)), int(self.labels[i])


def load_or_compute(folder: Path, model, info, loader, views: int, seed: int, device, amp, console) -> FeatureSet:
    if not (folder / "features.npy").is_file():
        compute(folder, model, info, loader, views, seed, device, amp, console)
    return FeatureSet(np.load(folder / "features.npy", mmap_mode="r"), np.load(folder / "labels.npy"))


class _Captured(Exception):
    """Raised by the head's pre-hook: the head's input is all we need, so the head never runs."""


def compute(folder: Path, model, info: ModelInfo, loader, views: int, seed: int, device, amp, console) -> None:
    """Run the backbone over the loader's images (in file order) `views` times; write fp16 features atomically."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    dataset = image_dataset(loader)
    ordered = torch.utils.data.DataLoader(dataset, batch_size=loader.batch_size, shuffle=False,
                                          num_workers=loader.num_workers, pin_memory=loader.pin_memory,
                                          worker_init_fn=loader.worker_init_fn,
                                          generator=torch.Generator().manual_seed(seed))
    head = model.get_submodule(info.head_name)
    captured: list[torch.Tensor] = []

    def grab(module, args):
        captured.append(args[0].detach().flatten(1).float().cpu())
        raise _Captured

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    hook = head.register_forward_pre_hook(grab)
    model.eval()
    try:
        n = len(dataset)
        out = np.lib.format.open_memmap(tmp / "features.npy", mode="w+", dtype=np.float16,
                                        shape=(views, n, info.feature_dim))
        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
        with Progress(*columns, console=console, transient=True) as bar, torch.inference_mode():
            task = bar.add_task("computing features", total=views * len(ordered))
            for v in range(views):
                row = 0
                for images, _ in (tuned_threads(ordered) if device.type == "cpu" else ordered):
                    try:
                        with amp:
                            model(images.to(device, non_blocking=True, memory_format=torch.channels_last))
                    except _Captured:
                        pass
                    batch = captured.pop()
                    out[v, row:row + len(batch)] = batch.numpy()
                    row += len(batch)
                    bar.advance(task)
        out.flush()
        del out
        np.save(tmp / "labels.npy", np.array([label for _, label in dataset.samples], dtype=np.int64))
        try:
            os.replace(tmp, folder)  # atomic: a crash leaves no half-written cache entry
        except OSError:  # another run finished the same entry first: theirs is as good as ours
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        hook.remove()


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
        # A head on cached features is a few tiny matmuls per step: one CPU thread does them ~25x faster than
        # a thread pool whose synchronisation costs more than the math (measured: 0.07 s vs 1.8 s per epoch
        # on hymenoptera on a busy 2-core machine). Restored when the epoch ends.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield from self.loader
        finally:
            torch.set_num_threads(threads)


def image_dataset(loader):
    """The ImageDataset under a loader (training wraps it in sampling.SeededDataset)."""
    return getattr(loader.dataset, "dataset", loader.dataset)


def _loader_like(image_loader, features: FeatureSet) -> _EpochViews:
    """Batches of cached features in exactly the order `image_loader` would give images: its own sampler."""
    loader = torch.utils.data.DataLoader(features, batch_size=image_loader.batch_size,
                                         sampler=image_loader.sampler, num_workers=0,
                                         pin_memory=image_loader.pin_memory,
                                         generator=image_loader.generator)  # else each epoch draws from torch's global RNG
    return _EpochViews(loader, features)
