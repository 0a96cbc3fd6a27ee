"""Temperature scaling (Guo et al. 2017): one scalar T fitted on the validation set so that
softmax(logits / T) is calibrated. Argmax, and so accuracy, is unchanged.

fit() calls calibrate_run() once, at the end of a run; predict and evaluate divide by the stored T
(Checkpoint.temperature) unless asked for the raw softmax. The same val images choose the thresholds of
`predict --reject auto`: on the calibrated probability, and for best.pt on the knn score against the training
embeddings (train.bank) it stores beside its weights.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .. import ood
from ..checkpoint import Calibration, EmbeddingBank, Rejection
from ..console import track
from ..metrics import expected_calibration_error, nll, softmax
from ..runtime.device import Compute
from .bank import BankPass, head_inputs
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
    scores = ood.max_probability(torch.from_numpy(np.asarray(logits)), temperature)
    return score_rejection(scores, np.asarray(logits).argmax(axis=1) == np.asarray(labels), ood.PROBABILITY,
                           false_rejection)


def knn_rejection(logits: np.ndarray, labels: np.ndarray, embeddings: np.ndarray, bank: EmbeddingBank,
                  k: int = ood.KNN_K, false_rejection: float = FALSE_REJECTION) -> Rejection | None:
    """The same rule on the knn score: the cosine similarity of each val image's embedding to its k-th nearest
    training embedding (finetune.ood)."""
    k = min(k, len(bank.vectors))
    scores = ood.knn_similarity(torch.from_numpy(np.asarray(embeddings)), bank.vectors, k)
    return score_rejection(scores, np.asarray(logits).argmax(axis=1) == np.asarray(labels), ood.KNN,
                           false_rejection, k)


def score_rejection(scores: torch.Tensor, correct: np.ndarray, score: str, false_rejection: float = FALSE_REJECTION,
                    k: int | None = None) -> Rejection | None:
    """The largest threshold on `scores` rejecting at most `false_rejection` of the correct images, with the
    rates it gives on them and on the wrong ones; None without a correct image."""
    scores, correct = scores.float(), torch.from_numpy(np.asarray(correct, dtype=bool))
    if not correct.any():
        return None
    threshold = ood.keeping_threshold(scores[correct], false_rejection)
    if score == ood.PROBABILITY:
        threshold = min(max(threshold, 0.0), 1.0)
    wrong = ~correct
    return Rejection(threshold=threshold, false_rejection=false_rejection, score=score,
                     correct_images=int(correct.sum()), rejected_correct=float((scores[correct] < threshold).double()
                                                                                 .mean()),
                     rejected_wrong=float((scores[wrong] < threshold).double().mean()) if wrong.any() else None, k=k)


def calibration_summary(logits: np.ndarray, labels: np.ndarray, embeddings: np.ndarray | None = None,
                        bank: EmbeddingBank | None = None) -> Calibration:
    """Fit T, measure NLL and ECE before and after, and choose the rejection thresholds (stored in both
    checkpoints; the knn one where there are val embeddings and a training bank: best.pt)."""
    t, kept = fit_temperature(logits, labels)
    knn = knn_rejection(logits, labels, embeddings, bank) if embeddings is not None and bank is not None else None
    return Calibration(temperature=t, fitted=kept is None, kept_because=kept, images=int(len(labels)),
                       reject=rejection_threshold(logits, labels, t), reject_knn=knn,
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


def collect_outputs(net, head, batches, compute: Compute, label: str, console=None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """collect_logits, with the head's inputs (the embeddings) as well when `head` is given, every rank's shard
    gathered."""
    if head is None:
        return (*collect_logits(net, batches, compute, label, console), None)
    mine = head_inputs(net, head, batches, compute, label, console)
    parts = [p for p in compute.dist.gather([mine]) if len(p[1])]
    if not parts:
        return mine
    embeddings = None if any(p[2] is None for p in parts) else np.concatenate([p[2] for p in parts])
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), embeddings


def calibrate_run(run: RunState, net, val_batches, compute: Compute, console=None, bank: BankPass | None = None):
    """Fit T on val for last.pt, then for best.pt, and rewrite each once with its T and thresholds. Returns
    (best.pt's summary, best.pt's val logits and labels, or None when both checkpoints already held a
    temperature).

    The scored model (the moving average when there is one) holds last.pt's weights on entry and best.pt's
    (kept in memory by the run) are loaded into it when they differ: no checkpoint is read back, except best.pt
    when a resumed run had already finished. `net` is what runs on the val batches: that model, or its part
    after the cached frozen prefix (so the backbone does not run over val again). A checkpoint that already
    holds a temperature keeps it. `bank`: what computes best.pt's training embeddings for the knn score (None:
    best.pt gets the probability threshold only).
    """
    head = run.step.scored.get_submodule(bank.head_name) if bank is not None else None
    summary, val = run.last_calibration, None
    if summary is None:
        val = collect_outputs(net, head, val_batches, compute, "calibrate last.pt", console)
        summary = calibration_summary(val[0], val[1])
        run.save(calibration=summary)
    best = run.best_checkpoint()
    if best.calibration is not None:
        return best.calibration, None
    if val is None or best.metrics.get("epoch") != run.last_metrics.get("epoch"):  # train.swa: epoch "swa"
        with torch.no_grad():
            run.step.scored.load_state_dict(best.state)
        val = collect_outputs(net, head, val_batches, compute, "calibrate best.pt", console)
    embeddings = bank.embeddings(run.step.scored, console) if bank is not None and val[2] is not None else None
    summary = calibration_summary(*val, embeddings)
    run.writer.write_best_calibration(best, summary, embeddings)
    return summary, val[:2]
