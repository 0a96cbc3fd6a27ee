"""`finetune predict`, `evaluate`, `report` and `export`: the commands that use a trained model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import ConfigError, DataError, FinetuneError
from ..files import refuse_inside, write_text
from .app import app
from .boundary import command, tune, write_run_report
from .options import (
    BatchSize,
    CheckpointArg,
    Device,
    Engine,
    EngineOpt,
    ExportFormat,
    ModelArg,
    PredictFormat,
    Raw,
    ReportFormat,
    Tta,
)


@app.command()
@command
def predict(
    checkpoint: ModelArg,
    paths: Annotated[list[str], typer.Argument(
        help="Image files, folders (searched recursively), glob patterns, or @LIST: a .txt with one path per line "
             "or a .csv with a path column (relative paths from the list's folder), or WebDataset shards (a `finetune "
             "shard` folder, a .tar, a brace pattern: every image in them).")],
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="How many classes to show per image (a "
                                       "multi-label model shows every label over its threshold).")] = 1,
    format: Annotated[PredictFormat, typer.Option(
        "--format", "-f", help="table for people; json, jsonl (one JSON object per line) or csv for programs."
    )] = PredictFormat.table,
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="Write the predictions to this file (json, jsonl or csv) instead of standard output. "
                               "Under torchrun, each rank writes FILE.rankNNNNN-of-NNNNN and rank 0 joins them "
                               "into FILE, in input order.")] = None,
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
        "--reject", help="None of these: label an image `unknown` when it scores below a threshold: auto (the "
                         "score and threshold chosen at the end of training, rejecting 5% of the correctly classified "
                         "val images: its similarity to the nearest training image, or its calibrated top-1 "
                         "probability for an .onnx) or a calibrated probability P, e.g. 0.6.")] = None,
):
    """Predict the class of each image with a trained checkpoint (temperature-calibrated probabilities).

    Started by torchrun (torchrun --nproc_per_node N -m finetune predict ... --output FILE), the images are split
    over the processes and the results joined into FILE."""
    tune(("torch", "torchvision"))
    from ..deploy import ranks
    from ..deploy.engines import load_source
    from ..deploy.predict import expand_paths, folders_read
    from ..deploy.predict import predict as run_predict
    from ..deploy.render import format_predictions, print_predictions
    from ..runtime.distributed import from_environment, launched, rank_device, shutdown

    if output is not None and format == PredictFormat.table:
        raise ConfigError("--output writes json, jsonl or csv: add --format jsonl (or json, csv)")
    if launched() and (output is None or cam is not None):
        raise ConfigError("predict under torchrun writes its results with --output FILE (each rank its share, "
                          "joined into FILE); add --output, and leave --cam to a single process")
    dist = from_environment(device)
    try:
        source, everything = load_source(checkpoint), expand_paths(paths)
        if output is not None:
            refuse_inside(output, folders_read(paths, everything, source), "--output", DataError)
        photos = ranks.share(everything, dist)
        if cam is not None:
            from ..deploy.cam import check_cam_folder, write_cams

            check_cam_folder(cam, paths, photos, source)
        results = run_predict(source, photos, top_k=top_k, batch_size=batch_size, device=rank_device(dist, device),
                              tta=tta, raw=raw, engine=engine.value, reject=reject)
        if cam is not None:
            typer.echo(f"Grad-CAM: {len(write_cams(source, results, cam))} heatmaps in {cam}", err=True)
        if output is None:
            print_predictions(results, format.value, rejecting=reject is not None)
        elif dist.enabled:
            ranks.write_part(output, format_predictions(results, format.value, reject is not None), dist)
            dist.barrier()
            if dist.main:
                ranks.merge_parts(output, format.value, dist)
        else:
            write_text(output, format_predictions(results, format.value, reject is not None))
        unreadable, total = dist.sum([sum(bool(r.error) for r in results), len(results)])
    finally:
        shutdown(dist)
    if total and unreadable == total:  # nothing predicted: a script must not take it for success
        raise FinetuneError(f"none of the {int(total)} image(s) could be read; each one's reason is in the output")
    if output is not None and dist.main:
        typer.echo(str(output))


@app.command()
@command
def evaluate(
    checkpoint: ModelArg,
    data: Annotated[Path, typer.Argument(
        help="A folder of class folders (e.g. hymenoptera/val), a root with train/ and val/ (val/ is used), or "
             "@LIST: a .csv with path and label columns (and split: its val rows), or a .txt of paths (the class is "
             "each image's folder), or WebDataset shards (a `finetune shard` folder: its val shards). A multi-label "
             "checkpoint: @labels.csv with path and labels columns, or a folder holding labels.csv.")],
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

    tune(("torch", "torchvision"))
    from ..deploy.evaluate import evaluate as run_evaluate

    evaluation = run_evaluate(checkpoint, data, output=output, tta=tta, raw=raw, batch_size=batch_size,
                              device=device, mistakes=mistakes, console=Console(stderr=True), engine=engine.value)
    if format == ReportFormat.json:
        typer.echo(json.dumps(evaluation.to_dict(), indent=2))
    else:
        from ..deploy.render import print_evaluation

        print_evaluation(Console(), evaluation)
    run_dir = Path(checkpoint).parent
    if (run_dir / "recipe.yaml").is_file():  # the checkpoint of a run: its report now shows this evaluation
        typer.echo(f"report: {write_run_report(run_dir, evaluation.output)}", err=True)


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
    tune(())
    path = write_run_report(run_dir, eval_dir)
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
    tune(("torch", "torchvision"))
    from ..deploy.export import export as run_export

    result = run_export(checkpoint, format.value, output, tolerance, int8=int8, calibration=calibration,
                        max_drop=max_accuracy_drop)
    for f in result.files[1:]:
        typer.echo(f"metadata: {f}", err=True)
    typer.echo(f"parity: max |output difference| vs the eager model (logits; multi-label: probabilities) = "
               f"{result.max_abs_diff:.3g} "
               f"(tolerance {result.tolerance:g}, batch of {result.batch}, run with {result.checked_with})", err=True)
    if result.int8 is not None:
        from ..deploy.render import int8_lines

        for line in int8_lines(result.int8):
            typer.echo(line, err=True)
    typer.echo(str(result.path))


