"""task: multilabel at the end of a run: per-class thresholds chosen on val, F1-optimal, stored in both
checkpoints (Calibration.thresholds), in place of calibration.calibrate_run's temperature.

No temperature: the run's output is one sigmoid per label, and what predict does with it is the per-class
threshold. A temperature per class is monotone, so it would change no decision, and fitted per class on a
small val set (a few dozen positives a label) it would mostly fit noise; the F1-optimal thresholds are what a
multi-label user tunes, so they are what is fitted. Temperature stays 1, and the Calibration says why.
"""

from __future__ import annotations

import numpy as np
import torch

from ..checkpoint import Calibration
from ..metrics import f1_thresholds, mean_average_precision, multilabel_f1, sigmoid
from ..runtime.device import Compute
from .calibration import collect_logits
from .state import RunState

NO_TEMPERATURE = "task multilabel: per-class thresholds, chosen on val for F1, decide the labels instead"


def threshold_calibration(logits: np.ndarray, targets: np.ndarray) -> Calibration:
    """The run's calibration for multilabel: per-class F1-optimal thresholds on the val probabilities."""
    probs = sigmoid(logits)
    return Calibration(temperature=1.0, fitted=False, kept_because=NO_TEMPERATURE, images=int(len(targets)),
                       thresholds=[round(float(t), 6) for t in f1_thresholds(probs, targets)])


def scores_at(calibration: Calibration, logits: np.ndarray, targets: np.ndarray) -> dict:
    """mAP, micro F1 and macro F1 of these val logits at the calibration's thresholds (the run summary's)."""
    probs = sigmoid(logits)
    f1 = multilabel_f1(probs >= np.asarray(calibration.thresholds), targets)
    return {"map": mean_average_precision(probs, targets)[0], "micro_f1": f1["micro_f1"], "macro_f1": f1["macro_f1"]}


def calibrate_thresholds(run: RunState, net, val_batches, compute: Compute, targets: np.ndarray, console=None):
    """calibration.calibrate_run for multilabel: thresholds for last.pt, then for best.pt (its weights loaded into
    the scored model when they differ), each checkpoint rewritten once. Returns (best.pt's calibration, its val
    (logits, targets), or None when both already held one)."""
    summary, val = run.last_calibration, None
    if summary is None:
        val = collect_logits(net, val_batches, compute, "thresholds for last.pt", console)
        summary = threshold_calibration(val[0], targets[val[1]])
        run.save(calibration=summary)
    best = run.best_checkpoint()
    if best.calibration is not None:
        return best.calibration, None
    if val is None or best.metrics.get("epoch") != run.rows[-1]["epoch"]:
        with torch.no_grad():
            run.step.scored.load_state_dict(best.state)
        val = collect_logits(net, val_batches, compute, "thresholds for best.pt", console)
    summary = threshold_calibration(val[0], targets[val[1]])
    run.writer.write_best_calibration(best, summary)
    return summary, (val[0], targets[val[1]])
