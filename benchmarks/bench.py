"""finetune vs a hand-written tutorial loop, side by side in one run; then predict vs a forward-only loop.

Each side runs in its own subprocess (cold start: imports, model build, data loading all count) and its
peak RSS is read from that process's rusage. Example (the README table):

    python benchmarks/bench.py --data ../shared/datasets/hymenoptera --source timm \
        --name tf_efficientnet_lite0 --weights ../shared/weights/tf_efficientnet_lite0.pth \
        --strategy feature-extract --epochs 10

--synthetic N generates an ImageFolder (N train + N/2 val JPEGs per class, 500x375) in a temp dir, so
the benchmark runs on a machine that has only this repository (e.g. a GPU row with --device cuda).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
LAST_STAGE = {"timm": "blocks.5,blocks.6,conv_head,bn2", "torchvision": "layer4"}  # = finetune's last_stage


def run(cmd: list[str]) -> tuple[float, float, str]:
    """(wall seconds, peak RSS MiB of the largest process, stdout) of one command in a fresh process."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO, env=env)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed ({os.waitstatus_to_exitcode(status)}): {' '.join(cmd)}")
    return wall, usage.ru_maxrss / 1024, out


def synthetic_folder(root: Path, per_class: int) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", max(2, per_class // 2))):
        for c, name in enumerate(("ants", "bees")):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                y, x = np.mgrid[0:375, 0:500]
                base = np.stack([(x * (c + 1) + y) % 256, (y * 2 + 40 * c) % 256, (x + y * c) % 256], -1)
                noise = rng.integers(0, 60, base.shape)
                image = Image.fromarray((base + noise).clip(0, 255).astype("uint8"))
                image.save(root / split / name / f"{i}.jpg", quality=90)
    return root


def write_recipe(args, path: Path, data: Path, out: Path) -> Path:
    lr = {"head": args.lr_head}
    if args.strategy != "feature-extract":
        lr["last_stage"] = args.lr_last_stage
    tree = {
        "model": {"source": args.source, "name": args.name, "weights": args.weights},
        "data": {"root": str(data), "augment": args.augment, "image_size": args.image_size,
                 **({"workers": args.workers} if args.workers is not None else {})},
        # the same epochs as the hand-written loop; the L-BFGS head (the feature-extract default) does other work
        "strategy": {"name": args.strategy, "lr": lr, "head_solver": "sgd"},
        "features": {"dir": str(out / "cache")},  # a cold cache: computing the features is part of the time
        "optim": {"name": "adam"}, "schedule": {"name": "constant"},
        "train": {"epochs": args.epochs, "batch_size": args.batch_size, "seed": 0, "device": args.device, "amp": True},
        "run": {"output": str(out / "run")},
    }
    path.write_text(yaml.safe_dump(tree))
    return path


def help_seconds() -> dict[str, float]:
    times = {}
    for args in (["--help"], ["predict", "--help"]):
        walls = [run([sys.executable, "-m", "finetune", *args])[0] for _ in range(5)]
        times[" ".join(args)] = statistics.median(walls)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, help="ImageFolder root with train/ and val/ class folders")
    ap.add_argument("--synthetic", type=int, default=0, help="generate N train images per class instead of --data")
    ap.add_argument("--source", choices=["timm", "torchvision"], default="torchvision")
    ap.add_argument("--name", default="resnet50")
    ap.add_argument("--weights", default=None, help="local state-dict file (default: random init; fine for speed)")
    ap.add_argument("--strategy", choices=["feature-extract", "last-stage"], default="feature-extract")
    ap.add_argument("--augment", choices=["none", "standard"], default=None,
                    help="both sides (default: none for feature-extract, standard for last-stage, as in recipes/)")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--image-size", type=int, default=None)
    ap.add_argument("--lr-head", type=float, default=1e-3)
    ap.add_argument("--lr-last-stage", type=float, default=1e-4)
    ap.add_argument("--workers", default=None,
                    help="finetune's data.workers (default: auto); the hand-written loop uses 4")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (AMP bf16 on both sides)")
    ap.add_argument("--predict", action="store_true", help="also time predict vs a forward-only loop on val/")
    ap.add_argument("--skip-handwritten", action="store_true", help="only run finetune (and predict)")
    args = ap.parse_args()
    args.augment = args.augment or ("none" if args.strategy == "feature-extract" else "standard")
    tmp = Path(tempfile.mkdtemp(prefix="finetune-bench-"))
    data = synthetic_folder(tmp / "data", args.synthetic) if args.synthetic else args.data.resolve()
    if args.weights:
        args.weights = str(Path(args.weights).resolve())

    rows = {}
    recipe = write_recipe(args, tmp / "recipe.yaml", data, tmp)
    wall, rss, _ = run([sys.executable, "-m", "finetune", "train", str(recipe)])
    metrics = list(csv.DictReader((tmp / "run" / "metrics.csv").open()))
    rows["finetune"] = {"wall": wall, "rss": rss, "epoch_s": [float(m["seconds"]) for m in metrics],
                        "val_acc": float(metrics[-1]["val_acc"])}
    if not args.skip_handwritten:
        cmd = [sys.executable, str(REPO / "benchmarks" / "handwritten.py"), "--data", str(data),
               "--source", args.source,
               "--name", args.name, "--strategy", args.strategy, "--last-stage", LAST_STAGE[args.source],
               "--augment", args.augment, "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
               "--lr-head", str(args.lr_head), "--lr-last-stage", str(args.lr_last_stage), "--device", args.device]
        cmd += ["--weights", args.weights] if args.weights else []
        cmd += ["--image-size", str(args.image_size)] if args.image_size else []
        cmd += ["--amp"] if args.device.startswith("cuda") else []
        wall, rss, out = run(cmd)
        result = json.loads(out.strip().splitlines()[-1])
        rows["hand-written"] = {"wall": wall, "rss": rss, "epoch_s": [e["seconds"] for e in result["epochs"]],
                                "val_acc": result["epochs"][-1]["val_acc"]}
    n_images = sum(1 for split in ("train", "val") for p in (data / split).rglob("*") if p.is_file())

    print(f"\n{args.source}:{args.name} {args.strategy}, {args.epochs} epochs, batch {args.batch_size}, "
          f"augment {args.augment}, device {args.device}, {n_images} images (train+val), {os.cpu_count()} CPUs")
    print(f"{'':14} {'wall s':>8} {'images/s':>9} {'median epoch s':>15} {'peak RSS MiB':>13} {'val acc':>8}")
    for name, r in rows.items():
        print(f"{name:14} {r['wall']:8.1f} {n_images * args.epochs / r['wall']:9.1f} "
              f"{statistics.median(r['epoch_s']):15.2f} {r['rss']:13.0f} {r['val_acc']:8.3f}")
    if len(rows) == 2:
        f, h = rows["finetune"], rows["hand-written"]
        print(f"ratio hand-written / finetune: wall {h['wall'] / f['wall']:.2f}x, "
              f"median epoch {statistics.median(h['epoch_s']) / statistics.median(f['epoch_s']):.2f}x, "
              f"val acc {f['val_acc'] - h['val_acc']:+.3f} (finetune - hand-written)")

    if args.predict:
        _, _, out = run([sys.executable, str(REPO / "benchmarks" / "predict_speed.py"), str(tmp / "run" / "best.pt"),
                         str(data / "val"), "--batch-size", "32", "--device", args.device])
        r = json.loads(out.strip().splitlines()[-1])
        print(f"predict {r['predict']:.1f} images/s vs forward-only {r['forward']:.1f} images/s: "
              f"{100 * r['predict'] / r['forward']:.0f}%; vs forward-only with BatchNorm folded (predict's own "
              f"forward) {r['forward_folded']:.1f}: {100 * r['predict'] / r['forward_folded']:.0f}% "
              f"({r['images']} images, batch 32, median of {r['rounds']})")
    for cmd, seconds in help_seconds().items():
        print(f"finetune {cmd}: {seconds:.2f} s (median of 5, whole process)")
    print(f"(work files in {tmp})")


if __name__ == "__main__":
    main()
