"""Reading shards against reading the ImageFolder they were made from: training images/s (decode and the train
transform included: what a DataLoader of the run's ImageDataset delivers) at --workers worker processes, each
--rounds times, the two sources alternating. The shards are written with `finetune shard` into --out first.

PYTHONPATH=. python benchmarks/shard_read.py ../shared/datasets/hymenoptera --out /tmp/hym-shards --workers 1 2
"""

import argparse
import statistics
import time
from pathlib import Path

from finetune.runtime.process import tune_process


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, help="an ImageFolder (class folders, or train/ and val/)")
    parser.add_argument("--out", type=Path, required=True, help="a new or empty folder for its shards")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=224, help="the training crop")
    parser.add_argument("--augment", default="standard")
    args = parser.parse_args()
    tune_process()

    from finetune.data.folders import resolve_splits
    from finetune.data.images import ImageDataset
    from finetune.data.loading import one_pass_loader
    from finetune.data.shards import parse_shard_size, write_shards
    from finetune.data.transforms import draft_size, train_transform
    from finetune.preprocessing import Preprocessing

    if not (args.out / "dataset.json").is_file():
        write_shards(args.data, args.out, parse_shard_size("64MB"), 0.2, 0)
    pre = Preprocessing(args.size, round(args.size / 0.875), "bilinear", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    transform = train_transform(pre, args.augment, 0.0)
    start = time.perf_counter()
    sources = {"folder": resolve_splits(args.data, 0.2, 0), "shards": resolve_splits(args.out, 0.2, 0)}
    print(f"splits: {time.perf_counter() - start:.1f}s for both (the shards' index is cached after the first run)")
    rates = {(name, w): [] for name in sources for w in args.workers}
    for r in range(args.rounds):
        for w in args.workers:
            for name in (list(sources) if r % 2 == 0 else list(sources)[::-1]):
                images = ImageDataset(sources[name].train, transform, draft_size(pre, args.augment), pre.size)
                loader = one_pass_loader(images, 32, w, 0)
                start = time.perf_counter()
                n = sum(len(x) for x, _ in loader)
                rates[(name, w)].append(n / (time.perf_counter() - start))
    print(f"{len(sources['folder'].train)} train images, {args.size} px, augment {args.augment}, "
          f"median of {args.rounds} (images/s, worker start-up included)")
    print("| workers | ImageFolder | shards | shards / folder |")
    print("| ---: | ---: | ---: | ---: |")
    for w in args.workers:
        folder, shards = (statistics.median(rates[(n, w)]) for n in ("folder", "shards"))
        ratios = [s / f for f, s in zip(rates[("folder", w)], rates[("shards", w)])]
        print(f"| {w} | {folder:.1f} | {shards:.1f} | {statistics.median(ratios):.2f} |")


if __name__ == "__main__":
    main()
