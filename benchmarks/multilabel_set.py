"""A multi-label set from real photos, for docs/multilabel.md: hymenoptera photos (ants, bees) pasted at a random
place onto data/sample textures (checks, dots, stripes), so one image has two labels (its insect and its
texture); 15% of the photos stay as they are (insect only), and 45 + 30 textures stay alone (texture only).
hymenoptera's train photos and data/sample's train textures make the train rows; their val counterparts are split
at random into val rows (labels.csv, what chooses best.pt and the thresholds) and test.csv (held out for
`finetune evaluate`). Everything is written under --out (never into either dataset); seeded, so it is the same set
each time.

    python benchmarks/multilabel_set.py --hymenoptera ../shared/datasets/hymenoptera --textures data/sample \\
        --out /tmp/ml/set
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from PIL import Image, ImageOps

TEXTURES = ("checks", "dots", "stripes")


def build(hymenoptera: Path, textures: Path, out: Path, seed: int = 0) -> tuple[int, int]:
    rng = random.Random(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    tex = {s: {t: sorted((textures / s / t).glob("*.jpg")) for t in TEXTURES} for s in ("train", "val")}
    rows, test = ["path,labels,split"], ["path,labels"]
    n = 0

    def add(im: Image.Image, labels: list[str], split: str) -> None:
        nonlocal n
        name = f"images/{n:04d}.jpg"
        n += 1
        im.save(out / name, quality=92)
        where = "train" if split == "train" else ("val" if rng.random() < 0.5 else "test")
        line = f"{name},{'|'.join(labels)}"
        test.append(line) if where == "test" else rows.append(f"{line},{where}")

    for split in ("train", "val"):
        photos = [(p, c) for c in ("ants", "bees") for p in sorted((hymenoptera / split / c).glob("*.jpg"))]
        rng.shuffle(photos)
        for photo, insect in photos:
            if rng.random() < 0.15:  # insect only
                add(ImageOps.fit(Image.open(photo).convert("RGB"), (256, 256)), [insect], split)
                continue
            texture = rng.choice(TEXTURES)
            background = ImageOps.fit(Image.open(rng.choice(tex[split][texture])).convert("RGB"), (256, 256))
            background.paste(ImageOps.fit(Image.open(photo).convert("RGB"), (150, 150)),
                             (rng.randrange(0, 106), rng.randrange(0, 106)))
            add(background, [insect, texture], split)
        for texture in TEXTURES:  # texture only
            for t in tex[split][texture][:15 if split == "train" else 10]:
                add(ImageOps.fit(Image.open(t).convert("RGB"), (256, 256)), [texture], split)
    (out / "labels.csv").write_text("\n".join(rows) + "\n")
    (out / "test.csv").write_text("\n".join(test) + "\n")
    return len(rows) - 1, len(test) - 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hymenoptera", type=Path, required=True, help="hymenoptera root (train/ and val/)")
    parser.add_argument("--textures", type=Path, required=True, help="data/sample (train/ and val/ of textures)")
    parser.add_argument("--out", type=Path, required=True, help="a new folder for the set")
    args = parser.parse_args()
    labelled, held_out = build(args.hymenoptera, args.textures, args.out)
    print(f"{args.out}: {labelled} train + val rows in labels.csv, {held_out} test rows in test.csv")


if __name__ == "__main__":
    main()
