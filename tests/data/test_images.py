"""Loading: every image mode becomes the right RGB, the same way for train, val and predict."""

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from finetune.data.images import load_rgb
from finetune.errors import DataError

RED = (220, 40, 30)


def saved(tmp_path: Path, name: str, im: Image.Image, **kw) -> Path:
    path = tmp_path / name
    im.save(path, **kw)
    return path


def test_every_mode_becomes_correct_rgb(tmp_path):
    rgba = Image.new("RGBA", (40, 40), RED + (255,))
    rgba.putpixel((0, 0), (0, 0, 0, 0))  # fully transparent black: must come out white, not black
    la = Image.new("LA", (40, 40), (100, 255))
    la.putpixel((0, 0), (0, 0))
    pal = Image.new("P", (40, 40), 1)
    pal.putpalette([0, 0, 0, *RED] + [0] * 762)
    pal.putpixel((0, 0), 0)
    keyed = Image.new("RGB", (40, 40), RED)
    keyed.putpixel((0, 0), (1, 2, 3))
    cases = {
        "rgba.png": (rgba, {}, RED),
        "la.png": (la, {}, (100, 100, 100)),
        "pal.gif": (pal, {"transparency": 0}, RED),
        "pal.png": (pal, {"transparency": 0}, RED),
        "keyed.png": (keyed, {"transparency": (1, 2, 3)}, RED),  # a PNG tRNS colour key
        "gray.png": (Image.new("L", (40, 40), 100), {}, (100, 100, 100)),
        "bilevel.png": (Image.new("1", (40, 40), 1), {}, (255, 255, 255)),
        "deep.png": (Image.fromarray(np.full((40, 40), 100 * 257, dtype=np.uint16)), {}, (100, 100, 100)),
    }
    for name, (im, kw, colour) in cases.items():
        out = load_rgb(saved(tmp_path, name, im, **kw))
        assert out.mode == "RGB" and out.size == (40, 40), name
        assert out.getpixel((20, 20)) == colour, name
        if "transparency" in kw or im.mode in ("RGBA", "LA"):
            assert out.getpixel((0, 0)) == (255, 255, 255), name  # transparency composited on white

    cmyk = load_rgb(saved(tmp_path, "cmyk.jpg", Image.new("RGB", (40, 40), RED).convert("CMYK"), quality=95))
    assert np.abs(np.asarray(cmyk, dtype=int) - RED).max() <= 6  # CMYK converted, not inverted or garbled


def test_exif_orientation_is_applied_and_animations_use_the_first_frame(tmp_path):
    im = Image.new("RGB", (40, 20), RED)
    im.paste((0, 0, 255), (0, 0, 10, 20))  # blue on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    out = load_rgb(saved(tmp_path, "phone.jpg", im, exif=exif, quality=95))
    assert out.size == (20, 40)
    assert out.getpixel((10, 2))[2] > 200  # the blue strip is on top once upright

    frames = [Image.new("RGB", (40, 40), c) for c in (RED, (0, 0, 255))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    r, g, b = load_rgb(tmp_path / "anim.gif").getpixel((5, 5))
    assert r > 200 and b < 60


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # pytest resets our process-wide filter
def test_a_decompression_bomb_is_refused_from_its_header(tmp_path):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    for side in (10_000, 100_000):  # above Pillow's warning limit, and above its hard limit
        bomb = tmp_path / f"bomb{side}.png"
        bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
                         + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))
        with pytest.raises(DataError, match="decompression-bomb limit"):
            load_rgb(bomb)
