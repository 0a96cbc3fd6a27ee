"""Scan an ImageFolder, split it, load images as correct RGB, and build loaders.

Nothing here writes under the dataset root.
"""

from __future__ import annotations

import os
import random
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageOps

from .errors import DataError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
VAL_FOLDERS = ("val", "valid", "validation")

Sample = tuple[Path, int]

# Pillow warns between 1x and 2x its pixel limit; open_image refuses those with a clear error instead.
# A process-wide filter, because catch_warnings is not thread-safe and file checks run in threads.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


@dataclass
class Splits:
    class_names: list[str]
    train: list[Sample]
    val: list[Sample]
    source: str  # "folders" (train/ + val/) or "split" (seeded stratified split)
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # files left out, with the reason

    def counts(self, which: str) -> dict[str, int]:
        c = Counter(label for _, label in getattr(self, which))
        return {name: c.get(i, 0) for i, name in enumerate(self.class_names)}


def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def scan_classes(folder: Path, keep=is_image_name) -> dict[str, list[Path]]:
    """{class name: sorted paths kept by `keep` (image names by default)} for the class subfolders of
    `folder`, in sorted class order."""
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    return {c: sorted(p for p in (folder / c).rglob("*") if p.is_file() and keep(p)) for c in classes}


def find_val_folder(root: Path) -> Path | None:
    return next((root / v for v in VAL_FOLDERS if (root / v).is_dir()), None)


def split_folders(root: Path) -> dict[str, Path]:
    """{"train": root/train, "val": root/val} when both exist, else {"all": root} (split at train time)."""
    val_dir = find_val_folder(root)
    if (root / "train").is_dir() and val_dir is not None:
        return {"train": root / "train", "val": val_dir}
    return {"all": root}


def resolve_splits(root: Path | None, val_fraction: float, seed: int, screen=None) -> Splits:
    """train/ + val/ (or valid/, validation/) when present, else a seeded split stratified by class.

    screen(paths) -> {path: reason} names files to leave out (unreadable ones); they land in `skipped`.
    """
    if root is None:
        raise DataError("no dataset given: set data.root in the recipe or pass --data ROOT")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"data root {root} is not a folder")
    folders = split_folders(root)
    scanned = {split: scan_classes(folder) for split, folder in folders.items()}
    skipped = screen([p for classes in scanned.values() for paths in classes.values() for p in paths]) if screen else {}
    for classes in scanned.values():
        for name in classes:
            classes[name] = [p for p in classes[name] if p not in skipped]
    if "val" in folders:
        train, val, val_dir = scanned["train"], scanned["val"], folders["val"]
        unknown = sorted(set(val) - set(train))
        if unknown:
            raise DataError(f"{val_dir} has classes with no train/ folder: {', '.join(unknown)}")
        names = sorted(train)
        splits = Splits(names, _label(train, names), _label(val, names), "folders")
    else:
        classes = scanned["all"]
        names = sorted(classes)
        rng = random.Random(seed)
        train_s, val_s = [], []
        for label, name in enumerate(names):
            paths = list(classes[name])
            rng.shuffle(paths)
            n_val = round(len(paths) * val_fraction) if len(paths) > 1 else 0
            n_val = max(1, n_val) if len(paths) > 1 else 0
            val_s += [(p, label) for p in sorted(paths[:n_val])]
            train_s += [(p, label) for p in sorted(paths[n_val:])]
        splits = Splits(names, train_s, val_s, "split")
    splits.skipped = sorted(skipped.items())
    _check(splits, root)
    return splits


def _label(classes: dict[str, list[Path]], names: list[str]) -> list[Sample]:
    return [(p, names.index(c)) for c in names for p in classes.get(c, [])]


def _check(splits: Splits, root: Path) -> None:
    if len(splits.class_names) < 2:
        raise DataError(f"{root} needs at least two class folders with images in them "
                        f"(found {len(splits.class_names)}: {', '.join(splits.class_names) or 'none'}); see data/README.md")
    empty = [n for n, c in splits.counts("train").items() if c == 0]
    if empty:
        left_out = f" ({len(splits.skipped)} unreadable file(s) left out; run `finetune inspect {root}`)" if splits.skipped else ""
        raise DataError(f"class folder(s) with no usable training images under {root}: {', '.join(empty)}{left_out}. "
                        "Add readable images or remove the folder")
    if not splits.val:
        raise DataError(f"no validation images under {root}: add a val/ folder or more images per class")


# ---------------------------------------------------------------- images


def open_image(fp) -> Image.Image:
    """Image.open (header only) with one pixel limit for scan, train and predict: an image larger than
    Pillow's Image.MAX_IMAGE_PIXELS (a decompression bomb, or simply absurd) is refused before any decode."""
    limit = Image.MAX_IMAGE_PIXELS
    try:
        im = Image.open(fp)
    except Image.DecompressionBombError as exc:  # over twice the limit: Pillow refuses, saying the size
        size = re.search(r"\d+ pixels", str(exc))
        im, size = None, size.group(0) if size else "the image"
    if im is not None and limit and im.width * im.height > limit:
        size = f"{im.width}x{im.height} pixels"
        im.close()
        im = None
    if im is None:
        raise DataError(f"{size} exceeds the decompression-bomb limit of {limit} pixels; "
                        "refusing to decode it (shrink the image, or raise PIL.Image.MAX_IMAGE_PIXELS)")
    return im


def load_rgb(path: Path, draft_size: int | None = None) -> Image.Image:
    """Open any image as correct RGB: EXIF rotation applied, transparency composited on white,
    CMYK and 16-bit converted, first frame of an animation. Used identically by train, val and predict."""
    with open_image(path) as im:
        if draft_size and im.format == "JPEG":
            # Decode at reduced scale when the file is much larger than needed (a no-op otherwise).
            im.draft("RGB", (draft_size, draft_size))
        im.seek(0)
        return to_rgb(ImageOps.exif_transpose(im))  # a new image (a copy where nothing turns): safe after close


def to_rgb(im: Image.Image) -> Image.Image:
    if im.mode.startswith("I"):
        # 16-bit grayscale (PNG, TIFF) opens as I or I;16: scale 0..65535 down to 0..255
        import numpy as np

        im = Image.fromarray((np.asarray(im, dtype=np.float64) / 257.0).clip(0, 255).astype(np.uint8), "L")
    if im.mode in ("P", "L", "RGB") and "transparency" in im.info:
        im = im.convert("RGBA")  # palette index or colour key marked transparent (GIF, PNG tRNS)
    if im.mode in ("P", "LA", "La", "PA"):
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "RGBa"):
        background = Image.new("RGB", im.size, (255, 255, 255))
        background.paste(im, mask=im.getchannel("A"))
        return background
    return im.convert("RGB") if im.mode != "RGB" else im


class ImageDataset:
    """A map-style dataset of (path, label) samples; returns (tensor, label)."""

    def __init__(self, samples: list[Sample], transform, draft_size: int | None = None):
        self.samples, self.transform, self.draft_size = samples, transform, draft_size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        return self.transform(load_rgb(path, self.draft_size)), label


def resolve_workers(workers: int | str) -> int:
    """auto: one core stays with the main process (the forward pass), the rest decode, at most 4
    (more adds memory and start-up time without feeding a CPU forward pass faster)."""
    if workers == "auto":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return min(4, max(0, cores - 1))
    return int(workers)


def prefetched(batches, depth: int = 2):
    """An iterator over `batches`, produced from now on, up to `depth` ahead, by a background thread: loading
    overlaps the caller's work without worker processes to start (PIL decodes and resizes with the GIL
    released). On a 2-core CPU predict ran 33.9 images/s this way against 30.4 with one DataLoader worker
    (median of 5, hymenoptera val)."""
    import queue
    import threading

    q: queue.Queue = queue.Queue(depth)
    stop = threading.Event()
    end = object()

    def produce():
        try:
            for item in batches:
                while not stop.is_set():
                    try:
                        q.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put((end, None))
        except BaseException as exc:  # handed to the consumer, raised there
            q.put((end, exc))

    def consume():
        try:
            while True:
                item, exc = q.get()
                if exc is not None:
                    raise exc
                if item is end:
                    return
                yield item
        finally:
            stop.set()

    threading.Thread(target=produce, daemon=True, name="finetune-prefetch").start()
    return consume()
