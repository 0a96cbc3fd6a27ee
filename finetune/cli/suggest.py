"""`finetune suggest`: which unlabelled photos to label next (deploy.suggest)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .app import app
from .boundary import command, tune
from .options import BatchSize, CheckpointArg, Device, OutputFormat


@app.command()
@command
def suggest(
    checkpoint: CheckpointArg,
    unlabeled: Annotated[str, typer.Argument(
        metavar="UNLABELED", help="A folder of unlabelled photos (searched recursively), or @LIST: a .txt with one "
                                  "path per line or a .csv with a path column. Never written to.")],
    n: Annotated[int, typer.Option("--n", "-n", min=1, help="How many photos to suggest.")] = 100,
    format: Annotated[OutputFormat, typer.Option(
        "--format", "-f", help="table for people, json or csv for programs (csv: the rows --output writes).")
    ] = OutputFormat.table,
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="Also write the suggestions to this CSV (path, rank, suggested_label, an empty label "
                               "column to fill in, margin, why): an @LIST for predict and evaluate, a labelled one "
                               "once label is filled in. Never inside UNLABELED.")] = None,
    batch_size: BatchSize = 32,
    device: Device = "auto",
):
    """Suggest which unlabelled photos to label next: the ones the model is least sure of (smallest margin
    between its two most likely classes, calibrated), spread over the different kinds of photo among them
    (k-means on the model's embeddings), so a batch of labels teaches more than the same photo ten times.

    One pass of the model over the photos; nothing in UNLABELED changes. Unreadable photos are reported.
    """
    tune(("torch", "torchvision"))
    from ..console import literal, stderr_console
    from ..deploy.render import print_suggestions
    from ..deploy.suggest import suggest as run_suggest

    result = run_suggest(checkpoint, unlabeled, n, output=output, batch_size=batch_size, device=device)
    err = stderr_console()
    for path, why in result.unreadable:
        err.print(f"[yellow]unreadable:[/] {literal(path)}: {literal(why)}", highlight=False, soft_wrap=True)
    print_suggestions(result, format.value)
    if output is not None:
        typer.echo(f"suggestions: {output} ({len(result.chosen)} rows; fill in its label column, then use it as "
                   f"@{output})", err=True)

