"""The frozen-feature pass over a large synthetic set read from shards: --images generated textures (JPEG,
--px pixels, --classes classes) are written as an ImageFolder, sharded with `finetune shard`, and one epoch of a
feature-extract run trains on the shards in a child process: the time of each stage, the child's peak RSS, the
size of the feature cache and of the shards.

PYTHONPATH=. python benchmarks/shard_features.py --images 100000 --work /tmp/synth100k
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path


def textures(root: Path, n: int, px: int, classes: int) -> None:
    """n JPEGs, class k a stripe period of its own, with noise: cheap to make, not trivially separable."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    grid = np.arange(px)[None, :] + np.arange(px)[:, None]
    for i in range(n):
        k = i % classes
        split = "val" if (i // classes) % 10 == 0 else "train"
        folder = root / split / f"c{k:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        base = (127 + 100 * np.sin(grid * (k + 2) / px * np.pi))[..., None] * rng.uniform(0.5, 1, 3)
        pixels = (base + rng.normal(0, 40, (px, px, 3))).clip(0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:07d}.jpg", quality=90)


def size_of(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--px", type=int, default=64)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--model", default="resnet10t", help="a timm model, random weights")
    parser.add_argument("--work", type=Path, required=True, help="a folder for the images, shards, cache and run")
    args = parser.parse_args()
    folder, shards, cache = args.work / "images", args.work / "shards", args.work / "features"
    timings = {}
    if not folder.is_dir():
        start = time.perf_counter()
        textures(folder, args.images, args.px, args.classes)
        timings["make images s"] = time.perf_counter() - start
    if not (shards / "dataset.json").is_file():
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "finetune", "shard", str(folder), str(shards), "--shard-size", "10000"],
                       check=True, stdout=subprocess.DEVNULL)
        timings["finetune shard s"] = time.perf_counter() - start
    recipe = args.work / "recipe.yaml"
    recipe.write_text(json.dumps({
        "model": {"source": "timm", "name": args.model, "weights": None},
        "data": {"root": str(shards), "image_size": args.px, "augment": "none"},
        "strategy": {"name": "feature-extract", "lr": {"head": 0.01}, "head_solver": "sgd"},
        "train": {"epochs": 1, "batch_size": 256}, "features": {"dir": str(cache)},
        "run": {"output": str(args.work / "run")}}))
    start = time.perf_counter()
    shutil.rmtree(args.work / "run", ignore_errors=True)
    run = subprocess.run([sys.executable, "-m", "finetune", "train", str(recipe)],
                         capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
    timings["train (index, feature pass, 1 epoch) s"] = time.perf_counter() - start
    if run.returncode:
        sys.exit(run.stderr[-3000:])
    said = [line for line in run.stderr.splitlines() if "ran once per image" in line]
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # the largest child: the run
    print(json.dumps({"images": args.images, "px": args.px, "model": args.model, **{k: round(v, 1) for k, v in
                      timings.items()}, "feature pass": said[0].strip() if said else None,
                      "peak RSS GiB": round(peak, 2), "cache GiB": round(size_of(cache) / 2**30, 3),
                      "shards GiB": round(size_of(shards) / 2**30, 3)}, indent=1))


if __name__ == "__main__":
    main()
