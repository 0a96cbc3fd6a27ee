"""The `finetune` command. Each command parses, calls one library function, and maps errors to exit codes.

Heavy imports (torch, torchvision, timm) happen inside the commands so `--help` stays fast. This is the one
place that tunes the whole process (runtime.process: the heap, the garbage collector, the thread policy).

Exit codes: 0 done; 1 a problem the message says how to fix; 130 / 143 stopped by Ctrl-C / SIGTERM (the run
can be resumed); 70 an unexpected error, a bug: one line here, the traceback in a log file (FINETUNE_DEBUG=1
prints it here too).
"""

from __future__ import annotations

import functools
import json
import os
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from .errors import FinetuneError, RunInterrupted

app = typer.Typer(
    help="Transfer learning for image classification: train on a folder of photos, then predict and export.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion (Typer's, through click; no torch)
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",  # docstrings' line breaks are reflowed; a blank line starts a paragraph
)

BUG_EXIT = 70  # EX_SOFTWARE (sysexits.h): an internal error

CheckpointArg = Annotated[Path, typer.Argument(help="A best.pt or last.pt written by `finetune train`.")]
ModelArg = Annotated[Path, typer.Argument(
    metavar="CHECKPOINT", help="A best.pt or last.pt written by `finetune train`, or an .onnx written by "
                               "`finetune export --format onnx [--int8]` (run with onnxruntime).")]
BatchSize = Annotated[int, typer.Option(min=1, help="Images per forward pass.")]
Device = Annotated[str, typer.Option(help="auto (CUDA if present), cpu, cuda or cuda:N.")]
Tta = Annotated[bool, typer.Option("--tta", help="Test-time augmentation: average the logits of each image and its "
                                                 "horizontal mirror (2x the compute).")]
Raw = Annotated[bool, typer.Option("--raw", help="Report the raw softmax instead of probabilities calibrated with the "
                                                 "temperature fitted at the end of training.")]


class OutputFormat(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"


class Engine(str, Enum):
    auto = "auto"
    torch = "torch"
    onnxruntime = "onnxruntime"


EngineOpt = Annotated[Engine, typer.Option(
    "--engine", help="What runs the model: auto (onnxruntime for an .onnx file, torch for a checkpoint), torch, or "
                     "onnxruntime (CPU; a checkpoint is exported to ONNX in memory first; or give an .onnx from "
                     "`finetune export`, fp32 or --int8).")]


class ReportFormat(str, Enum):
    table = "table"
    json = "json"


class ExportFormat(str, Enum):
    onnx = "onnx"
    torchscript = "torchscript"
    safetensors = "safetensors"


def _print_error(label: str, message, exc: BaseException | None = None) -> None:
    """One line on stderr. In a data-parallel run the other ranks stay quiet where rank 0 says the same (a stop,
    an error all ranks share) and say which rank they are otherwise."""
    from .console import literal, stderr_console

    rank = int(os.environ.get("RANK", "0") or 0)
    if rank and (isinstance(exc, RunInterrupted) or getattr(exc, "finetune_shared", False)):
        return
    where = f"rank {rank}: " if rank else ""
    stderr_console().print(f"{label} {where}{literal(message)}", highlight=False, soft_wrap=True)


def command(fn):
    """The boundary every command runs in: a problem the user can fix is one line and exit 1; Ctrl-C/SIGTERM
    after a save is exit 130/143 with the resume command; anything unforeseen is a bug: one line saying where,
    the full traceback in a log file (the run folder's, or the cache folder's)."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except RunInterrupted as exc:  # exit 130 / 143, as the shell reports a process stopped by SIGINT / SIGTERM
            _print_error("[bold yellow]stopped:[/]", exc, exc)
            raise typer.Exit(exc.exit_code) from None
        except FinetuneError as exc:
            _print_error("[bold red]error:[/]", exc, exc)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            _print_error("[bold yellow]stopped:[/]", "interrupted; nothing was saved by this command")
            raise typer.Exit(130) from None
        except Exception as exc:
            log = _crash_log(exc)
            where = _where(exc)
            _print_error("[bold red]unexpected error:[/]", f"{type(exc).__name__}: {str(exc)[:300]} (at {where}). "
                         f"This is a bug in finetune; please report it with {log or 'the traceback'}")
            if os.environ.get("FINETUNE_DEBUG") == "1" or log is None:
                import traceback

                traceback.print_exception(exc)
            raise typer.Exit(BUG_EXIT) from None
    return run


def _where(exc: BaseException) -> str:
    import traceback

    frames = traceback.extract_tb(exc.__traceback__)
    return f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?"


def _crash_log(exc: BaseException) -> Path | None:
    """The traceback in RUN_DIR/crash.log when the error happened in a run, else in the cache folder."""
    import time
    import traceback

    from .data.filecheck import cache_dir

    folder = getattr(exc, "finetune_run_dir", None) or cache_dir() / "logs"
    path = Path(folder) / ("crash.log" if getattr(exc, "finetune_run_dir", None) else
                           f"crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} finetune {_version()}\n")
            f.write("".join(traceback.format_exception(exc)))
        return path
    except OSError:
        return None


def _version() -> str:
    from . import __version__

    return __version__


def _tune(imports: tuple[str, ...] = ("torch", "torchvision", "timm")) -> None:
    from .runtime.process import tune_process

    tune_process(imports)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"finetune {_version()}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option(
        "--version", is_eager=True, callback=_print_version, help="Print finetune's version and exit.")] = False,
):
    """Transfer learning for image classification: train on a folder of photos, then predict and export."""


@app.command()
@command
def train(
    recipe: Annotated[Optional[Path], typer.Argument(
        help="Recipe YAML file (see recipes/); not with --resume.")] = None,
    data: Annotated[Optional[Path], typer.Option("--data", help="ImageFolder root; overrides data.root.")] = None,
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="Run folder to create (default: a new folder under runs/).")] = None,
    set_: Annotated[Optional[list[str]], typer.Option(
        "--set", help="Override a recipe key, e.g. --set optim.name=sgd (repeatable).")] = None,
    resume: Annotated[Optional[Path], typer.Option(
        "--resume", metavar="RUN_DIR", help="Continue the run in this folder from its last.pt, with its own "
                                            "recipe.yaml.")] = None,
    exist_ok: Annotated[bool, typer.Option(
        "--exist-ok", help="Reuse the run folder if it exists (its checkpoints are overwritten) instead of making "
                           "NAME-2.")] = False,
    nproc: Annotated[Optional[int], typer.Option(
        "--nproc", min=1, help="Train data-parallel on N processes of this machine (one per GPU, or on the CPU): "
                               "starts torchrun for you. For several machines run torchrun yourself.")] = None,
):
    """Train a classifier as RECIPE says and write best.pt, last.pt, metrics.csv and recipe.yaml into a run folder.

    A stopped run (Ctrl-C, SIGTERM, a crash) continues where it left off with --resume RUN_DIR. Without
    data.augment in the recipe, feature-extract trains on the frozen features computed once (no augmentation)
    and the other strategies use standard augmentation. Data parallel: `torchrun --nproc_per_node=N -m finetune
    train RECIPE` (or --nproc N); train.batch_size is then the batch over all processes.
    """
    from .config import load_recipe
    from .errors import ConfigError

    if resume is not None and (recipe is not None or output is not None or exist_ok):
        raise ConfigError("--resume RUN_DIR continues that run with its own recipe.yaml; leave out RECIPE, "
                          "--output and --exist-ok")
    if resume is None and recipe is None:
        raise ConfigError("give a RECIPE file to start a run, or --resume RUN_DIR to continue one")
    if resume is not None:
        _tune()
        from .train.resume import load_run_recipe

        config = load_run_recipe(resume, set_ or [], data=data)
    else:
        config = load_recipe(recipe, set_ or [], data=data, output=output)  # a mistake in it fails before torch
        config.run.exist_ok = config.run.exist_ok or exist_ok
        _tune()
    if nproc is not None:  # the recipe is valid: now the processes
        from .train.setup import check_batch

        check_batch(config.train.batch_size, nproc)
        return _torchrun(nproc)
    from .runtime.distributed import from_environment, launched, shutdown
    from .runtime.process import die_with_launcher
    from .train.loop import fit

    if launched():
        die_with_launcher()
    dist = from_environment(config.train.device, config.train.dist_backend)
    try:
        run_dir = fit(config, resume_dir=resume, dist=dist)
    except KeyboardInterrupt:  # before training started: nothing to save
        raise FinetuneError("interrupted before the first epoch; nothing was trained") from None
    finally:
        shutdown(dist)
    if dist.main:
        typer.echo(f"report: {_report(run_dir)}", err=True)
        typer.echo(str(run_dir))


def _report(run_dir: Path, eval_dir: Path | None = None) -> Path:
    from .deploy.report import write_report

    return write_report(run_dir, eval_dir)


def _torchrun(nproc: int) -> None:
    """finetune train --nproc N ...: the same command under torch.distributed.run (torchrun), N processes on
    this machine, rendezvous on localhost."""
    import logging
    import signal
    import sys

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    for name in ("torch.distributed.run", "torch.distributed.elastic"):  # the ranks speak for themselves
        logging.getLogger(name).setLevel(logging.CRITICAL)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))  # torchrun's note

    argv = sys.argv[1:]
    start = argv.index("train")
    rest = argv[start + 1:]
    for i, arg in enumerate(rest):  # drop --nproc N / --nproc=N
        if arg == "--nproc":
            rest = rest[:i] + rest[i + 2:]
            break
        if arg.startswith("--nproc="):
            rest = rest[:i] + rest[i + 1:]
            break
    try:
        run(parse_args(["--standalone", f"--nproc_per_node={nproc}", "-m", "finetune", "train", *rest]))
    except ChildFailedError as exc:  # each rank has said why in one line already
        codes = [f.exitcode for f in exc.failures.values()]
        raise typer.Exit(next((c for c in codes if c in (130, 143)), max(codes))) from None
    except SignalException as exc:  # Ctrl-C/SIGTERM: torchrun passed it on; rank 0 saved last.pt and said so
        raise typer.Exit(128 + int(exc.sigval)) from None
    except KeyboardInterrupt:
        raise typer.Exit(128 + signal.SIGINT) from None


@app.command("lr-find")
@command
def lr_find(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file (see recipes/).")],
    data: Annotated[Optional[Path], typer.Option("--data", help="ImageFolder root; overrides data.root.")] = None,
    set_: Annotated[Optional[list[str]], typer.Option(
        "--set", help="Override a recipe key, e.g. --set optim.name=sgd (repeatable).")] = None,
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="Folder for lr_find.csv and lr_find.png (default: a new runs/lr-find-NAME).")] = None,
    steps: Annotated[int, typer.Option(min=10, help="Optimizer steps in the sweep.")] = 200,
):
    """Find a learning rate: train a fresh copy of the recipe's model while the lr grows from 1e-7 to 10.

    Writes lr_find.csv and lr_find.png (the loss against the lr) into a new folder, prints the suggested lr
    for the head (where the loss falls fastest) and for the other groups at the recipe's ratios, and the
    --set line to train with it. Existing runs are not touched.
    """
    from .config import load_recipe

    config = load_recipe(recipe, set_ or [], data=data)
    _tune()
    from .train.lr_find import lr_find as run_lr_find

    result = run_lr_find(config, output, steps)
    typer.echo(f"finetune train {recipe} {result.set_line}")


@app.command()
@command
def predict(
    checkpoint: ModelArg,
    paths: Annotated[list[str], typer.Argument(
        help="Image files, folders (searched recursively), glob patterns, or @LIST: a .txt with one path per line "
             "or a .csv with a path column (relative paths from the list's folder).")],
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="How many classes to show per image.")] = 1,
    format: Annotated[OutputFormat, typer.Option(
        "--format", "-f", help="table for people, json or csv for programs.")] = OutputFormat.table,
    batch_size: BatchSize = 32,
    device: Device = "auto",
    tta: Tta = False,
    raw: Raw = False,
    engine: EngineOpt = Engine.auto,
    cam: Annotated[Optional[Path], typer.Option(
        "--cam", help="Also write a Grad-CAM heatmap of each photo into this folder (NNNN-PHOTO-LABEL.jpg: where the "
                      "model looked for the class it chose). Needs a .pt checkpoint and finetune[explain]; never a "
                      "folder inside the photos.")] = None,
    reject: Annotated[Optional[str], typer.Option(
        "--reject", help="None of these: label an image `unknown` when its calibrated top-1 probability is below "
                         "a threshold: auto (the one chosen at the end of training, rejecting 5% of the correctly "
                         "classified val images) or a probability P, e.g. 0.6.")] = None,
):
    """Predict the class of each image with a trained checkpoint (temperature-calibrated probabilities)."""
    _tune(("torch", "torchvision"))
    from .deploy.engines import load_source
    from .deploy.predict import expand_paths
    from .deploy.predict import predict as run_predict

    source = load_source(checkpoint)
    if cam is not None:
        from .checkpoint import Checkpoint
        from .deploy.cam import check_cam_folder
        from .errors import ConfigError

        if not isinstance(source, Checkpoint):
            raise ConfigError("--cam follows gradients through the torch model: give the .pt checkpoint, not an "
                              ".onnx export")
        check_cam_folder(cam, paths)
    results = run_predict(source, expand_paths(paths), top_k=top_k, batch_size=batch_size, device=device,
                          tta=tta, raw=raw, engine=engine.value, reject=reject)
    if cam is not None:
        from .deploy.cam import write_cams

        written = write_cams(source, results, cam)
        typer.echo(f"Grad-CAM: {len(written)} heatmaps in {cam}", err=True)
    if format == OutputFormat.json:
        typer.echo(json.dumps([r.to_dict() for r in results], indent=2))
    elif format == OutputFormat.csv:
        import csv
        import sys

        writer = csv.writer(sys.stdout)
        said = [] if reject is None else ["prediction"]  # with --reject: the top label, or unknown
        writer.writerow(["path", *said, "rank", "label", "index", "prob", "error"])
        for r in results:
            said = [] if reject is None else [r.label or ""]
            for rank, t in enumerate(r.top, 1):
                writer.writerow([r.path, *said, rank, t["label"], t["index"], t["prob"], ""])
            if r.error:
                writer.writerow([r.path, *said, "", "", "", "", r.error])
    else:
        from rich.console import Console
        from rich.table import Table

        from .console import literal

        table = Table("path", "prediction", "probability")
        for r in results:
            if r.error:
                table.add_row(literal(r.path), "[red]unreadable[/]", literal(r.error))
            elif r.rejected:  # --reject: below the threshold, the classes it was closest to stay visible
                closest = literal("\n".join(f"({t['label']})" for t in r.top))
                table.add_row(literal(r.path), f"[yellow]unknown[/]\n{closest}",
                              "\n" + "\n".join(f"{t['prob']:.3f}" for t in r.top))
            else:
                table.add_row(literal(r.path), literal("\n".join(t["label"] for t in r.top)),
                              "\n".join(f"{t['prob']:.3f}" for t in r.top))
        Console().print(table)
    if results and all(r.error for r in results):  # nothing predicted: a script must not take it for success
        raise FinetuneError(f"none of the {len(results)} image(s) could be read; each one's reason is in the output")


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

    _tune(())
    from .data.doctor import inspect_dataset, print_report

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
    data: Annotated[Optional[Path], typer.Option("--data", help="ImageFolder root; overrides data.root.")] = None,
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
                               "near-duplicates (default 0.82, measured with ImageNet weights; docs/audit.md).")
    ] = None,
    folds: Annotated[int, typer.Option(min=2, help="k of the stratified k-fold out-of-fold heads.")] = 5,
    repeats: Annotated[int, typer.Option(
        min=1, help="Repeat the k-fold with this many seeded shuffles (the accuracy's spread; probabilities "
                    "averaged).")] = 3,
):
    """Audit a dataset with the recipe's model: near-duplicate photos and train/val leakage, probably wrong labels,
    and the head's accuracy with its spread.

    Every image's pooled embedding (the feature-extract cache) is compared with every other's; labels are judged by
    linear heads that never saw the image (k-fold), ranked by confident learning (cleanlab). Reads the dataset,
    never changes it. Exact byte copies: `finetune inspect`.
    """
    from .config import load_recipe

    config = load_recipe(recipe, set_ or [], data=data, output=output)
    _tune()
    from .audit.duplicates import THRESHOLD
    from .audit.labels import require_cleanlab
    from .audit.report import print_audit, to_dict
    from .audit.run import run_audit

    require_cleanlab()  # before the feature pass, not after it
    result = run_audit(config, THRESHOLD if threshold is None else threshold, folds, repeats)
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
def evaluate(
    checkpoint: ModelArg,
    data: Annotated[Path, typer.Argument(
        help="A folder of class folders (e.g. hymenoptera/val), a root with train/ and val/ (val/ is used), or "
             "@LIST: a .csv with path and label columns, or a .txt of paths (the class is each image's folder).")],
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="Folder for the CSV, PNG and JSON files (default: eval-CHECKPOINT-DATA next to "
                               "the checkpoint; never inside DATA).")] = None,
    format: Annotated[ReportFormat, typer.Option(
        "--format", "-f", help="table for people, json for programs.")] = ReportFormat.table,
    tta: Tta = False,
    raw: Raw = False,
    mistakes: Annotated[int, typer.Option(
        min=0, help="How many of the most confident mistakes to show in mistakes.png.")] = 16,
    batch_size: BatchSize = 32,
    device: Device = "auto",
    engine: EngineOpt = Engine.auto,
):
    """Score a checkpoint on a labelled image folder: accuracy, per-class scores, confusion matrix, mistakes, ECE.

    Writes confusion_matrix.csv/.png (counts and row-normalised), mistakes.png, predictions.csv and report.json.
    Uses the checkpoint's own preprocessing and class order; classes it does not know are reported, not scored.
    """
    from rich.console import Console

    _tune(("torch", "torchvision"))
    from .deploy.evaluate import evaluate as run_evaluate

    report = run_evaluate(checkpoint, data, output, tta=tta, raw=raw, batch_size=batch_size, device=device,
                          mistakes=mistakes, console=Console(stderr=True), engine=engine.value)
    if format == ReportFormat.json:
        typer.echo(json.dumps(report, indent=2))
    else:
        from .deploy.plots import print_evaluation

        print_evaluation(Console(), report)
    run_dir = Path(checkpoint).parent
    if (run_dir / "recipe.yaml").is_file():  # the checkpoint of a run: its report now shows this evaluation
        typer.echo(f"report: {_report(run_dir, Path(report['output']))}", err=True)


@app.command()
@command
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by `finetune train`.")],
    eval_dir: Annotated[Optional[Path], typer.Option(
        "--eval", help="An evaluate output folder to include (default: the newest eval-* folder in RUN_DIR).")] = None,
    open_: Annotated[bool, typer.Option("--open", help="Open the page in the default web browser.")] = False,
):
    """Write RUN_DIR/report.html: the recipe and the data, training curves, calibration and, once evaluated,
    accuracy with its interval, per-class scores, the confusion matrix and the most confident mistakes.

    One self-contained page (images inlined, no network), readable from a file:// URL and on a phone.
    """
    _tune(())
    path = _report(run_dir, eval_dir)
    if open_:
        import webbrowser

        webbrowser.open(path.resolve().as_uri())
    typer.echo(str(path))


@app.command()
@command
def export(
    checkpoint: CheckpointArg,
    format: Annotated[ExportFormat, typer.Option(
        "--format", "-f", help="onnx (dynamic batch axis), torchscript, or safetensors (a state dict plain "
                               "torchvision/timm load, plus a JSON sidecar).")],
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="File to write (default: next to the checkpoint, e.g. best.onnx).")] = None,
    tolerance: Annotated[float, typer.Option(
        min=0, help="Largest allowed |logit| difference between the export and the eager model.")] = 1e-3,
    int8: Annotated[bool, typer.Option(
        "--int8", help="ONNX only: static INT8 quantization (onnxruntime, QDQ), calibrated on the checkpoint's "
                       "validation images; checked by top-1 agreement and accuracy against fp32, speed-up printed "
                       "(default output: best.int8.onnx).")] = False,
    calibration: Annotated[Optional[str], typer.Option(
        "--calibration", metavar="DIR", help="With --int8: calibrate on these images instead (a folder, class "
                                             "folders for an accuracy check, or @LIST).")] = None,
    max_accuracy_drop: Annotated[float, typer.Option(
        min=0, help="With --int8: most top-1 accuracy points INT8 may lose on labelled calibration images, else "
                    "the export fails.")] = 1.5,
):
    """Export a checkpoint (onnx, torchscript, safetensors) for use without finetune, with a parity check.

    The exported model outputs LOGITS (probabilities = softmax(logits / temperature)); class names,
    preprocessing and the temperature travel in its metadata. After writing, the export is reloaded, run
    on a batch and compared with the eager model; it fails if they differ by more than --tolerance.
    With --int8 the check is by accuracy instead, and the speed of INT8 and fp32 on this CPU is printed.
    """
    _tune(("torch", "torchvision"))
    from .deploy.export import export as run_export

    result = run_export(checkpoint, format.value, output, tolerance, int8=int8, calibration=calibration,
                        max_drop=max_accuracy_drop)
    for f in result.files[1:]:
        typer.echo(f"metadata: {f}", err=True)
    typer.echo(f"parity: max |logit difference| vs the eager model = {result.max_abs_diff:.3g} "
               f"(tolerance {result.tolerance:g}, batch of {result.batch}, run with {result.checked_with})", err=True)
    if result.int8 is not None:
        for line in _int8_lines(result.int8):
            typer.echo(line, err=True)
    typer.echo(str(result.path))


def _int8_lines(check) -> list[str]:
    """What an INT8 export says about itself: agreement, accuracy before/after, speed here."""
    skipped = f", {check.unreadable} unreadable left out" if check.unreadable else ""
    lines = [f"int8: top-1 agreement with fp32 {check.agreement:.3f} on {check.images} images "
             f"({check.source}{skipped})"]
    if check.accuracy_fp32 is not None:
        lines.append(f"int8: top-1 accuracy fp32 {check.accuracy_fp32:.3f} -> int8 {check.accuracy_int8:.3f} "
                     f"({0.0 - check.drop:+.1f} points, {check.labelled} labelled images; measured on the calibration "
                     "images, so optimistic)")
    else:
        lines.append("int8: no labels among the calibration images (no class folders), so accuracy was not checked")
    lines.append(f"int8: speed on this CPU (onnxruntime, batch {check.batch}, median of {check.rounds} alternating "
                 f"runs): fp32 {check.fp32_images_per_s:.1f} images/s, int8 {check.int8_images_per_s:.1f} images/s "
                 f"({check.speedup:.2f}x)")
    return lines


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
    from .errors import ConfigError

    try:
        depth_list = tuple(int(d) for d in depths.split(",") if d.strip())
    except ValueError:
        raise ConfigError(f"--depths {depths!r}: give comma-separated integers such as 20,56") from None
    _tune(("torch",))
    from .console import stderr_console
    from .lab.ablate import AblationSpec, check_depths, default_data, run_ablation

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
    _tune(("torch", "torchvision"))
    from .console import stderr_console
    from .data.cifar import write_cifar10

    counts = write_cifar10(out_dir, download_dir, console=stderr_console())
    typer.echo(f"{counts['train']} train and {counts['val']} val images", err=True)
    typer.echo(str(out_dir))


def main() -> None:
    app()
