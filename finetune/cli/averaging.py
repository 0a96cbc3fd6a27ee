"""`finetune average` and `finetune wise-ft`: new checkpoints from the weights of trained ones (deploy.soup,
deploy.wiseft)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from .app import app
from .boundary import command, tune
from .options import BatchSize, Device


class SoupMethod(str, Enum):
    uniform = "uniform"
    greedy = "greedy"


RunsArg = Annotated[list[Path], typer.Argument(
    metavar="RUN_DIR...", help="Run folders written by `finetune train` (their best.pt is read), or checkpoint "
                               "files: one architecture, the same classes, fine-tuned from the same weights.")]


@app.command()
@command
def average(
    runs: RunsArg,
    output: Annotated[Path, typer.Option(
        "--output", "-o", help="The checkpoint to write (OUT.pt): predict, evaluate and export load it.")],
    method: Annotated[SoupMethod, typer.Option(
        "--method", help="uniform: the mean of all the weights; greedy: best on val first, each next checkpoint "
                         "kept only if the average with it does not lose val accuracy (needs the runs' val "
                         "images).")] = SoupMethod.uniform,
    batch_size: BatchSize = 32,
    device: Device = "auto",
):
    """Average the weights of several fine-tuned runs into one checkpoint: a model soup (Wortsman et al. 2022).

    The val accuracy is measured on the runs' own val split (rebuilt from their recipe), so it is the split greedy
    chose on: an optimistic figure. OUT.pt has no fitted temperature (its probabilities are the raw softmax).
    """
    tune(("torch", "torchvision"))
    from rich.console import Console

    from ..deploy.render import print_soup
    from ..deploy.soup import make_soup

    print_soup(make_soup(runs, output, method.value, batch_size=batch_size, device=device,
                         console=Console(stderr=True)), Console(stderr=True))
    typer.echo(str(output))


@app.command("wise-ft")
@command
def wise_ft(
    run: Annotated[Path, typer.Argument(
        metavar="RUN_DIR", help="A run folder written by `finetune train` (its best.pt), or a checkpoint file.")],
    alpha: Annotated[float, typer.Option(
        min=0, max=1, help="0: the pretrained backbone, 1: the fine-tuned one; between: (1 - alpha) * pretrained "
                           "+ alpha * fine-tuned. The head is always the fine-tuned one.")] = 0.5,
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="The checkpoint to write (default: RUN_DIR/wise-ft-ALPHA.pt).")] = None,
    batch_size: BatchSize = 32,
    device: Device = "auto",
):
    """Interpolate the backbone between the pretrained weights (the run's model.weights) and the fine-tuned ones:
    WiSE-FT (Wortsman et al., CVPR 2022).

    The pretrained model has no head for these classes, so the fine-tuned head is kept at every alpha. Scored on
    the run's val split when it is readable here.
    """
    tune(("torch", "torchvision", "timm"))
    from rich.console import Console

    from ..deploy.render import print_wise_ft
    from ..deploy.wiseft import wise_ft as run_wise_ft

    result = run_wise_ft(run, alpha, output, batch_size=batch_size, device=device, console=Console(stderr=True))
    print_wise_ft(result, Console(stderr=True))
    typer.echo(str(result.output))
