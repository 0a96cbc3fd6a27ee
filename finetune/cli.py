"""The `finetune` command. Each command parses, calls one library function, and maps errors to exit codes.

Heavy imports (torch, torchvision, timm) happen inside the commands so `--help` stays fast.
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from .errors import FinetuneError
from .memory import long_lived

app = typer.Typer(
    help="Transfer learning for image classification: train on a folder of photos, then predict and export.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _fail(exc: FinetuneError, code: int = 1, label: str = "[bold red]error:[/]") -> typer.Exit:
    from rich.console import Console

    Console(stderr=True).print(f"{label} {exc}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


class OutputFormat(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"


@app.command()
def train(
    recipe: Annotated[Optional[Path], typer.Argument(help="Recipe YAML file (see recipes/); not with --resume.")] = None,
    data: Annotated[Optional[Path], typer.Option("--data", help="ImageFolder root; overrides data.root.")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Run folder to create (default: a new folder under runs/).")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a recipe key, e.g. --set optim.name=sgd (repeatable).")] = None,
    resume: Annotated[Optional[Path], typer.Option("--resume", help="Continue the run in this folder from its last.pt, with its own recipe.yaml.", metavar="RUN_DIR")] = None,
    exist_ok: Annotated[bool, typer.Option("--exist-ok", help="Reuse the run folder if it exists (its checkpoints are overwritten) instead of making NAME-2.")] = False,
):
    """Train a classifier as RECIPE says and write best.pt, last.pt, metrics.csv and recipe.yaml into a run folder.

    A stopped run (Ctrl-C, SIGTERM, a crash) continues where it left off with --resume RUN_DIR.
    """
    from .config import load_recipe
    from .errors import ConfigError, RunInterrupted

    try:
        if resume is not None and (recipe is not None or output is not None or exist_ok):
            raise ConfigError("--resume RUN_DIR continues that run with its own recipe.yaml; leave out RECIPE, "
                              "--output and --exist-ok")
        if resume is None and recipe is None:
            raise ConfigError("give a RECIPE file to start a run, or --resume RUN_DIR to continue one")
        if resume is not None:
            from .resume import load_run_recipe

            config = load_run_recipe(resume, set_ or [], data=data)
        else:
            config = load_recipe(recipe, set_ or [], data=data, output=output)
            config.run.exist_ok = config.run.exist_ok or exist_ok
        with long_lived():  # torch's modules live until exit: the garbage collector skips them (memory.py)
            from .engine import fit

        run_dir = fit(config, resume_dir=resume)
    except RunInterrupted as exc:  # exit 130 / 143, as the shell reports a process stopped by SIGINT / SIGTERM
        raise _fail(exc, exc.exit_code, "[bold yellow]stopped:[/]") from None
    except FinetuneError as exc:
        raise _fail(exc) from None
    except KeyboardInterrupt:  # before training started: nothing to save
        raise _fail(FinetuneError("interrupted before the first epoch; nothing was trained")) from None
    typer.echo(str(run_dir))


TTA_HELP = "Test-time augmentation: average the logits of each image and its horizontal mirror (2x the compute)."
RAW_HELP = "Report the raw softmax instead of probabilities calibrated with the temperature fitted at the end of training."


@app.command()
def predict(
    checkpoint: Annotated[Path, typer.Argument(help="A best.pt or last.pt written by `finetune train`.")],
    paths: Annotated[list[str], typer.Argument(help="Image files, folders (searched recursively) or glob patterns.")],
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="How many classes to show per image.")] = 1,
    format: Annotated[OutputFormat, typer.Option("--format", "-f", help="table for people, json or csv for programs.")] = OutputFormat.table,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass.")] = 32,
    device: Annotated[str, typer.Option(help="auto (CUDA if present), cpu, cuda or cuda:N.")] = "auto",
    tta: Annotated[bool, typer.Option("--tta", help=TTA_HELP)] = False,
    raw: Annotated[bool, typer.Option("--raw", help=RAW_HELP)] = False,
):
    """Predict the class of each image with a trained checkpoint (temperature-calibrated probabilities)."""
    try:
        with long_lived():
            from .inference import expand_paths, predict as run_predict

        results = run_predict(checkpoint, expand_paths(paths), top_k=top_k, batch_size=batch_size, device=device,
                              tta=tta, raw=raw)
    except FinetuneError as exc:
        raise _fail(exc) from None
    if format == OutputFormat.json:
        typer.echo(json.dumps([r.to_dict() for r in results], indent=2))
    elif format == OutputFormat.csv:
        import csv
        import sys

        writer = csv.writer(sys.stdout)
        writer.writerow(["path", "rank", "label", "index", "prob", "error"])
        for r in results:
            for rank, t in enumerate(r.top, 1):
                writer.writerow([r.path, rank, t["label"], t["index"], t["prob"], ""])
            if r.error:
                writer.writerow([r.path, "", "", "", "", r.error])
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table("path", "prediction", "probability")
        for r in results:
            if r.error:
                table.add_row(r.path, "[red]unreadable[/]", r.error)
            else:
                table.add_row(r.path, "\n".join(t["label"] for t in r.top), "\n".join(f"{t['prob']:.3f}" for t in r.top))
        Console().print(table)


class ReportFormat(str, Enum):
    table = "table"
    json = "json"


@app.command("inspect")
def inspect_(
    root: Annotated[Path, typer.Argument(help="ImageFolder root: class folders, or train/ and val/ holding them.")],
    format: Annotated[ReportFormat, typer.Option("--format", "-f", help="table for people, json (every finding with path and kind) for programs.")] = ReportFormat.table,
    strict: Annotated[bool, typer.Option("--strict", help="Exit 1 when any blocking (error) finding exists.")] = False,
):
    """Check an image folder before training: unreadable and odd images, duplicates, leakage, classes. Reads only."""
    from rich.console import Console

    try:
        from .doctor import inspect_dataset, print_report

        report = inspect_dataset(root, console=Console(stderr=True))
    except FinetuneError as exc:
        raise _fail(exc) from None
    if format == ReportFormat.json:
        typer.echo(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    else:
        print_report(report, Console())
    if strict and report.blocking:
        raise typer.Exit(1)


@app.command()
def evaluate(
    checkpoint: Annotated[Path, typer.Argument(help="A best.pt or last.pt written by `finetune train`.")],
    data: Annotated[Path, typer.Argument(help="A folder of class folders (e.g. hymenoptera/val), or a root with train/ and val/ (val/ is used).")],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Folder for the CSV, PNG and JSON files (default: eval-<checkpoint>-<data> next to the checkpoint; never inside DATA).")] = None,
    format: Annotated[ReportFormat, typer.Option("--format", "-f", help="table for people, json for programs.")] = ReportFormat.table,
    tta: Annotated[bool, typer.Option("--tta", help=TTA_HELP)] = False,
    raw: Annotated[bool, typer.Option("--raw", help=RAW_HELP)] = False,
    mistakes: Annotated[int, typer.Option(min=0, help="How many of the most confident mistakes to show in mistakes.png.")] = 16,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass.")] = 32,
    device: Annotated[str, typer.Option(help="auto (CUDA if present), cpu, cuda or cuda:N.")] = "auto",
):
    """Score a checkpoint on a labelled image folder: accuracy, per-class scores, confusion matrix, mistakes, ECE.

    Writes confusion_matrix.csv/.png (counts and row-normalised), mistakes.png, predictions.csv and report.json.
    Uses the checkpoint's own preprocessing and class order; classes it does not know are reported, not scored.
    """
    from rich.console import Console

    try:
        from .evaluation import evaluate as run_evaluate

        report = run_evaluate(checkpoint, data, output, tta=tta, raw=raw, batch_size=batch_size, device=device,
                              mistakes=mistakes, console=Console(stderr=True))
    except FinetuneError as exc:
        raise _fail(exc) from None
    if format == ReportFormat.json:
        typer.echo(json.dumps(report, indent=2))
    else:
        from .report import print_evaluation

        print_evaluation(Console(), report)


class ExportFormat(str, Enum):
    onnx = "onnx"
    torchscript = "torchscript"
    safetensors = "safetensors"


@app.command()
def export(
    checkpoint: Annotated[Path, typer.Argument(help="A best.pt or last.pt written by `finetune train`.")],
    format: Annotated[ExportFormat, typer.Option("--format", "-f", help="onnx (dynamic batch axis), torchscript, or safetensors (a state dict plain torchvision/timm load, plus a JSON sidecar).")],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="File to write (default: next to the checkpoint, e.g. best.onnx).")] = None,
    tolerance: Annotated[float, typer.Option(min=0, help="Largest allowed |logit| difference between the export and the eager model.")] = 1e-3,
):
    """Export a checkpoint (onnx, torchscript, safetensors) for use without finetune, with a parity check.

    The exported model outputs LOGITS (probabilities = softmax(logits / temperature)); class names,
    preprocessing and the temperature travel in its metadata. After writing, the export is reloaded, run
    on a batch and compared with the eager model; it fails if they differ by more than --tolerance.
    """
    try:
        from .exporter import export as run_export

        result = run_export(checkpoint, format.value, output, tolerance)
    except FinetuneError as exc:
        raise _fail(exc) from None
    for f in result.files[1:]:
        typer.echo(f"metadata: {f}", err=True)
    typer.echo(f"parity: max |logit difference| vs the eager model = {result.max_abs_diff:.3g} "
               f"(tolerance {result.tolerance:g}, batch of {result.batch}, run with {result.checked_with})", err=True)
    typer.echo(str(result.path))


def main() -> None:
    app()
