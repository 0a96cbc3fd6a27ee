"""Temperature scaling (Guo et al. 2017): one scalar T fitted on the validation set so that
softmax(logits / T) is calibrated. Argmax, and so accuracy, is unchanged.

fit() calls calibrate_checkpoints() once, at the end of a run; predict and evaluate divide by the
stored T unless asked for the raw softmax.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .metrics import expected_calibration_error, nll, softmax

# Search bounds for T. When every validation image is classified right, NLL keeps falling as T -> 0:
# the data gives no finite answer, so T stays 1 rather than making every later prediction absurdly
# sharp. An optimum on a bound is treated the same way.
T_MIN, T_MAX = 0.05, 20.0


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> tuple[float, bool]:
    """(T minimising NLL of softmax(logits / T), fitted). fitted is False when T stays 1.

    NLL is convex in beta = 1/T, hence unimodal in log T, so a golden-section search on log T
    finds the global minimum without step sizes or gradients.
    """
    labels = np.asarray(labels)
    if len(labels) == 0 or (np.asarray(logits).argmax(axis=1) == labels).all():
        return 1.0, False
    lo, hi = math.log(T_MIN), math.log(T_MAX)
    golden = (math.sqrt(5) - 1) / 2
    a, b = hi - golden * (hi - lo), lo + golden * (hi - lo)
    fa, fb = nll(logits, labels, math.exp(a)), nll(logits, labels, math.exp(b))
    for _ in range(80):  # the bracket shrinks by 0.618 per step: 80 steps reach float precision
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - golden * (hi - lo)
            fa = nll(logits, labels, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + golden * (hi - lo)
            fb = nll(logits, labels, math.exp(b))
    t = math.exp((lo + hi) / 2)
    if t < T_MIN * 1.01 or t > T_MAX / 1.01 or nll(logits, labels, t) >= nll(logits, labels, 1.0):
        return 1.0, False
    return t, True


def calibration_summary(logits: np.ndarray, labels: np.ndarray) -> dict:
    """Fit T and measure NLL and ECE before and after: the dict stored as meta["calibration"]."""
    t, fitted = fit_temperature(logits, labels)
    return {"temperature": t, "fitted": fitted, "images": int(len(labels)),
            "nll_before": nll(logits, labels), "nll_after": nll(logits, labels, t),
            "ece_before": expected_calibration_error(softmax(logits), labels),
            "ece_after": expected_calibration_error(softmax(logits, t), labels)}


def temperature_of(meta: dict) -> float:
    """The checkpoint's fitted temperature; 1 for checkpoints written before calibration existed."""
    return float((meta.get("calibration") or {}).get("temperature", 1.0))


def collect_logits(model, loader, device, label: str = "calibrate", console=None) -> tuple[np.ndarray, np.ndarray]:
    """(logits, labels) of the whole loader, model in eval mode, float32."""
    import torch
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    model.eval()
    out, ys = [], []
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()]
    with Progress(*columns, console=console, transient=True,
                  disable=console is None or not console.is_terminal) as bar, torch.inference_mode():
        task = bar.add_task(label, total=len(loader))
        for images, labels in loader:
            images = images.to(device)
            if images.ndim == 4:  # images; cached features arrive as (batch, features)
                images = images.contiguous(memory_format=torch.channels_last)
            out.append(model(images).float().cpu())
            ys.append(labels)
            bar.advance(task)
    return torch.cat(out).numpy(), torch.cat(ys).numpy()


def calibrate_checkpoints(run_dir: Path, model, val_loader, device, console=None, net=None) -> dict:
    """Fit T on val for last.pt and best.pt and store it in each one's meta. Returns best.pt's summary.

    `model` holds last.pt's weights on entry; best.pt's weights are loaded into it when they differ.
    `net` is what runs on val_loader's batches: the model itself (default), or its head when the
    batches are cached frozen features, so the backbone does not run over val again.
    """
    import torch

    from .checkpoint import load_checkpoint, update_meta

    net = model if net is None else net
    run_dir = Path(run_dir)
    last = load_checkpoint(run_dir / "last.pt")
    summary = calibration_summary(*collect_logits(net, val_loader, device, "calibrate last.pt", console))
    update_meta(run_dir / "last.pt", calibration=summary)
    best = load_checkpoint(run_dir / "best.pt")
    if best["meta"]["metrics"].get("epoch") != last["meta"]["metrics"].get("epoch"):
        with torch.no_grad():
            model.load_state_dict(best["model"])
        summary = calibration_summary(*collect_logits(net, val_loader, device, "calibrate best.pt", console))
    update_meta(run_dir / "best.pt", calibration=summary)
    return summary
