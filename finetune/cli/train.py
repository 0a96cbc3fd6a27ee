"""`finetune train`, `lr-find` and `ablate`: the commands that train."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import FinetuneError
from .app import app
from .boundary import command, tune, write_run_report
from .options import DataOpt, Device, SetOpt


@app.command()
@command
def train(
    recipe: Annotated[Optional[Path], typer.Argument(
        help="Recipe YAML file (see recipes/), or a folder of photos (class folders, or train/ and val/ holding "
             "them), @labels.csv (path, label and optional split columns), shards or hf:DATASET to train without a "
             "recipe: the plan is chosen for --budget. Not with --resume.")] = None,
    data: DataOpt = None,
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="Run folder to create (default: a new folder under runs/); for a folder of photos, "
                               "the folder of the plan's runs (OUTPUT/solved-head, OUTPUT/last-stage).")] = None,
    set_: SetOpt = None,
    resume: Annotated[Optional[Path], typer.Option(
        "--resume", metavar="RUN_DIR", help="Continue the run in this folder from its last.pt, with its own "
                                            "recipe.yaml.")] = None,
    exist_ok: Annotated[bool, typer.Option(
        "--exist-ok", help="Reuse the run folder if it exists (its checkpoints are overwritten) instead of making "
                           "NAME-2.")] = False,
    nproc: Annotated[Optional[int], typer.Option(
        "--nproc", min=1, help="Train data-parallel on N processes of this machine (one per GPU, or on the CPU): "
                               "starts torchrun for you. For several machines run torchrun yourself.")] = None,
    budget: Annotated[Optional[str], typer.Option(
        help="Wall-clock time for the whole run: 90s, 10m, 1h30m (train.budget). With a folder the plan is sized "
             "to it (default 10m; auto: as long as the whole plan takes on this machine, at most 1h); with a recipe "
             "no epoch starts that would end past it.")] = None,
    model: Annotated[Optional[str], typer.Option(
        help="With a folder: the backbone the plan uses, lite0, lite1 or lite2 (default: the largest that fits "
             "the budget).")] = None,
):
    """Train a classifier as RECIPE says and write best.pt, last.pt, metrics.csv and recipe.yaml into a run folder.

    `finetune train PHOTOS/ --budget 10m` needs no recipe: it measures the data and this machine, prints the plan
    and why, runs it (the head solved on cached features, then last-stage when it fits), each run with its own
    recipe.yaml, and prints the folder of the better one on val. A stopped run (Ctrl-C, SIGTERM, a crash)
    continues where it left off with --resume RUN_DIR. Without data.augment in the recipe, feature-extract trains
    on the frozen features computed once (no augmentation) and the other strategies use standard augmentation.
    Data parallel: `torchrun --nproc_per_node=N -m finetune train RECIPE` (or --nproc N); train.batch_size is then
    the batch over all processes.
    """
    from ..config import load_recipe
    from ..errors import ConfigError

    if resume is not None and (recipe is not None or output is not None or exist_ok):
        raise ConfigError("--resume RUN_DIR continues that run with its own recipe.yaml; leave out RECIPE, "
                          "--output and --exist-ok")
    if resume is None and recipe is None:
        raise ConfigError("give a RECIPE file to start a run, or --resume RUN_DIR to continue one")
    from ..data.folders import is_packed_root
    from ..data.lists import is_list_argument

    folder = recipe is not None and (recipe.is_dir() or is_list_argument(recipe) or is_packed_root(recipe))
    if model is not None and not folder:
        raise ConfigError("--model picks the backbone of a run planned for a folder of photos; in a recipe set "
                          "model.name")
    if folder and (nproc is not None or os.environ.get("LOCAL_RANK") is not None):  # each rank would plan anew
        raise ConfigError("a run planned for a folder is one process (each would time this machine and plan its "
                          "own); run it once, then torchrun or --nproc N with RUN_DIR/recipe.yaml")
    if folder and data is not None:
        raise ConfigError(f"{recipe} is the photos to train on already; leave out --data")
    auto = budget is not None and budget.strip().lower() == "auto"
    if auto and not folder:
        raise ConfigError("--budget auto sizes the plan for a folder of photos; with a recipe give a duration "
                          "such as 10m")
    seconds = _budget(budget) if budget is not None and not auto else None
    overrides = [*(set_ or []), *(["run.exist_ok=true"] if exist_ok else [])]
    if folder:
        return _train_folder(recipe, None if auto else seconds or DEFAULT_BUDGET, model, overrides, output)
    overrides += [f"train.budget={seconds}"] if seconds is not None else []
    if resume is not None:
        tune()
        from ..train.resume import load_run_recipe

        config = load_run_recipe(resume, overrides, data=data)
    else:
        config = load_recipe(recipe, overrides, data=data, output=output)  # a mistake in it fails before torch
        tune()
    if nproc is not None:  # the recipe is valid: now the processes
        import sys

        from ..runtime.launch import check_nproc, relaunch
        from ..train.setup import check_batch

        if config.train.batch_size != "auto":  # auto: a power of two per process, found by each
            check_batch(config.train.batch_size, nproc)
        check_nproc(nproc, config.train.device)
        raise typer.Exit(relaunch(nproc, sys.argv[1:]))
    from ..runtime.distributed import from_environment, launched, shutdown
    from ..runtime.process import die_with_launcher
    from ..train.loop import fit

    if launched():
        from ..data.shard_reader import fetch_shards

        die_with_launcher()
        fetch_shards(config.data.root)  # shards behind a URL: fetched before the first collective could time out
    dist = from_environment(config.train.device, config.train.dist_backend)
    try:
        run_dir = fit(config, resume_dir=resume, dist=dist)
    except KeyboardInterrupt:  # before training started: nothing to save
        raise FinetuneError("interrupted before the first epoch; nothing was trained") from None
    finally:
        shutdown(dist)
    if dist.main:
        typer.echo(f"report: {write_run_report(run_dir)}", err=True)
        typer.echo(str(run_dir))


DEFAULT_BUDGET = 600.0  # seconds: `finetune train PHOTOS/` without --budget


def _budget(text: str) -> float:
    from ..config.recipe import parse_duration
    from ..errors import ConfigError

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise ConfigError(f"--budget {exc}") from None


def _new_folder(path: Path) -> Path:
    """path, or path-2, path-3, ...: the first that does not exist (a planned run never reuses an earlier one's)."""
    n, candidate = 1, path
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate


def _train_folder(folder: Path, budget: float | None, model: str | None, overrides: list[str], output: Path | None):
    """`finetune train PHOTOS/`: the plan said with why before any work, its runs (OUTPUT/solved-head, then
    OUTPUT/last-stage when it fits), and the better one's folder on the last line."""
    import time

    from ..config import build_recipe
    from ..data.folders import absolute_root
    from ..data.lists import is_list_argument
    from ..train.autoplan import kept, outcome, plan_folder, run_plan

    tune()
    start = time.monotonic()
    plan = plan_folder(folder, budget, model)  # budget None: auto, chosen by the plan
    auto, budget = budget is None, plan.budget
    root = absolute_root(folder)
    name = Path(str(root)[1:]).stem if is_list_argument(root) else root.name
    parent = output or _new_folder(Path("runs") / f"auto-{name}")
    recipes = [build_recipe(p.recipe(str(root), parent / p.name, budget), overrides, source=f"planned for {folder}")
               for p in plan.phases]  # a mistake in --set fails here, before any work
    typer.echo(f"plan for {plan.data.train_images} train + {plan.data.val_images} val images, {plan.data.classes} "
               f"classes: about {plan.seconds:.0f} s of the {budget:.0f} s budget"
               f"{' (auto: the whole plan on this machine)' if auto else ''}", err=True)
    for phase in plan.phases:
        typer.echo(f"  {phase.describe()}: {phase.why}", err=True)
    try:
        runs = run_plan(plan, recipes, lambda line: typer.echo(line, err=True))
    except KeyboardInterrupt:  # before training started: nothing to save
        raise FinetuneError("interrupted before the first epoch; nothing was trained") from None
    for line in outcome(plan, runs, time.monotonic() - start):
        typer.echo(line, err=True)
    for r in runs:
        typer.echo(f"report: {write_run_report(r.run_dir)}", err=True)
    typer.echo(str(kept(runs).run_dir))


@app.command("lr-find")
@command
def lr_find(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file (see recipes/).")],
    data: DataOpt = None,
    set_: SetOpt = None,
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="Folder for lr_find.csv and lr_find.png (default: a new runs/lr-find-NAME).")] = None,
    steps: Annotated[int, typer.Option(min=10, help="Optimizer steps in the sweep.")] = 200,
):
    """Find a learning rate: train a fresh copy of the recipe's model while the lr grows from 1e-7 to 10.

    Writes lr_find.csv and lr_find.png (the loss against the lr) into a new folder, prints the suggested lr
    for the head (where the loss falls fastest) and for the other groups at the recipe's ratios, and the
    --set line to train with it. Existing runs are not touched.
    """
    from ..config import load_recipe

    config = load_recipe(recipe, set_ or [], data=data)
    tune()
    from ..train.lr_find import lr_find as run_lr_find

    result = run_lr_find(config, output, steps)
    typer.echo(f"finetune train {recipe} {result.set_line}")


@app.command()
@command
def ablate(
    data: Annotated[Optional[Path], typer.Option(
        "--data", help="ImageFolder root (train/ and val/, or class folders split 80/20); default: the shipped "
                       "data/sample textures at 32 px.")] = None,
    depths: Annotated[str, typer.Option(
        help="Comma-separated depths 6n+2; a plain net and its residual twin train at each.")] = "20,56",
    epochs: Annotated[int, typer.Option(min=1, help="Epochs for every net (the same schedule for all).")] = 8,
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="Folder to create for the results (default: a new runs/ablate, runs/ablate-2, ...).")
    ] = None,
    batch_size: Annotated[int, typer.Option(min=2, help="Images per SGD step.")] = 16,
    lr: Annotated[float, typer.Option(min=0.0, help="Peak learning rate of the cosine schedule (He et al.: 0.1).")
                  ] = 0.1,
    image_size: Annotated[int, typer.Option(min=8, help="Images are resized to SIZE x SIZE pixels.")] = 32,
    seed: Annotated[int, typer.Option(help="Seeds the init, the data order and the split.")] = 0,
    device: Device = "auto",
    amp: Annotated[bool, typer.Option(help="Mixed precision on CUDA (ignored on the CPU).")] = True,
):
    """The degradation experiment of He et al. 2015: plain CIFAR nets and their residual twins, side by side.

    Trains, from random init and on the same data in the same order, a plain net (no shortcuts) and a ResNet of
    each depth with SGD (lr 0.1, momentum 0.9, weight decay 1e-4, cosine). Writes ablation.csv (train and
    validation error per epoch and net), gradflow.csv, errors.png (training and validation error curves) and
    gradflow.png (gradient norm per layer at init and after epoch 1).
    """
    from ..errors import ConfigError

    try:
        depth_list = tuple(int(d) for d in depths.split(",") if d.strip())
    except ValueError:
        raise ConfigError(f"--depths {depths!r}: give comma-separated integers such as 20,56") from None
    tune(("torch",))
    from ..console import stderr_console
    from ..lab.ablate import AblationSpec, check_depths, default_data, run_ablation

    check_depths(depth_list)
    spec = AblationSpec(data if data is not None else default_data(), output=output, depths=depth_list,
                        epochs=epochs, batch_size=batch_size, lr=lr, image_size=image_size, seed=seed,
                        device=device, amp=amp)
    result = run_ablation(spec, console=stderr_console())
    for row in result.final():
        typer.echo(f"{row['net']:>10}: train error {100 * row['train_error']:5.1f}%  val error "
                   f"{100 * row['val_error']:5.1f}%  ({row['seconds']:.0f} s)", err=True)
    typer.echo(f"{len(result.rows)} epochs of {len(result.final())} nets in {result.seconds:.0f} s", err=True)
    typer.echo(str(result.output))


