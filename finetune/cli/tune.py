"""`finetune tune`: search a recipe's hyper-parameters with Optuna (tune.study)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from .app import app
from .boundary import command
from .boundary import tune as tune_process
from .options import DataOpt, SetOpt


@app.command("tune")
@command
def tune_recipe(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file whose hyper-parameters to search (see recipes/): "
                                                "each trial trains it with the trial's values.")],
    trials: Annotated[int, typer.Option(
        min=1, help="Finished trials the study should have, counting those of earlier runs of this command and of "
                    "other processes sharing the study.")] = 30,
    budget: Annotated[Optional[str], typer.Option(
        help="Wall-clock time for this command: 90s, 20m, 1h30m. A trial starts only while the longest trial so far "
             "would still end within it, and gets what is left as its train.budget.")] = None,
    space: Annotated[Optional[Path], typer.Option(
        help="YAML file mapping dotted recipe keys to {type: float|int|categorical, low, high, log, choices}. "
             "Default: the learning rate of each trained group, optim.name, optim.weight_decay, schedule.name, "
             "schedule.warmup_epochs and model.head.dropout (docs/tune.md).")] = None,
    data: DataOpt = None,
    set_: SetOpt = None,
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="The study's folder (default: runs/tune-NAME, under run.dir): study.db, the trials' "
                               "run folders trial-K/, best.yaml, trials.csv, study.png. The same folder again "
                               "resumes the study.")] = None,
    storage: Annotated[Optional[str], typer.Option(
        help="Optuna storage URL of a study shared by processes on several machines (e.g. "
             "postgresql://user@host/db, with its driver installed). Default: sqlite:///OUTPUT/study.db, which "
             "processes on this machine share.")] = None,
    seed: Annotated[int, typer.Option(
        min=0, help="Seeds the TPE sampler (moved on by the trials already in the study); give each process of a "
                    "shared study its own.")] = 0,
):
    """Search RECIPE's hyper-parameters: Optuna's TPE sampler, with median pruning on the val loss of each epoch.

    Each trial is a normal run in OUTPUT/trial-K/ (predict, evaluate and report take it); trials that change only
    the head, the optimizer or the schedule share one feature pass. The study lives in OUTPUT/study.db: the same
    command again goes on without repeating finished trials, and several processes given the same folder (or
    --storage) share the trials. Writes OUTPUT/best.yaml (train it with `finetune train OUTPUT/best.yaml`),
    trials.csv, and study.png (parallel coordinates and parameter importance).
    """
    from ..config import build_recipe, check_space, default_space, load_space, override_tree, read_yaml, search_base
    from ..config.recipe import parse_duration
    from ..errors import ConfigError

    if importlib.util.find_spec("optuna") is None:
        raise ConfigError("finetune tune needs Optuna, which is not installed: pip install 'finetune[tune]'")
    try:
        seconds = parse_duration(budget) if budget is not None else None
    except ValueError as exc:
        raise ConfigError(f"--budget {exc}") from None
    tree = override_tree(read_yaml(recipe), set_ or [], flags={"data.root": str(data)} if data is not None else None)
    base = search_base(tree)  # a mistake in the recipe or the space fails here, before torch
    config = build_recipe(base, source=str(recipe))
    name = config.run.name or recipe.stem
    searched = load_space(space) if space is not None else default_space(config)
    check_space(searched, base, str(space) if space is not None else "the default space")
    tune_process()
    import optuna

    if os.environ.get("FINETUNE_DEBUG") != "1":  # Optuna's INFO lines repeat what each trial's line says
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    from ..console import stderr_console
    from ..tune.study import StudySpec, run_study, summary_lines

    folder = output if output is not None else Path(config.run.dir) / f"tune-{name}"
    result = run_study(StudySpec(folder, name, trials, seconds, seed, storage), base, searched, stderr_console())
    for line in summary_lines(result):
        typer.echo(line, err=True)
    typer.echo(str(result.best_yaml or result.folder))
