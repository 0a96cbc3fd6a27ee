"""Active learning, simulated: does labelling the photos `finetune suggest` picks beat labelling random ones?

For each labelled dataset, its train split plays the unlabelled pool (labels hidden) and its val split scores.
Start from START photos per class (seeded); each round, fit the solved head (train.head_solver: the L-BFGS
logistic regression and its L2 sweep, scored on val as `strategy.head_solver: lbfgs` does) on the labelled
embeddings, record val accuracy, then label BATCH more photos chosen by each rule from the head's
probabilities and the embeddings (deploy.selection), until ROUNDS batches are in. Embeddings: the frozen
backbone's pooled features, through the feature cache (audit.embeddings). Writes the curves as CSV and PNG.

    PYTHONPATH=. python benchmarks/active_learning.py ../shared/datasets/hymenoptera data/sample \
        /tmp/dev/hym-crops /tmp/dev/cifar5 --seeds 5 --png docs/active-learning.png --csv /tmp/active-learning.csv
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np
import torch

from finetune.audit.embeddings import load_embeddings
from finetune.config import load_recipe
from finetune.console import stderr_console
from finetune.deploy.selection import POOL, by_margin, kcenter_greedy, margins, select
from finetune.plotting import figure, save_png
from finetune.train.head_solver import sweep_l2

RECIPE = Path("recipes/efficientnet-lite0-feature-extract.yaml")
SHOWN = ("random", "margin", "margin+k-center", "suggest")  # in the figure; the pool sizes only in the table
COLOURS = {"random": "tab:gray", "margin": "tab:blue", "margin+k-center": "tab:green", "suggest": "tab:red"}


def choose(rule: str, probs: torch.Tensor, x: torch.Tensor, n: int, rng: np.random.Generator) -> list[int]:
    """n positions among the unlabelled rows by `rule`: random, margin (the n smallest), margin+k-center (k-center
    greedy on the 3n smallest), suggest (deploy.selection.select) or suggest-pN (its pool factor N)."""
    if rule == "random":
        return rng.choice(len(probs), size=min(n, len(probs)), replace=False).tolist()
    if rule == "margin":
        return by_margin(margins(probs))[:n].tolist()
    if rule == "margin+k-center":
        pool = by_margin(margins(probs))[:3 * n]
        return pool[kcenter_greedy(torch.nn.functional.normalize(x[pool], dim=1), n)].tolist()
    pool = int(rule.removeprefix("suggest-p")) if rule.startswith("suggest-p") else POOL
    return [c.index for c in select(probs, x, n, pool)]


def fit(x: torch.Tensor, y: torch.Tensor, vx: torch.Tensor, vy: torch.Tensor, classes: int):
    """The solved head on these labelled rows (coarse L2 grid, chosen by val loss): (head, val accuracy)."""
    sweep = sweep_l2(x, y, vx, vy, classes, fine=False)
    return sweep.head, float((sweep.head.logits(vx).argmax(1) == vy).float().mean())


def curve(rule: str, seed: int, x: torch.Tensor, y: torch.Tensor, vx: torch.Tensor, vy: torch.Tensor,
          classes: int, start: int, batch: int, rounds: int) -> list[tuple[int, float]]:
    """(labelled count, val accuracy) after each round; the same seeded start for every rule."""
    rng = np.random.default_rng(seed)
    labelled = np.concatenate([rng.choice(np.flatnonzero(y.numpy() == c), start, replace=False)
                               for c in range(classes)]).tolist()
    points = []
    for r in range(rounds + 1):
        head, acc = fit(x[labelled], y[labelled], vx, vy, classes)
        points.append((len(labelled), acc))
        if r == rounds:
            break
        rest = np.setdiff1d(np.arange(len(y)), labelled)
        probs = head.logits(x[rest]).softmax(1)
        labelled += rest[choose(rule, probs, x[rest], batch, rng)].tolist()
    return points


def run_dataset(root: Path, rules: list[str], seeds: int, start: int, batch: int | None, rounds: int) -> dict:
    emb = load_embeddings(load_recipe(RECIPE, data=root), stderr_console())
    features, labels = torch.from_numpy(emb.features).float(), torch.from_numpy(emb.labels).long()
    train, val = emb.split == 0, emb.split == 1
    x, y, vx, vy = features[train], labels[train], features[val], labels[val]
    classes = len(emb.class_names)
    batch = batch or 5 * classes
    _, full = fit(x, y, vx, vy, classes)
    curves = {rule: [curve(rule, s, x, y, vx, vy, classes, start, batch, rounds) for s in range(seeds)]
              for rule in rules}
    return {"name": root.name, "train": len(y), "val": len(vy), "classes": classes, "batch": batch, "full": full,
            "curves": curves}


def summary(result: dict, rule: str) -> tuple[list[int], np.ndarray]:
    """(labelled counts, seeds x points accuracies)."""
    runs = result["curves"][rule]
    return [n for n, _ in runs[0]], np.array([[a for _, a in run] for run in runs])


def write_csv(results: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["dataset", "rule", "seed", "labelled", "val_acc"])
        for res in results:
            for rule, runs in res["curves"].items():
                for seed, run in enumerate(runs):
                    writer.writerows([res["name"], rule, seed, n, f"{a:.4f}"] for n, a in run)


def plot(results: list[dict], path: Path) -> None:
    """One panel per dataset: mean val accuracy over seeds against labelled photos, per rule; a band of one
    standard error around random and suggest (the comparison that matters; the others' bands only clutter)."""
    cols = min(2, len(results))
    rows = -(-len(results) // cols)
    fig = figure(5.2 * cols, 3.9 * rows)
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    seeds = len(results[0]["curves"]["random"])
    for ax, res in zip(axes, results):
        for rule in (r for r in SHOWN if r in res["curves"]):
            counts, acc = summary(res, rule)
            mean, err = acc.mean(0), acc.std(0, ddof=1) / np.sqrt(len(acc)) if len(acc) > 1 else 0 * acc[0]
            ax.plot(counts, mean, "o-", ms=3.5, color=COLOURS[rule], label=rule, lw=2.2 if rule == "suggest" else 1.3)
            if rule in ("random", "suggest"):
                ax.fill_between(counts, mean - err, mean + err, color=COLOURS[rule], alpha=0.15, lw=0)
        ax.axhline(res["full"], color="black", ls="--", lw=1, label=f"all {res['train']} labelled")
        ax.set(title=f"{res['name']}: {res['classes']} classes, {res['train']} photos to pick from",
               xlabel="labelled photos", ylabel="val accuracy")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    for ax in axes[len(results):]:
        ax.set_visible(False)
    fig.suptitle(f"Solved head on EfficientNet-Lite0 embeddings, mean of {seeds} seeds "
                 "(band: one standard error)", fontsize=11)
    save_png(fig, path)


def read_csv(path: Path, roots: list[Path]) -> list[dict]:
    """The results a --csv file holds, for --replot (dataset sizes and the all-labelled line recomputed)."""
    rows = list(csv.DictReader(open(path)))
    results = []
    for root in roots:
        emb = load_embeddings(load_recipe(RECIPE, data=root), stderr_console())
        x, y = torch.from_numpy(emb.features).float(), torch.from_numpy(emb.labels).long()
        train, val = torch.from_numpy(emb.split == 0), torch.from_numpy(emb.split == 1)
        classes = len(emb.class_names)
        curves: dict[str, list] = {}
        for r in (r for r in rows if r["dataset"] == root.name):
            runs = curves.setdefault(r["rule"], [])
            while len(runs) <= int(r["seed"]):
                runs.append([])
            runs[int(r["seed"])].append((int(r["labelled"]), float(r["val_acc"])))
        results.append({"name": root.name, "train": int(train.sum()), "val": int(val.sum()), "classes": classes,
                        "batch": None, "full": fit(x[train], y[train], x[val], y[val], classes)[1], "curves": curves})
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path, nargs="+", help="labelled datasets with train/ and val/")
    ap.add_argument("--rules", default="random,margin,margin+k-center,suggest,suggest-p3,suggest-p5")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--start", type=int, default=2, help="labelled photos per class to start from")
    ap.add_argument("--batch", type=int, default=None, help="photos labelled per round (default 5 per class)")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--png", type=Path, default=None)
    ap.add_argument("--csv", type=Path, default=None)
    ap.add_argument("--replot", action="store_true", help="draw --png from the curves in --csv, computing nothing")
    args = ap.parse_args()
    torch.set_num_threads(1)  # tiny matmuls (as train.solved does): one thread is faster, and the machine is shared
    if args.replot:
        plot(read_csv(args.csv, args.data), args.png)
        return
    rules = args.rules.split(",")
    results = []
    for root in args.data:
        t = time.perf_counter()
        res = run_dataset(root, rules, args.seeds, args.start, args.batch, args.rounds)
        results.append(res)
        print(f"\n{res['name']}: {res['train']} train / {res['val']} val, {res['classes']} classes, batch "
              f"{res['batch']}, all labelled {res['full']:.3f} ({time.perf_counter() - t:.0f} s)", flush=True)
        counts = summary(res, rules[0])[0]
        print("rule".ljust(16) + "".join(f"{n:>8}" for n in counts) + "    mean gain vs random")
        base = summary(res, "random")[1].mean(0) if "random" in rules else None
        for rule in rules:
            acc = summary(res, rule)[1].mean(0)
            gain = f"    {np.mean(acc[1:] - base[1:]) * 100:+.1f} points" if base is not None else ""
            print(rule.ljust(16) + "".join(f"{a:8.3f}" for a in acc) + gain, flush=True)
    if args.csv:
        write_csv(results, args.csv)
    if args.png:
        plot(results, args.png)
        print(f"\n{args.png}")


if __name__ == "__main__":
    main()
