"""train.swa: stochastic weight averaging (Izmailov et al. 2018) with torch.optim.swa_utils.AveragedModel.

What the run does with it:
- From epoch `start_epoch` on, the weights at the end of each epoch join an equal-weight running average of the
  parameters (AveragedModel's default, use_buffers=False: BatchNorm statistics are not averaged, they are
  recomputed). Epochs, their metrics rows and best.pt during training are the raw weights', as without SWA.
- At the end (all epochs, early_stop or budget), the average is loaded into the model, the BatchNorm layers that
  trained get their statistics recomputed over the train batches, and it is scored on val: metrics.csv's last
  row, epoch `swa`. last.pt then holds the average; best.pt holds it when it ranks at least as high on val
  (metrics.epoch_rank) as the best epoch, else best.pt stays that epoch.
- No SWALR: the recipe's schedule keeps its per-group absolute rates to the end. SWALR would anneal every group
  to one constant and need a second scheduler in the resume state; a schedule that keeps some lr late
  (schedule.min_factor, or constant) is how to give the average something to average.
- Resume: the averaged parameters and n_averaged are in last.pt's resume state; a run whose average was already
  scored (progress.swa) does not score it again.
- Only the BatchNorm layers that train (in train mode under the freeze plan, strategy.frozen_bn) are recomputed:
  torch's update_bn resets every BatchNorm in the model, the frozen backbone's pretrained statistics too, which
  are not the run's to change. With none (feature-extract: a head on cached features), there is no pass at all.
  Dropout stays off during the pass. Data-parallel: rank 0's statistics, shared with the others.
"""

from __future__ import annotations

import time

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from ..console import track
from ..metrics import epoch_rank
from ..runtime.device import Compute
from .freeze import set_train_mode
from .rundir import write_metrics

ROW = "swa"  # metrics.csv's epoch column for the average's row


class WeightAverage:
    """The run's equal-weight average of its parameters from `start_epoch` on."""

    def __init__(self, model: nn.Module, start_epoch: int):
        self.averaged, self.start_epoch = AveragedModel(model), start_epoch

    @property
    def n_averaged(self) -> int:
        return int(self.averaged.n_averaged)

    def update(self, model: nn.Module, epoch: int) -> None:
        """After epoch `epoch`'s optimizer steps: its weights join the average from start_epoch on."""
        if epoch >= self.start_epoch:
            self.averaged.update_parameters(model)

    def state(self) -> dict:
        """For last.pt's resume state: the averaged parameters and how many epochs they hold."""
        return {"swa_model": {n: p.detach() for n, p in self.averaged.module.named_parameters()},
                "swa_n_averaged": self.averaged.n_averaged.detach().clone()}

    def load(self, state: dict) -> None:
        params = dict(self.averaged.module.named_parameters())
        with torch.no_grad():
            for name, value in state["swa_model"].items():
                params[name].copy_(value)
            self.averaged.n_averaged.copy_(state["swa_n_averaged"])

    def apply(self, model: nn.Module) -> None:
        """The averaged parameters into `model` (in place: what wraps it, DDP or torch.compile, still holds them)."""
        with torch.no_grad():
            for p, avg in zip(model.parameters(), self.averaged.module.parameters()):
                p.copy_(avg)


def recompute_batchnorm(net: nn.Module, batches, compute: Compute, frozen_bn: str = "eval", console=None) -> int:
    """torch.optim.swa_utils.update_bn for the BatchNorm layers of `net` that train: their statistics reset and
    recomputed as the plain mean over the batches (momentum None), the rest of `net` in eval mode (no dropout).
    Returns how many layers were recomputed (0: no pass)."""
    set_train_mode(net, frozen_bn)  # which BatchNorm layers train, as in every epoch
    layers = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    net.eval()
    if not layers:
        return 0
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    with torch.no_grad():
        for inputs, labels, *_ in track(batches, "swa: BatchNorm statistics of the average", console):
            keep = labels >= 0  # images that vanished are zeros: not statistics of the data
            if keep.any():
                with compute.autocast():
                    net(compute.to_device(inputs[keep]))
    for m, momentum in zip(layers, momenta):
        m.momentum = momentum
    net.eval()
    dist = compute.dist
    if dist.enabled:  # each rank saw its shard: rank 0's statistics everywhere (rank 0 writes the checkpoints)
        names = {n for n, m in net.named_modules() if m in layers}
        own = {k: v for k, v in net.state_dict().items() if k.rpartition(".")[0] in names}
        shared = dist.share({k: v.cpu() for k, v in own.items()} if dist.main else None)
        with torch.no_grad():
            for k, v in own.items():
                v.copy_(shared[k])
    return len(layers)


def average_row(average: WeightAverage, last_epoch: int, loss: float, acc: float, seconds: float,
                bn_layers: int) -> dict:
    """The average's metrics row (what best.pt/last.pt record, and metrics.csv's `swa` row)."""
    return {"epoch": ROW, "val_loss": loss, "val_acc": acc, "seconds": round(seconds, 3),
            "swa_epochs": [average.start_epoch, last_epoch], "swa_n_averaged": average.n_averaged,
            "swa_bn_layers": bn_layers}


def average_is_best(row: dict, rows: list[dict]) -> bool:
    """best.pt holds the average when it ranks at least as high on val as every epoch."""
    return not rows or epoch_rank(row) >= max(map(epoch_rank, rows))


def csv_rows(rows: list[dict], average: dict | None) -> list[dict]:
    """metrics.csv's rows: the epochs, then the average's row in their columns (its others left empty)."""
    if average is None or not rows:
        return rows
    return [*rows, {k: average.get(k, "") for k in rows[0]}]


def finish_average(run, average: WeightAverage, step, train_batches, evaluate, console) -> dict | None:
    """The end of a run with train.swa: the average into the model, BatchNorm recomputed, scored on val by
    `evaluate(net) -> (loss, acc)`, recorded (RunState.end_average: best.pt when it ranks best, then last.pt).
    Returns its row; None when no epoch was averaged (the run stopped before start_epoch)."""
    if run.progress.swa is not None:  # a resumed run whose average was already scored
        return run.progress.swa
    if not average.n_averaged:
        console.print(f"swa: nothing averaged, the run stopped after epoch {run.rows[-1]['epoch']}, before "
                      f"train.swa.start_epoch {average.start_epoch}; best.pt and last.pt hold the raw weights")
        return None
    start = time.perf_counter()
    last = run.rows[-1]["epoch"]
    average.apply(step.model)
    train_batches.set_epoch(last)  # the last epoch's images and augmentations: a pure function of (seed, epoch)
    layers = recompute_batchnorm(step.net, train_batches, step.compute, step.frozen_bn, console)
    loss, acc = evaluate(step.scored_net)
    row = average_row(average, last, loss, acc, time.perf_counter() - start, layers)
    best = average_is_best(row, run.rows)
    run.end_average(row, best)
    if run.dist.main:
        write_metrics(run.run_dir / "metrics.csv", csv_rows(run.rows, row))
    console.print(f"swa: epochs {average.start_epoch}-{last} averaged ({average.n_averaged}), "
                  + (f"BatchNorm recomputed in {layers} layer(s)" if layers else "no BatchNorm trains (no pass)")
                  + f" | val loss {loss:.4f} acc {acc:.3f} | best.pt: "
                  + ("the average" if best else "the best epoch (it scores higher)"), soft_wrap=True)
    return row
