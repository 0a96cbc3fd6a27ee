"""Probably wrong labels: confident learning (Northcutt et al. 2021, "Confident Learning: Estimating
Uncertainty in Dataset Labels") on the out-of-fold probabilities, through the cleanlab package (the `audit`
extra). Ranked by self-confidence: the lower the probability the held-out head gives the given label, the
likelier the label is wrong."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError


@dataclass
class LabelIssue:
    index: int  # into the Embeddings
    given: int
    suggested: int
    suggested_prob: float
    given_prob: float  # the self-confidence


def require_cleanlab() -> None:
    """One line saying what to install when the cleanlab package is missing."""
    import importlib.util

    if importlib.util.find_spec("cleanlab") is None:
        raise ConfigError("finetune audit finds label issues with cleanlab, which is not installed: "
                          "pip install 'finetune[audit]' (or pip install 'cleanlab>=2.6')")


def find_label_issues(labels: np.ndarray, probs: np.ndarray) -> list[LabelIssue]:
    """The images cleanlab flags, most likely wrong first, each with the class the held-out heads prefer."""
    require_cleanlab()
    from cleanlab.filter import find_label_issues as cleanlab_find

    present = np.unique(labels)
    # cleanlab expects labels 0..K-1 with every class present: drop classes no image has (none in a normal tree)
    remap = {int(c): i for i, c in enumerate(present)}
    compact = np.array([remap[int(v)] for v in labels])
    p = probs[:, present]
    p = p / p.sum(1, keepdims=True)
    ranked = cleanlab_find(compact, p, return_indices_ranked_by="self_confidence")
    out = []
    for i in ranked.tolist():
        suggested = int(probs[i].argmax())
        out.append(LabelIssue(i, int(labels[i]), suggested, float(probs[i, suggested]), float(probs[i, labels[i]])))
    return out
