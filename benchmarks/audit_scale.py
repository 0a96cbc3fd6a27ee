"""How the audit's neighbour search scales: N random unit vectors of dimension D, with PAIRS planted near copies
(cosine from just above the audit's threshold to 0.99, while random pairs in 1280 dims stay below ~0.2), searched by
finetune.neighbors.nearest (each row's TOP_K most similar others, itself left out), exact (blocked torch.mm) and
by the faiss inverted file ("index"), each size and method in its own process, so time and peak memory (ru_maxrss: the
vectors themselves are N x D x 4 bytes, 5.1 GB at 1M x 1280) are its own.

For each run: the planted pairs found at the threshold (nothing else can pass it), and recall@TOP_K against the
exact search on SAMPLE query rows (cheap even at 1M: SAMPLE x N products), with the mean amount by which the
TOP_K-th similarity found falls short of the true one (what a k-NN score would see). Random rows are the worst
case for an inverted file: their "nearest" neighbours are noise (cosines ~0.1 apart by ~0.01), so recall@k is low
there while every near copy is found. The exact search runs up to
--exact-up-to (N^2: 100k took 350 s on 2 quiet cores; 1M would take ~10 hours).

    PYTHONPATH=. python benchmarks/audit_scale.py --sizes 10000 100000 1000000 --dim 1280
    PYTHONPATH=. python benchmarks/audit_scale.py --sizes 100000 --exact-up-to 0 --probes 4   # another PROBES
    PYTHONPATH=. python benchmarks/audit_scale.py --sizes 2000 --dim 64      # a smoke run, seconds
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np
import torch

from finetune import neighbors
from finetune.audit.duplicates import THRESHOLD, TOP_K
from finetune.neighbors import nearest, uses_approximate

PAIRS = 100
SAMPLE = 1000


def vectors(n: int, dim: int, seed: int = 0) -> tuple[torch.Tensor, set[tuple[int, int]]]:
    """n random unit rows; rows 2i+1 (i < PAIRS) are near copies of rows 2i at cosines spread over THRESHOLD + 0.02
    to 0.99 (each lands within ~0.01 of its target)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=1)
    planted = set()
    for i, cos in enumerate(np.linspace(THRESHOLD + 0.02, 0.99, min(PAIRS, n // 2))):
        a, b = 2 * i, 2 * i + 1
        sigma = float(np.sqrt((1 / cos**2 - 1) / dim))  # noise of norm sigma * sqrt(dim) around a unit row
        x[b] = torch.nn.functional.normalize(x[a] + sigma * torch.randn(dim, generator=g), dim=0)
        planted.add((a, b))
    return x, planted


def one(n: int, dim: int, method: str) -> dict:
    """One size by one method, in this process: the search timed, then checked."""
    x, planted = vectors(n, dim)
    start = time.perf_counter()
    sims, idx = nearest(x, x, TOP_K, exclude_self=True, approximate=method == "index")
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    rows = torch.arange(n).unsqueeze(1).expand_as(idx)
    keep = sims >= THRESHOLD
    found = {(min(a, b), max(a, b)) for a, b in zip(rows[keep].tolist(), idx[keep].tolist())}
    sample = torch.from_numpy(np.random.default_rng(1).choice(n, min(SAMPLE, n), replace=False))
    ev, ei = nearest(x[sample], x, TOP_K + 1, approximate=False)
    hits, gap = 0, 0.0
    for r, row in enumerate(sample.tolist()):
        truth = [(j, v) for j, v in zip(ei[r].tolist(), ev[r].tolist()) if j != row][:TOP_K]
        hits += len({j for j, _ in truth} & set(idx[row].tolist()))
        gap += truth[-1][1] - float(sims[row, -1])
    return {"n": n, "dim": dim, "method": method, "seconds": seconds, "peak_gib": peak,
            "threads": torch.get_num_threads(), "planted": len(planted), "planted_found": len(found & planted),
            "other_pairs": len(found - planted), "recall_at_k": hits / (len(sample) * TOP_K),
            "kth_gap": gap / len(sample)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--exact-up-to", type=int, default=100_000, help="largest N searched exactly as well")
    ap.add_argument("--probes", type=int, help="cells each query of the index looks into (default: "
                    "finetune.neighbors.PROBES), to measure another setting")
    ap.add_argument("--one", nargs=2, metavar=("N", "METHOD"), help=argparse.SUPPRESS)  # the child process
    args = ap.parse_args()
    if args.probes:
        neighbors.PROBES = args.probes
    if args.one:
        print(json.dumps(one(int(args.one[0]), args.dim, args.one[1])))
        return
    print(f"| N | dim | method | auto picks | seconds | peak RSS GiB | planted pairs found | other pairs | "
          f"recall@{TOP_K} vs exact ({SAMPLE} rows) | {TOP_K}th similarity short by |")
    print("| --- " * 10 + "|")
    for n in args.sizes:
        auto = "index" if uses_approximate(n, n, args.dim) else "exact"
        for method in ("exact", "index") if n <= args.exact_up_to else ("index",):
            probes = ["--probes", str(args.probes)] if args.probes else []
            out = subprocess.run([sys.executable, __file__, "--dim", str(args.dim), *probes, "--one", str(n), method],
                                 capture_output=True, text=True)
            if out.returncode:
                print(f"| {n} | {args.dim} | {method} | {auto} | failed: {out.stderr.strip()[-300:]} |", flush=True)
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"| {n} | {args.dim} | {method} | {auto} | {r['seconds']:.1f} ({r['threads']} threads) | "
                  f"{r['peak_gib']:.2f} | {r['planted_found']}/{r['planted']} | {r['other_pairs']} | "
                  f"{r['recall_at_k']:.3f} | {r['kth_gap']:.4f} |", flush=True)


if __name__ == "__main__":
    main()
