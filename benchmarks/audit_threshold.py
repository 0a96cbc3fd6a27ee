"""The near-duplicate threshold of `finetune audit`, measured: how similar (cosine of pooled embeddings) a photo's
resized, re-encoded and cropped copies are to it, against how similar each photo is to its nearest *different*
photo. Builds a folder in --work (never in the dataset): every photo of DATA under train/, and copies of
--sample of them under val/, then reads the embeddings the audit uses (finetune.audit.embeddings).

    PYTHONPATH=. python benchmarks/audit_threshold.py recipes/efficientnet-lite0-feature-extract.yaml \
        --work /tmp/audit-threshold
"""

from __future__ import annotations

import argparse
import random
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from finetune.audit.embeddings import load_embeddings
from finetune.config import load_recipe
from finetune.console import stderr_console
from finetune.data.folders import is_image_name

COPIES = {
    "resized-50%": lambda im: im.resize((im.width // 2, im.height // 2), Image.BILINEAR),
    "jpeg-q40": lambda im: im,  # saved below at quality 40
    "crop-90%-centre": lambda im: im.crop((im.width // 20, im.height // 20, im.width * 19 // 20, im.height * 19 // 20)),
    "crop-80%-corner": lambda im: im.crop((0, 0, im.width * 4 // 5, im.height * 4 // 5)),
    "resized-25%+jpeg-q60": lambda im: im.resize((im.width // 4, im.height // 4), Image.BILINEAR),
}
THRESHOLDS = (0.80, 0.82, 0.85, 0.88, 0.90, 0.92)
QUALITY = {"jpeg-q40": 40, "resized-25%+jpeg-q60": 60}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipe", type=Path)
    ap.add_argument("--work", type=Path, required=True, help="folder to build the test set in (recreated)")
    ap.add_argument("--sample", type=int, default=60, help="photos to make copies of")
    ap.add_argument("--reuse", action="store_true", help="keep a --work folder built before (cached features)")
    args = ap.parse_args()
    recipe = load_recipe(args.recipe)
    data = Path(recipe.data.root).expanduser().resolve()
    work = args.work.resolve()
    if data in (work, *work.parents):
        raise SystemExit("--work must be outside the dataset")
    photos = sorted(p for p in data.rglob("*") if p.is_file() and is_image_name(p))
    if not args.reuse:
        shutil.rmtree(work, ignore_errors=True)
        build(work, photos, args.sample)
    recipe.data.root = work
    emb = load_embeddings(recipe, stderr_console())
    print(f"{len(photos)} photos, {args.sample} with copies")
    for centred in (False, True):
        report(emb, photos, centred)


def build(work: Path, photos: list[Path], n: int) -> None:
    for i, p in enumerate(photos):
        dst = work / "train" / p.parent.name / f"{i:04d}{p.suffix}"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, dst)
    sample = random.Random(0).sample(range(len(photos)), n)
    for i in sample:
        im = Image.open(photos[i]).convert("RGB")
        for name, make in COPIES.items():
            dst = work / "val" / photos[i].parent.name / f"{i:04d}-{name}.jpg"
            dst.parent.mkdir(parents=True, exist_ok=True)
            make(im).save(dst, quality=QUALITY.get(name, 90))


def report(emb, photos: list[Path], centred: bool) -> None:
    x = emb.normalised(centred).numpy()
    originals = {Path(p).stem: k for k, p in enumerate(emb.paths) if emb.split[k] == 0}
    sims = x[emb.split == 0] @ x[emb.split == 0].T
    np.fill_diagonal(sims, -1)
    nearest = sims.max(1)
    copies = {}
    print(("centred (the mean embedding subtracted first)" if centred else "raw embeddings")
          + ": cosine similarity to the original:")
    for name in COPIES:
        s = np.array([float(x[k] @ x[originals[Path(p).stem.split('-')[0]]]) for k, p in enumerate(emb.paths)
                      if emb.split[k] == 1 and Path(p).stem.endswith(name)])
        copies[name] = s
        print(f"  {name:22s} min {s.min():.3f}  5th pct {np.percentile(s, 5):.3f}  median {np.median(s):.3f}")
    print(f"nearest different photo: median {np.median(nearest):.3f}  95th pct {np.percentile(nearest, 95):.3f}  "
          f"99th pct {np.percentile(nearest, 99):.3f}  max {nearest.max():.3f}")
    for t in THRESHOLDS:
        found = ", ".join(f"{name} {np.mean(s >= t):.0%}" for name, s in copies.items())
        print(f"  at {t:.2f}: copies found: {found}; photos with a different photo above: {np.mean(nearest >= t):.1%}")
    train_paths = [p for k, p in enumerate(emb.paths) if emb.split[k] == 0]
    for k in np.argsort(-nearest)[:6]:
        j = int(sims[k].argmax())
        a, b = (photos[int(Path(train_paths[i]).stem)] for i in (k, j))
        print(f"  {nearest[k]:.3f}  {a}  ~  {b}")


if __name__ == "__main__":
    main()
