"""Images as the model sees them: opened with one pixel limit, turned into correct RGB the same way in
train, val and predict, and a dataset of (path, label) samples that yields tensors."""

from __future__ import annotations

import io
import os
import re
import stat
from pathlib import Path

from PIL import Image, ImageOps

from ..errors import DataError
from .folders import Sample
from .packed import PackedImage


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
    CMYK and 16-bit converted, first frame of an animation. Used identically by train, val and predict.
    `path` may be a data.packed.PackedImage: an image in a shard, a dataset row."""
    if isinstance(path, PackedImage):
        with open_image(io.BytesIO(path.read_bytes())) as im:
            return decode_rgb(im, draft_size)
    if not stat.S_ISREG(os.stat(path).st_mode):  # reading a FIFO would wait forever, a device never end
        raise DataError(f"{path} is not a regular file: {special_file(Path(path))}")
    with open_image(path) as im:
        return decode_rgb(im, draft_size)


def sample_at(text: str):
    """The image a recorded path names: a PackedImage for SHARD.tar#MEMBER or hf:SOURCE:SPLIT#ROW, else the Path."""
    text = str(text)
    if text.startswith("hf:") and "#" in text:
        from .hf import hf_image_at

        return hf_image_at(text)
    if ".tar#" in text:
        from .shard_reader import shard_member_at

        found = shard_member_at(text)
        if found is not None:
            return found
    return Path(text)


def decode_rgb(im: Image.Image, draft_size: int | None = None) -> Image.Image:
    """load_rgb's decoding of an image already opened (the server opens uploads from memory)."""
    if draft_size and im.format == "JPEG":
        # Decode at reduced scale when the file is much larger than needed (a no-op otherwise).
        im.draft("RGB", (draft_size, draft_size))
    im.seek(0)
    return to_rgb(ImageOps.exif_transpose(im))  # a new image (a copy where nothing turns): safe after close


def special_file(path: Path) -> str:
    """What a path that is no regular file is, in words: a FIFO, a socket, a device, a folder (through a symbolic
    link: which, and whether it loops back to a folder that holds it)."""
    mode = path.stat().st_mode
    kind = next((what for test, what in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
                                        (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                                        (stat.S_ISDIR, "a folder")) if test(mode)), "a special file")
    if not path.is_symlink():
        return kind
    target = path.resolve()
    if stat.S_ISDIR(mode) and (target == path.parent.resolve() or target in path.parent.resolve().parents):
        return f"a symbolic link to {os.readlink(path)}, a folder that holds it: a loop, not followed"
    return f"{kind} through a symbolic link to {os.readlink(path)}" + (", not followed" if stat.S_ISDIR(mode) else "")


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
    """A map-style dataset of (path, label) samples; returns (tensor, label).

    With `size`, a file that can no longer be read (deleted or emptied after the pre-scan) does not end the
    run: it gives a zero image labelled `missing_label(i)`, which the loss and the scores leave out and the
    run reports (`missing_indices`). The batch keeps its place in the seeded order, so resume stays exact."""

    def __init__(self, samples: list[Sample], transform, draft_size: int | None = None, size: int | None = None):
        self.samples, self.transform, self.draft_size, self.size = samples, transform, draft_size, size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        if i == PAD:  # padding that evens out the ranks' last batch (data.sampling): never a sample
            import torch

            return torch.zeros(3, self.size, self.size), PAD_LABEL
        path, label = self.samples[i]
        try:
            return self.transform(load_rgb(path, self.draft_size)), label
        except Exception:
            if self.size is None:
                raise
            import torch

            return torch.zeros(3, self.size, self.size), missing_label(i)


PAD, PAD_LABEL = -1, -1  # the index and label of a padding sample: left out of the loss like a missing image


def missing_label(index: int) -> int:
    """The label of sample `index` when its file could not be read: below -1, so never a class nor padding."""
    return -2 - index


def missing_indices(labels) -> list[int]:
    """The sample indices of a batch's unreadable images (labels from missing_label)."""
    return [-2 - int(y) for y in labels if y < PAD_LABEL]
