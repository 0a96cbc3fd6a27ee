"""--reject ("none of these"): what it resolves to for a model and an engine, and which images it rejects.

`auto` uses the out-of-distribution score that measured best (finetune.ood; the table in docs/data.md): the knn
score against the training embeddings best.pt stores, where the model has them and the engine gives the images'
embeddings (torch); otherwise the calibrated top-1 probability, whose threshold every checkpoint since the
rejection threshold and every .onnx export carries. A number P is always a calibrated probability.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .. import ood
from ..checkpoint import Checkpoint
from ..errors import CheckpointError, ConfigError


@dataclass(frozen=True)
class Verdict:
    """One image's rejection: its score, the threshold it was held to, and whether it fell below."""
    score: str
    value: float
    threshold: float

    @property
    def rejected(self) -> bool:
        return self.value < self.threshold

    def to_dict(self) -> dict:
        return {"name": self.score, "value": round(self.value, 6), "threshold": round(self.threshold, 6)}


@dataclass(frozen=True)
class RejectRule:
    """What --reject resolved to: below `threshold` on `score`, an image is `unknown`."""
    score: str  # ood.PROBABILITY or ood.KNN
    threshold: float
    temperature: float = 1.0  # probability: the calibration temperature (whatever --raw shows)
    bank: torch.Tensor | None = field(default=None, repr=False)  # knn: the training embeddings, unit rows
    k: int = 1

    @property
    def needs_embeddings(self) -> bool:
        return self.score == ood.KNN

    def verdicts(self, logits: torch.Tensor, embeddings: torch.Tensor | None = None) -> list[Verdict]:
        values = ood.score(self.score, logits, self.temperature, embeddings, self.bank, self.k)
        return [Verdict(self.score, float(v), self.threshold) for v in values.tolist()]


def resolve_reject(reject: str | float | None, source, engine: str = "torch") -> RejectRule | None:
    """--reject: auto -> the stored rule (knn when `source` holds training embeddings and `engine` is torch, else
    the calibrated probability); a number P in [0, 1] -> calibrated probability P; None -> off."""
    if reject is None:
        return None
    temperature = source.temperature
    if isinstance(reject, str) and reject.strip().lower() == "auto":
        knn = knn_rule(source) if engine == "torch" else None
        if knn is not None:
            return knn
        threshold = source.reject_threshold
        if threshold is None:
            raise CheckpointError("--reject auto: this model stores no rejection threshold (trained or exported before "
                                  "finetune chose one); give one, e.g. --reject 0.6, or train it again")
        return RejectRule(ood.PROBABILITY, threshold, temperature)
    try:
        value = float(reject)
    except (TypeError, ValueError):
        raise ConfigError(f"--reject takes auto or a probability from 0 to 1, got {reject!r}") from None
    if not 0 <= value <= 1:
        raise ConfigError(f"--reject takes auto or a probability from 0 to 1, got {value:g}")
    return RejectRule(ood.PROBABILITY, value, temperature)


def knn_rule(source) -> RejectRule | None:
    """The knn rule of a checkpoint that stores its training embeddings and a threshold on them, else None."""
    if not isinstance(source, Checkpoint) or source.embeddings is None or source.calibration is None:
        return None
    stored = source.calibration.reject_knn
    if stored is None:
        return None
    return RejectRule(ood.KNN, stored.threshold, source.temperature, source.embeddings.vectors.float(), stored.k or 1)
