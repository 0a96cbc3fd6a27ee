"""train.batch_size auto on this machine: training images/s per batch size for a recipe, the way the search times
them (train.batch_size.Trials: the run's own step, frozen prefix and train images; a warm-up step, then the median
of TIMED_STEPS), each size --rounds times, the rounds alternating the order of the sizes; then what auto chose in
each of --searches searches. The process is tuned as the command line tunes its own (runtime.process).

PYTHONPATH=. python benchmarks/batch_size_speed.py recipes/efficientnet-lite0-last-stage.yaml --rounds 3
PYTHONPATH=. python benchmarks/batch_size_speed.py recipes/efficientnet-lite0-last-stage.yaml --rounds 3 \
    --set model.source=torchvision model.name=resnet18 model.weights=null strategy.name=full data.image_size=224
"""

import argparse
import statistics
import time
from pathlib import Path

from finetune.runtime.process import tune_process


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe", type=Path)
    parser.add_argument("--set", nargs="*", default=[], help="recipe overrides, key=value")
    parser.add_argument("--rounds", type=int, default=3, help="timings of each size")
    parser.add_argument("--searches", type=int, default=1, help="searches by train.batch_size auto after the timings")
    parser.add_argument("--max", type=int, default=128, help="the largest size timed")
    args = parser.parse_args()
    tune_process()

    from finetune.config import load_recipe
    from finetune.console import stderr_console
    from finetune.train import batch_size
    from finetune.train.setup import build_step, prepare

    console = stderr_console()
    recipe = load_recipe(args.recipe, [*args.set, "train.batch_size=2"])
    setup = prepare(recipe, console)
    stored = setup.features.fixed and setup.split is not None
    sizes = [2 ** k for k in range(1, args.max.bit_length()) if 2 ** k <= len(setup.splits.train)]
    trials = batch_size.Trials(build_step(setup.step.model, setup.split, setup.plan, setup.recipe, setup.balance,
                                          setup.compute, 1), setup.loaders.train_images, setup.split, stored,
                               setup.compute, recipe.train.seed)
    rates = {n: [] for n in sizes}
    with batch_size.untouched(setup.step.model):
        trials.step.train_mode()
        for r in range(args.rounds):
            for n in sizes if r % 2 == 0 else sizes[::-1]:
                batch = trials.batch(n)
                trials.run(batch)
                seconds = []
                for _ in range(batch_size.TIMED_STEPS):
                    start = time.perf_counter()
                    trials.run(batch)
                    seconds.append(time.perf_counter() - start)
                rates[n].append(n / statistics.median(seconds))
                console.print(f"round {r + 1} batch {n}: {rates[n][-1]:.1f} images/s", style="dim")
    if args.rounds:
        table(recipe, setup, sizes, rates, args.rounds)
    del trials
    chosen = []
    for _ in range(args.searches):
        start = time.perf_counter()
        size = batch_size.find_batch_size(
            lambda: build_step(setup.step.model, setup.split, setup.plan, setup.recipe, setup.balance, setup.compute,
                               1), setup.loaders.train_images, setup.split, stored, setup.compute, recipe.train.seed,
            console)
        chosen.append(f"{size} ({time.perf_counter() - start:.0f} s)")
    print(f"  auto chose: {', '.join(chosen)}")


def table(recipe, setup, sizes, rates, rounds):
    from finetune.train import batch_size

    print(f"{recipe.model.source}:{recipe.model.name} {recipe.strategy.name}, {setup.info.preprocessing.size} px, "
          f"{setup.compute.device}; training images/s, median of {rounds} (each a median of "
          f"{batch_size.TIMED_STEPS} steps after a warm-up)")
    for n in sizes:
        print(f"  batch {n:4d}: {statistics.median(rates[n]):7.1f}  ({', '.join(f'{v:.1f}' for v in rates[n])})")


if __name__ == "__main__":
    main()
