"""`finetune inspect`, `audit` and `cifar10`: the commands about a dataset."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from .app import app
from .boundary import command, tune
from .options import DataOpt, ReportFormat


@app.command("inspect")
@command
def inspect_(
    root: Annotated[Path, typer.Argument(help="ImageFolder root: class folders, or train/ and val/ holding them.")],
    format: Annotated[ReportFormat, typer.Option(
        "--format", "-f", help="table for people, json (every finding with path and kind) for programs.")
    ] = ReportFormat.table,
    strict: Annotated[bool, typer.Option("--strict", help="Exit 1 when any blocking (error) finding exists.")] = False,
):
    """Check an image folder before training: unreadable and odd images, duplicates, leakage, classes. Reads only."""
    from rich.console import Console

    tune(())
    from ..data.doctor import inspect_dataset, print_report

    report = inspect_dataset(root, console=Console(stderr=True))
    if format == ReportFormat.json:
        typer.echo(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    else:
        print_report(report, Console())
    if strict and report.blocking:
        raise typer.Exit(1)


class AuditFormat(str, Enum):
    table = "table"
    json = "json"
    html = "html"


@app.command()
@command
def audit(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file (see recipes/): its model, weights and data.")],
    data: DataOpt = None,
    format: Annotated[AuditFormat, typer.Option(
        "--format", "-f", help="What to print: table for people, json (every finding) for programs, html (the "
                               "page's path). audit.json, audit.csv and audit.html are written in every case.")
    ] = AuditFormat.table,
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="Folder to write into, new or empty (default: a new runs/audit-NAME; never inside "
                               "the dataset).")] = None,
    set_: Annotated[Optional[list[str]], typer.Option(
        "--set", help="Override a recipe key, e.g. --set model.weights=PATH (repeatable).")] = None,
    threshold: Annotated[Optional[float], typer.Option(
        min=0.0, max=1.0, help="Cosine similarity of two photos' embeddings at or above which they are "
                               "near-duplicates (default 0.86, measured on 4 datasets with Lite0/1/2; docs/audit.md).")
    ] = None,
    max_distance: Annotated[Optional[int], typer.Option(
        min=0, max=64, help="Bits of their 64-bit perceptual hashes (as saved or one mirrored) in which two photos "
                            "may differ and still be near-duplicates (default 8; docs/audit.md).")] = None,
    folds: Annotated[int, typer.Option(min=2, help="k of the stratified k-fold out-of-fold heads.")] = 5,
    repeats: Annotated[int, typer.Option(
        min=1, help="Repeat the k-fold with this many seeded shuffles (the accuracy's spread; probabilities "
                    "averaged).")] = 3,
):
    """Audit a dataset with the recipe's model: near-duplicate photos and train/val leakage, probably wrong labels,
    and the head's accuracy with its spread.

    Every image's pooled embedding (the feature-extract cache) and perceptual hash is compared with every other's
    (either detector finding a pair reports it, saying which); labels are judged by
    linear heads that never saw the image (k-fold), ranked by confident learning (cleanlab). Reads the dataset,
    never changes it. Exact byte copies: `finetune inspect`.
    """
    from ..config import load_recipe

    config = load_recipe(recipe, set_ or [], data=data, output=output)
    tune()
    from ..audit.duplicates import MAX_DISTANCE, THRESHOLD
    from ..audit.labels import require_cleanlab
    from ..audit.report import print_audit, to_dict
    from ..audit.run import run_audit

    require_cleanlab()  # before the feature pass, not after it
    result = run_audit(config, THRESHOLD if threshold is None else threshold, folds, repeats,
                       max_distance=MAX_DISTANCE if max_distance is None else max_distance)
    report = to_dict(result)
    if format == AuditFormat.json:
        typer.echo(json.dumps(report, indent=2, ensure_ascii=False))
    elif format == AuditFormat.html:
        typer.echo(str(result.folder / "audit.html"))
    else:
        from rich.console import Console

        print_audit(report, Console())


@app.command()
@command
def cifar10(
    out_dir: Annotated[Path, typer.Argument(
        help="New folder for the ImageFolder (train/<class>/, val/<class>/ of 32x32 PNGs), e.g. data/cifar10.")],
    download_dir: Annotated[Optional[Path], typer.Option(
        help="Where torchvision keeps the 163 MB download (default: $TORCH_HOME/datasets); reused when present.")
    ] = None,
):
    """Write CIFAR-10 as an ImageFolder for recipes/resnet18-cifar-scratch.yaml, from torchvision's download.

    The 10,000 test images become val/. Then: `finetune train recipes/resnet18-cifar-scratch.yaml --data OUT_DIR`.
    """
    tune(("torch", "torchvision"))
    from ..console import stderr_console
    from ..data.cifar import write_cifar10

    counts = write_cifar10(out_dir, download_dir, console=stderr_console())
    typer.echo(f"{counts['train']} train and {counts['val']} val images", err=True)
    typer.echo(str(out_dir))



@app.command()
@command
def shard(
    root: Annotated[Path, typer.Argument(
        help="ImageFolder root (class folders, or train/ and val/ holding them), or @labels.csv.")],
    out: Annotated[Path, typer.Argument(help="New or empty folder for the shards and dataset.json (never inside "
                                             "the dataset).")],
    shard_size: Annotated[str, typer.Option(
        "--shard-size", help="Where a shard ends: a size (1GB, 500MB) or a number of images (10000).")] = "1GB",
    val_fraction: Annotated[float, typer.Option(
        "--val-fraction", help="Share of each class held out as val when the data has no val/ folder or split "
                               "column.")] = 0.2,
    seed: Annotated[int, typer.Option(
        "--seed", min=0, help="Seeds the split and the order of the images in the shards.")] = 0,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace the shards of an earlier `finetune shard` in OUT.")] = False,
):
    """Write the dataset as WebDataset tar shards (OUT/train-000000.tar, OUT/val-000000.tar, ...) and dataset.json.

    The images keep their own bytes; the split and the files left out are training's; the same input and seed
    write the same shards. Reads DIR only.
    """
    from ..console import stderr_console
    from ..data.shards import parse_shard_size, write_shards

    limit = parse_shard_size(shard_size)
    shards = write_shards(root, out, limit, val_fraction, seed, console=stderr_console(), overwrite=overwrite)
    for split, files in shards.splits.items():
        typer.echo(f"{split}: {shards.images(split)} images in {len(files)} shard(s)", err=True)
    if shards.skipped:
        typer.echo(f"{shards.skipped} file(s) left out (unreadable, label conflicts, train copies of val images); "
                   f"`finetune inspect {root}` lists them", err=True)
    typer.echo(str(out))
