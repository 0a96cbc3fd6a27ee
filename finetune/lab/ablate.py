"""`finetune ablate`: the degradation experiment of He et al. 2015 (Fig. 1 and Fig. 6, §4.2) on any image folder.

For each depth, a plain CIFAR net and its residual twin train from the same random init (the twins have
the same parameters, so the same seed gives them the same weights), on the same images in the same order
with the same crops and flips, with the seed's SGD recipe: lr 0.1, momentum 0.9, weight decay 1e-4 (the
paper's), a cosine schedule over the run's steps (the paper's steps at 32k/48k iterations assume 64k of
them; a run of minutes has a few hundred). Per epoch it records training error (the running error of the
epoch's batches, as the paper's curves) and validation error; and the gradient norm of every weighted
layer on one fixed batch at initialisation and after the first epoch, the "why" of the experiment.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..console import progress
from ..errors import ConfigError, TrainingDiverged
from ..files import make_folder, refuse_inside
from ..runtime.device import Compute, resolve_compute
from .figures import write_csvs, write_figures
from .nets import CifarNet
from .tensors import TensorSplits, augment, load_tensors

PROBE = 128  # images in the fixed batch whose gradients the gradient-flow plot shows


@dataclass
class AblationSpec:
    data: Path
    output: Path | None = None  # None: a new runs/ablate, runs/ablate-2, ...
    depths: tuple[int, ...] = (20, 56)
    epochs: int = 8
    batch_size: int = 16
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    image_size: int = 32
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    runs_dir: Path = Path("runs")


@dataclass
class AblationResult:
    output: Path
    rows: list[dict]  # ablation.csv: one per net and epoch
    grad_rows: list[dict]  # gradflow.csv: one per net, moment and layer
    seconds: float
    files: list[Path] = field(default_factory=list)

    def final(self) -> list[dict]:
        """The last epoch's row of each net."""
        last = {}
        for row in self.rows:
            last[row["net"]] = row
        return list(last.values())


def default_data() -> Path:
    """The synthetic textures shipped in the repository's data/sample (3 classes, 150 train and 30 val images
    each, 32 px; data/make_sample.py makes them)."""
    here = Path(__file__).resolve().parents[2] / "data" / "sample"
    for candidate in (Path("data/sample"), here):
        if candidate.is_dir():
            return candidate
    raise ConfigError("no data/sample here (it ships with the source checkout); pass --data ROOT, an ImageFolder")


def check_depths(depths) -> tuple[int, ...]:
    bad = [d for d in depths if d < 8 or (d - 2) % 6]
    if bad or not depths:
        raise ConfigError(f"--depths: each depth is 6n+2 (8, 14, 20, 32, 44, 56, 110 ...); not "
                          f"{', '.join(map(str, bad)) or 'none given'}")
    return tuple(sorted(set(depths)))


def run_ablation(spec: AblationSpec, console=None) -> AblationResult:
    """Train a plain net and its residual twin at each depth; write ablation.csv, gradflow.csv and the PNGs."""
    depths = check_depths(spec.depths)
    out = _output_folder(spec)
    compute = resolve_compute(spec.device, amp=spec.amp)
    try:
        data = load_tensors(spec.data, spec.image_size, spec.seed, console=console)
        if len(data.train_y) < 2 or len(data.val_y) == 0:
            raise ConfigError(f"{spec.data} has too few images for an ablation (train {len(data.train_y)}, "
                              f"val {len(data.val_y)})")
    except BaseException:
        with contextlib.suppress(OSError):  # leave no empty results folder behind a data mistake
            out.rmdir()
        raise
    start = time.perf_counter()
    rows, grad_rows = [], []
    with progress(console) as bar:
        for depth in depths:
            for residual in (False, True):
                torch.manual_seed(spec.seed)  # the twins start from the same weights
                net = CifarNet(depth, residual, num_classes=len(data.class_names))
                net_rows, net_grads = _train(net, data, spec, compute, bar, console)
                rows += net_rows
                grad_rows += net_grads
    seconds = time.perf_counter() - start
    files = write_csvs(out, rows, grad_rows) + write_figures(out, rows, grad_rows)
    return AblationResult(out, rows, grad_rows, seconds, files)


def _output_folder(spec: AblationSpec) -> Path:
    if spec.output is not None:
        out = Path(spec.output)
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise ConfigError(f"output folder {out} already exists and is not empty; choose another --output")
        refuse_inside(out, spec.data, "--output")
        return make_folder(out, "the output folder")
    make_folder(spec.runs_dir, "the runs folder")
    for i in range(1, 10_000):
        out = spec.runs_dir / ("ablate" if i == 1 else f"ablate-{i}")
        refuse_inside(out, spec.data, "the output folder")
        try:
            out.mkdir()
            return out
        except FileExistsError:
            continue
    raise ConfigError(f"too many ablate runs in {spec.runs_dir}; choose --output")


def _train(net: CifarNet, data: TensorSplits, spec: AblationSpec, compute: Compute, bar,
           console=None) -> tuple[list, list]:
    net = net.to(compute.device)
    n = len(data.train_y)
    batch = min(spec.batch_size, n)
    steps = n // batch  # whole batches only: a last batch of one image would break BatchNorm
    total = steps * spec.epochs
    optimizer = torch.optim.SGD(net.parameters(), lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
    scaler = torch.amp.GradScaler(compute.device.type, enabled=compute.autocast_dtype == torch.float16)
    order = torch.Generator().manual_seed(spec.seed)  # the same shuffles, crops and flips for every net
    pick = torch.randperm(n, generator=torch.Generator().manual_seed(spec.seed + 1))[:PROBE]  # all classes
    probe = data.normalise(data.train_x[pick]).to(compute.device), data.train_y[pick].to(compute.device)
    grads = _grad_rows(net, probe, "init")
    rows = []
    task = bar.add_task(f"{net.name}", total=total)
    began = time.perf_counter()
    for epoch in range(1, spec.epochs + 1):
        net.train()
        perm = torch.randperm(n, generator=order)
        wrong = seen = 0
        loss_sum = 0.0
        for s in range(steps):
            idx = perm[s * batch:(s + 1) * batch]
            x = data.normalise(augment(data.train_x[idx], order)).to(compute.device)
            y = data.train_y[idx].to(compute.device)
            with compute.autocast():
                logits = net(x)
                loss = F.cross_entropy(logits, y)
            if not torch.isfinite(loss):
                raise TrainingDiverged(f"{net.name}: the loss became {loss.item()} at epoch {epoch}; "
                                       "try a smaller --lr")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            schedule.step()
            wrong += (logits.argmax(1) != y).sum().item()
            seen += len(y)
            loss_sum += loss.item() * len(y)
            bar.update(task, advance=1, description=f"{net.name} epoch {epoch}/{spec.epochs}")
        if epoch == 1:
            grads += _grad_rows(net, probe, "after epoch 1")
        val_error, val_loss = _evaluate(net, data, compute)
        rows.append({"net": net.name, "kind": "residual" if net.residual else "plain", "depth": net.depth,
                     "epoch": epoch, "train_error": wrong / seen, "val_error": val_error,
                     "train_loss": loss_sum / seen, "val_loss": val_loss,
                     "lr": optimizer.param_groups[0]["lr"], "seconds": round(time.perf_counter() - began, 2)})
        if console is not None:  # one line per epoch, also in logs where the bar does not show
            r = rows[-1]
            console.print(f"{net.name} epoch {epoch}: train error {100 * r['train_error']:.1f}%, val error "
                          f"{100 * r['val_error']:.1f}% ({r['seconds']:.0f} s)", highlight=False)
    bar.remove_task(task)
    return rows, grads


def _grad_rows(net: CifarNet, probe, moment: str) -> list[dict]:
    """The gradient norm of each weighted layer's weights for one fixed batch, input side first. In train mode
    (batch statistics, as in training), with the BatchNorm running statistics put back afterwards so that
    looking does not change the run."""
    buffers = {k: v.clone() for k, v in net.named_buffers()}
    net.train()
    net.zero_grad(set_to_none=True)
    F.cross_entropy(net(probe[0]), probe[1]).backward()
    rows = [{"net": net.name, "kind": "residual" if net.residual else "plain", "depth": net.depth,
             "moment": moment, "layer_index": i, "layer": name, "grad_norm": p.grad.norm().item()}
            for i, (name, p) in enumerate(net.weighted_layers(), start=1)]
    net.zero_grad(set_to_none=True)
    with torch.no_grad():
        for k, v in net.named_buffers():
            v.copy_(buffers[k])
    return rows


@torch.no_grad()
def _evaluate(net: CifarNet, data: TensorSplits, compute: Compute, batch: int = 256) -> tuple[float, float]:
    net.eval()
    wrong, loss_sum = 0, 0.0
    for i in range(0, len(data.val_y), batch):
        x = data.normalise(data.val_x[i:i + batch]).to(compute.device)
        y = data.val_y[i:i + batch].to(compute.device)
        with compute.autocast():
            logits = net(x)
        wrong += (logits.argmax(1) != y).sum().item()
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").item()
    return wrong / len(data.val_y), loss_sum / len(data.val_y)
