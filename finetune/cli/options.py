"""Arguments and options that several commands share, declared once (names, help text, choices)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

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


class PredictFormat(str, Enum):
    table = "table"
    json = "json"
    jsonl = "jsonl"
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

DataOpt = Annotated[Optional[Path], typer.Option(
    "--data", help="ImageFolder root, @labels.csv (path, label, optional split columns), or WebDataset shards (a "
                   "`finetune shard` folder, a .tar, a brace pattern, or one of those behind a URL: https://, s3://, "
                   "pipe:COMMAND), or hf:PATH[:split]; overrides data.root.")]
SetOpt = Annotated[Optional[list[str]], typer.Option(
    "--set", help="Override a recipe key, e.g. --set optim.name=sgd (repeatable).")]
