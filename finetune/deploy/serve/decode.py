"""Uploaded bytes -> the model's input tensor, through the same loading and transform as predict."""

from __future__ import annotations

import io

from ...data.images import open_image, to_rgb


class TooLarge(ValueError):
    """An image over the server's byte or pixel limit (413)."""


def decode(data: bytes, transform, draft: int | None, max_bytes: int, max_pixels: int):
    """The preprocessed tensor of one uploaded image, as data.images.load_rgb reads a file."""
    if len(data) > max_bytes:
        raise TooLarge(f"image of {len(data)} bytes is over the limit of {max_bytes}")
    from PIL import ImageOps

    with open_image(io.BytesIO(data)) as im:
        if im.width * im.height > max_pixels:
            raise TooLarge(f"image of {im.width}x{im.height} pixels is over the limit of {max_pixels}")
        if draft and im.format == "JPEG":
            im.draft("RGB", (draft, draft))
        im.seek(0)
        rgb = to_rgb(ImageOps.exif_transpose(im))
    return transform(rgb)



