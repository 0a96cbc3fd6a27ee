"""How fast `finetune inspect` checks a few thousand images, cold and warm cache, next to decoding them all.

    python benchmarks/scan_speed.py ../shared/datasets/hymenoptera --copies 8

Copies ROOT's images COPIES times into a temporary folder (each copy re-encoded one byte different so
nothing is a duplicate and nothing is cached), then, in one run, times per repeat: the doctor with an
empty cache (cold), the doctor again (warm: only stat calls), and a plain full decode of every file
with finetune's own loader (what a scan without header/hash shortcuts would cost). Prints medians and
ratios. The OS page cache stays warm for all three (dropping it needs root), so "cold" means
finetune's cache is empty, not the disk.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path


def replicate(root: Path, out: Path, copies: int) -> int:
    files = [p for p in sorted(root.rglob("*")) if p.is_file()]
    n = 0
    for c in range(copies):
        for p in files:
            dest = out / p.relative_to(root).parent / f"c{c}-{p.name}"
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(p.read_bytes() + c.to_bytes(2, "big"))  # distinct content, still a valid image
            n += 1
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path)
    ap.add_argument("--copies", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        n = replicate(args.root, data, args.copies)
        from finetune.data.doctor import inspect_dataset
        from finetune.data.images import load_rgb

        times = {"cold": [], "warm": [], "full decode": []}
        for r in range(args.repeats):
            os.environ["FINETUNE_CACHE"] = str(Path(tmp) / f"cache{r}")
            for kind in ("cold", "warm"):
                start = time.perf_counter()
                report = inspect_dataset(data)
                times[kind].append(time.perf_counter() - start)
            start = time.perf_counter()
            for p in sorted(data.rglob("*")):
                if p.is_file():
                    try:
                        load_rgb(p)
                    except Exception:
                        pass
            times["full decode"].append(time.perf_counter() - start)
        size = sum(p.stat().st_size for p in data.rglob("*") if p.is_file()) / 2**20
        print(f"{n} files, {size:.0f} MiB, {os.cpu_count()} CPU cores, {len(report.findings)} findings")
        base = statistics.median(times["full decode"])
        for kind, ts in times.items():
            med = statistics.median(ts)
            print(f"{kind:12s} median {med:6.2f} s  {n / med:8.0f} files/s  {base / med:6.1f}x vs full decode  "
                  f"(runs: {', '.join(f'{t:.2f}' for t in ts)})")


if __name__ == "__main__":
    main()
