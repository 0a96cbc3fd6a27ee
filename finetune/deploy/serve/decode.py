"""Uploaded bytes -> an RGB image, read exactly as data.images.load_rgb reads a file, within the server's limits."""

from __future__ import annotations

import io

from PIL import Image

from ...data.images import decode_rgb, open_image


class TooLarge(ValueError):
    """An image over the server's byte or pixel limit (413)."""


def read_rgb(data: bytes, draft: int | None, max_bytes: int, max_pixels: int) -> Image.Image:
    """The upload as RGB; its size is checked from the header before any pixel is decoded."""
    if len(data) > max_bytes:
        raise TooLarge(f"image of {len(data)} bytes is over the limit of {max_bytes}")
    with open_image(io.BytesIO(data)) as im:
        if im.width * im.height > max_pixels:
            raise TooLarge(f"image of {im.width}x{im.height} pixels is over the limit of {max_pixels}")
        return decode_rgb(im, draft)
