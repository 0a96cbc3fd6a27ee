"""Temperature scaling (Guo et al. 2017): one scalar T fitted on the validation set so that
softmax(logits / T) is calibrated. Argmax, and so accuracy, is unchanged.

fit() calls calibrate_run() once, at the end of a run; predict and evaluate divide by the stored T
(Checkpoint.temperature) unless asked for the raw softmax.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..checkpoint import Calibration, Rejection
from ..console import track
from ..metrics import expected_calibration_error, nll, softmax
from ..runtime.device import Compute
from .state import RunState

# Search bounds for T. When every validation image is classified right, NLL keeps falling as T -> 0:
# the data gives no finite answer, so T stays 1 rather than making every later prediction absurdly
# sharp. An optimum on a bound is treated the same way.
T_MIN, T_MAX = 0.05, 20.0
# predict --reject auto: the threshold rejects this share of the correctly classified val images (its price)
FALSE_REJECTION = 0.05


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> tuple[float, str | None]:
    """(T minimising NLL of softmax(logits / T), None), or (1, why T stays 1).

    NLL is convex in beta = 1/T, hence unimodal in log T, so a golden-section search on log T
    finds the global minimum without step sizes or gradients.
    """
    labels = np.asarray(labels)
    if len(labels) == 0 or (np.asarray(logits).argmax(axis=1) == labels).all():
        return 1.0, "every val image is classified right: a sharper softmax always lowers the NLL"
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
    if t < T_MIN * 1.01 or t > T_MAX / 1.01:
        return 1.0, (f"the NLL is lowest at a temperature beyond {T_MIN:g}-{T_MAX:g}: the val predictions carry "
                     "next to no information (e.g. one class for every image)")
    if nll(logits, labels, t) >= nll(logits, labels, 1.0):
        return 1.0, "no temperature lowers the validation NLL"
    return t, None


def rejection_threshold(logits: np.ndarray, labels: np.ndarray, temperature: float,
                        false_rejection: float = FALSE_REJECTION) -> Rejection | None:
    """The calibrated top-1 probability below which `predict --reject auto` says `unknown`: the largest threshold
    that rejects at most `false_rejection` of the val images the model gets right (a photo of something else
    usually gets a lower confidence than those). With its measured rates on val; None without a correct val image.
    """
    probs = softmax(logits, temperature)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == np.asarray(labels)
    if not correct.any():
        return None
    ranked = np.sort(confidence[correct])
    threshold = float(ranked[int(np.floor(false_rejection * len(ranked)))])
    return Rejection(threshold=threshold, false_rejection=false_rejection, correct_images=int(correct.sum()),
                     rejected_correct=float(np.mean(confidence[correct] < threshold)),
                     rejected_wrong=float(np.mean(confidence[~correct] < threshold)) if (~correct).any() else None)


def calibration_summary(logits: np.ndarray, labels: np.ndarray) -> Calibration:
    """Fit T, measure NLL and ECE before and after, and choose the rejection threshold (stored in both
    checkpoints)."""
    t, kept = fit_temperature(logits, labels)
    return Calibration(temperature=t, fitted=kept is None, kept_because=kept, images=int(len(labels)),
                       reject=rejection_threshold(logits, labels, t),
                       nll_before=nll(logits, labels), nll_after=nll(logits, labels, t),
                       ece_before=expected_calibration_error(softmax(logits), labels),
                       ece_after=expected_calibration_error(softmax(logits, t), labels))


def collect_logits(net, batches, compute: Compute, label: str, console=None) -> tuple[np.ndarray, np.ndarray]:
    """(logits, labels) of all the batches' readable images, net in eval mode, float32; data-parallel, every
    rank's shard gathered (the same arrays on each rank)."""
    net.eval()
    out, ys = [], []
    with torch.inference_mode():
        for inputs, labels, *_ in track(batches, label, console):
            keep = labels >= 0  # vanished images and padding have no label to calibrate on
            if keep.any():
                out.append(net(compute.to_device(inputs[keep])).float().cpu())
                ys.append(labels[keep])
    parts = compute.dist.gather([(torch.cat(out).numpy(), torch.cat(ys).numpy())] if out else [])
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def calibrate_run(run: RunState, net, val_batches, compute: Compute, console=None):
    """Fit T on val for last.pt, then for best.pt, and rewrite each once with its T. Returns (best.pt's summary,
    best.pt's val logits and labels, or None when both checkpoints already held a temperature).

    The scored model (the moving average when there is one) holds last.pt's weights on entry and best.pt's
    (kept in memory by the run) are loaded into it when they differ: no checkpoint is read back, except best.pt
    when a resumed run had already finished. `net` is what runs on the val batches: that model, or its part
    after the cached frozen prefix (so the backbone does not run over val again). A checkpoint that already
    holds a temperature keeps it.
    """
    summary, val = run.last_calibration, None
    if summary is None:
        val = collect_logits(net, val_batches, compute, "calibrate last.pt", console)
        summary = calibration_summary(*val)
        run.save(calibration=summary)
    best = run.best_checkpoint()
    if best.calibration is not None:
        return best.calibration, None
    if val is None or best.metrics.get("epoch") != run.rows[-1]["epoch"]:
        with torch.no_grad():
            run.step.scored.load_state_dict(best.state)
        val = collect_logits(net, val_batches, compute, "calibrate best.pt", console)
        summary = calibration_summary(*val)
    run.writer.write_best_calibration(best, summary)
    return summary, val
