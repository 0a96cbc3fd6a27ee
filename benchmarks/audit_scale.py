"""How the audit's near-duplicate search scales: N random unit vectors of dimension D (a planted near copy of
row 0 in row 1), timed through finetune.audit.duplicates.similar_pairs (blocked torch.mm, top-k per row).

    PYTHONPATH=. python benchmarks/audit_scale.py --n 100000 --dim 1280
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from finetune.audit.duplicates import THRESHOLD, similar_pairs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=1280)
    args = ap.parse_args()
    torch.manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(args.n, args.dim), dim=1)
    x[1] = torch.nn.functional.normalize(x[0] + 0.01 * torch.randn(args.dim), dim=0)  # cosine ~0.94
    start = time.perf_counter()
    lo, hi, s = similar_pairs(x, THRESHOLD)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"{args.n} x {args.dim}: {seconds:.1f} s on {torch.get_num_threads()} threads, peak RSS {peak:.2f} GiB; "
          f"pairs above {THRESHOLD}: {list(zip(lo.tolist(), hi.tolist()))}")


if __name__ == "__main__":
    main()
