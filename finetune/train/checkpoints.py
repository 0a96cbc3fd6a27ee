"""The one writer of a run's checkpoints: best.pt (the best epoch's weights) and last.pt (everything needed to
continue), calibration included. Rank 0 writes, atomically (files.atomic_write: a crash leaves the previous
file); the run keeps best.pt's weights in memory so calibration never reads them back.

The order is part of the guarantee: best.pt before last.pt at the end of an epoch, so a crash between the two
redoes the epoch and rewrites both; each checkpoint rewritten once with its temperature at the end.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from ..checkpoint import Calibration, Checkpoint, EmbeddingBank
from ..errors import CheckpointError


class CheckpointWriter:
    """best.pt and last.pt of one run folder. `template` is the run's checkpoint without weights (architecture,
    classes, preprocessing, recipe, ...); `main`: this process writes (rank 0), the others only keep track."""

    def __init__(self, run_dir: Path, template: Checkpoint, main: bool = True):
        self.run_dir, self.template, self.main = Path(run_dir), template, main
        self.best: Checkpoint | None = None  # best.pt as last written this session (weights copied)

    @property
    def last_path(self) -> Path:
        return self.run_dir / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.run_dir / "best.pt"

    def write_best(self, state: dict[str, torch.Tensor], metrics: dict) -> None:
        self.best = self.template.with_state(state, metrics=metrics)
        if self.main:
            self.best.save(self.best_path)

    def write_last(self, state: dict[str, torch.Tensor], metrics: dict, resume: dict,
                   calibration: Calibration | None = None) -> None:
        if self.main:
            replace(self.template, state=state, metrics=metrics, calibration=calibration,
                    resume=resume).save(self.last_path)

    def write_best_calibration(self, best: Checkpoint, calibration: Calibration,
                               embeddings: EmbeddingBank | None = None) -> None:
        """best.pt once more, with the temperature fitted on its weights (and the training embeddings of the knn
        rejection score), in one atomic write: best.pt never holds a threshold without its embeddings."""
        self.best = replace(best, calibration=calibration, embeddings=embeddings)
        if self.main:
            self.best.save(self.best_path)

    def read_last(self) -> Checkpoint:
        return Checkpoint.load(require_last(self.run_dir))


def require_last(run_dir: Path) -> Path:
    """RUN_DIR/last.pt, or what to do when the run never wrote one."""
    if not (Path(run_dir) / "last.pt").is_file():
        raise CheckpointError(f"{run_dir} has no last.pt: the run stopped before its first checkpoint "
                              f"(train.save_every saves within epochs). Start it again with "
                              f"`finetune train {Path(run_dir) / 'recipe.yaml'} --output {run_dir} --exist-ok`")
    return Path(run_dir) / "last.pt"
