"""Regenerate data/sample: a small synthetic ImageFolder of textures (stripes, dots, checks) that we
are free to ship, so the quickstart runs offline on a fresh clone.

    python data/make_sample.py

Colours, scale, orientation, phase and noise are random per image, so a network has to learn the
pattern, not a colour. Deterministic: the same files every time.
"""

import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

SIZE = 32
COUNTS = {"train": 150, "val": 30}
CLASSES = ("checks", "dots", "stripes")


def draw(kind: str, rng: random.Random) -> Image.Image:
    bg = tuple(rng.randint(0, 255) for _ in range(3))
    fg = tuple((c + rng.randint(90, 166)) % 256 for c in bg)
    period = rng.uniform(5, 10)
    big = SIZE * 2  # draw larger, rotate, crop the middle: any orientation without empty corners
    im = Image.new("RGB", (big, big), bg)
    d = ImageDraw.Draw(im)
    ox, oy = rng.uniform(0, period), rng.uniform(0, period)
    n = int(big / period) + 2
    for i in range(-1, n):
        for j in range(-1, n):
            x, y = ox + i * period, oy + j * period
            if kind == "dots":
                r = period * rng.uniform(0.22, 0.3)
                d.ellipse([x - r, y - r, x + r, y + r], fill=fg)
            elif kind == "checks" and (i + j) % 2 == 0:
                d.rectangle([x, y, x + period, y + period], fill=fg)
        if kind == "stripes":
            x = ox + i * period
            d.rectangle([x, 0, x + period / 2, big], fill=fg)
    im = im.rotate(rng.uniform(0, 360) if kind != "checks" else rng.uniform(-45, 45), resample=Image.BILINEAR)
    im = im.crop((SIZE // 2, SIZE // 2, SIZE // 2 + SIZE, SIZE // 2 + SIZE))
    noise = Image.effect_noise((SIZE, SIZE), rng.uniform(20, 60)).convert("RGB")
    return Image.blend(im, noise, rng.uniform(0.05, 0.25)).filter(ImageFilter.GaussianBlur(rng.uniform(0, 0.8)))


def main() -> None:
    root = Path(__file__).parent / "sample"
    rng = random.Random(0)
    for split, n in COUNTS.items():
        for kind in CLASSES:
            folder = root / split / kind
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                draw(kind, rng).save(folder / f"{kind}_{i:03d}.jpg", quality=90)


if __name__ == "__main__":
    main()
