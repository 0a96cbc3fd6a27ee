"""The checkpoint format: a `Checkpoint` is everything predict, evaluate and export need, standing alone.

On disk it is a dict of tensors and plain data only, loadable with `torch.load(weights_only=True)`:
{"format": FORMAT, "meta": {...}, "model": state dict, "resume": {...} (last.pt only)}. It is written
atomically (a crash leaves the previous file) and read without unpickling code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from .config import ModelSpec
from .errors import CheckpointError, first_line
from .files import atomic_write, safe_torch_load, unreadable_file
from .preprocessing import Preprocessing

FORMAT = "finetune/1"


@dataclass(frozen=True)
class Rejection:
    """`predict --reject auto`: an image whose out-of-distribution `score` (finetune.ood) is below `threshold` is
    `unknown`; the threshold chosen on val at the end of training to reject `false_rejection` of the images the
    model gets right, with the rates it measured. score: probability (the calibrated top-1 probability, in 0-1)
    or knn (the cosine similarity to the k-th nearest training embedding, in -1..1)."""
    threshold: float
    false_rejection: float = 0.05
    score: str = "probability"
    correct_images: int = 0
    rejected_correct: float = 0.0
    rejected_wrong: float | None = None  # None when every val image was right
    k: int | None = None  # knn: which neighbour

    @classmethod
    def from_dict(cls, d: dict) -> Rejection:
        if not isinstance(d, dict):
            raise ValueError("a rejection must be a dict")
        d = {**d, "score": OLD_SCORE_NAMES.get(d.get("score", "probability"), d.get("score"))}
        threshold, score = d.get("threshold"), d["score"]
        low = -1 if score == "knn" else 0
        if score not in ("probability", "knn"):
            raise ValueError(f"the rejection score {score!r} is not probability or knn")
        if not (isinstance(threshold, (int, float)) and low <= threshold <= 1):
            raise ValueError(f"the rejection threshold {threshold!r} is not a {score} score ({low} to 1)")
        if score == "knn" and not (isinstance(d.get("k"), int) and d["k"] >= 1):
            raise ValueError(f"the knn rejection's k {d.get('k')!r} is not a whole number from 1")
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


OLD_SCORE_NAMES = {"calibrated top-1 probability": "probability"}  # what checkpoints before the knn score wrote


@dataclass(frozen=True)
class Calibration:
    """Temperature scaling fitted on val at the end of training (Guo et al. 2017), what it did to the NLL and ECE,
    and the rejection threshold. Older checkpoints hold only some of these; what is missing takes its default."""
    temperature: float = 1.0
    fitted: bool = True  # False: kept at 1, for the reason in kept_because
    kept_because: str | None = None
    images: int = 0  # val images it was fitted on
    reject: Rejection | None = None  # on the calibrated probability: every engine can apply it
    reject_knn: Rejection | None = None  # on the knn score: needs the checkpoint's training embeddings (EmbeddingBank)
    nll_before: float | None = None
    nll_after: float | None = None
    ece_before: float | None = None
    ece_after: float | None = None
    # task multilabel: per class, the sigmoid probability from which its label is predicted (F1-optimal on val);
    # no temperature there (train.multilabel says why)
    thresholds: list[float] | None = None

    @classmethod
    def from_dict(cls, d: dict) -> Calibration:
        if not isinstance(d, dict):
            raise ValueError("calibration must be a dict")
        t = d.get("temperature", 1.0)
        if not (isinstance(t, (int, float)) and math.isfinite(t) and t > 0):
            raise ValueError(f"the calibration temperature {t!r} is not a positive number")
        fields = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        for name in ("reject", "reject_knn"):
            fields[name] = Rejection.from_dict(d[name]) if d.get(name) is not None else None
        thresholds = d.get("thresholds")
        if thresholds is not None and not (isinstance(thresholds, list) and all(
                isinstance(x, (int, float)) and 0 <= x <= 1 for x in thresholds)):
            raise ValueError("the label thresholds are not a list of probabilities (0 to 1)")
        return cls(**fields)

    def to_dict(self) -> dict:
        return {**vars(self), **{name: vars(getattr(self, name)) if getattr(self, name) else None
                                 for name in ("reject", "reject_knn")}}


@dataclass(frozen=True)
class EmbeddingBank:
    """The training images' embeddings for the knn score: the head's input (eval transform) of each image, or of
    a seeded sample of `sampled_from` of them, L2-normalised rows stored as float16 (half the bytes; a cosine
    moves by 3e-5 at most, on hymenoptera's Lite0 embeddings). Saved in the checkpoint beside the weights, so
    best.pt stays all predict needs."""
    vectors: torch.Tensor  # N x D, unit rows
    sampled_from: int  # training images the run had (N when all of them)
    seed: int = 0

    @classmethod
    def from_dict(cls, d: dict) -> EmbeddingBank:
        v = d.get("vectors") if isinstance(d, dict) else None
        if not (isinstance(v, torch.Tensor) and v.ndim == 2 and len(v) >= 1 and v.is_floating_point()):
            raise ValueError("the training embeddings are not a matrix of floats")
        if not torch.isfinite(v).all():
            raise ValueError("the training embeddings hold NaN or inf")
        return cls(v, int(d.get("sampled_from", len(v))), int(d.get("seed", 0)))

    def to_dict(self) -> dict:
        return {"vectors": self.vectors.detach().to("cpu", torch.float16).contiguous(),
                "sampled_from": self.sampled_from, "seed": self.seed}


@dataclass
class Checkpoint:
    model: ModelSpec  # the architecture; its weights are `state`, so model.weights is None
    class_names: list[str]
    preprocessing: Preprocessing
    head_name: str  # dotted module path of the classifier
    strategy: str  # what was trained: feature-extract | last-stage | full
    state: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    metrics: dict = field(default_factory=dict)  # the epoch row these weights scored
    calibration: Calibration | None = None  # temperature scaling, fitted on val at the end of training
    recipe: dict = field(default_factory=dict, repr=False)  # the fully resolved recipe
    environment: dict = field(default_factory=dict, repr=False)  # seed and library versions
    resume: dict | None = field(default=None, repr=False)  # last.pt: optimizer, scheduler, RNG, progress
    embeddings: EmbeddingBank | None = field(default=None, repr=False)  # best.pt: for the knn rejection score

    def __post_init__(self):
        if isinstance(self.calibration, dict):  # as stored on disk
            self.calibration = Calibration.from_dict(self.calibration)

    @property
    def temperature(self) -> float:
        """Divides the logits before the softmax; 1 when the checkpoint was never calibrated."""
        return float(self.calibration.temperature) if self.calibration else 1.0

    @property
    def task(self) -> str:
        """multiclass or multilabel (the recipe's task; checkpoints from before it: multiclass)."""
        return str(self.recipe.get("task", "multiclass"))

    @property
    def thresholds(self) -> list[float]:
        """multilabel: each label's probability threshold, chosen on val (0.5 each before calibration)."""
        stored = self.calibration.thresholds if self.calibration else None
        return list(stored) if stored else [0.5] * len(self.class_names)

    @property
    def reject_threshold(self) -> float | None:
        """The calibrated top-1 probability below which an image is `unknown`, chosen on val at the end of training
        (calibration.rejection_threshold): what `--reject auto` uses where the knn score cannot be computed
        (deploy.reject); None for checkpoints from before it."""
        reject = self.calibration.reject if self.calibration else None
        return float(reject.threshold) if reject else None

    def with_state(self, state: dict[str, torch.Tensor], **changes) -> Checkpoint:
        """This checkpoint holding `state` (copied to the CPU), with other fields replaced as given."""
        return replace(self, state={k: v.detach().to("cpu", copy=True) for k, v in state.items()}, **changes)

    def meta(self) -> dict:
        return {"model": self.model.model_dump(mode="json", exclude={"weights"}), "class_names": list(self.class_names),
                "preprocessing": self.preprocessing.to_dict(), "head_name": self.head_name, "strategy": self.strategy,
                "recipe": self.recipe, "environment": self.environment, "metrics": self.metrics,
                **({"calibration": self.calibration.to_dict()} if self.calibration is not None else {})}

    def save(self, path: Path) -> None:
        payload = {"format": FORMAT, "meta": self.meta(), "model": {k: v.detach().cpu() for k, v in self.state.items()}}
        if self.resume is not None:
            payload["resume"] = self.resume
        if self.embeddings is not None:
            payload["embeddings"] = self.embeddings.to_dict()
        atomic_write(Path(path), lambda f: torch.save(payload, f))

    @classmethod
    def load(cls, path: Path) -> Checkpoint:
        path = Path(path)
        if why := unreadable_file(path, "checkpoint"):
            raise CheckpointError(why)
        payload = safe_torch_load(path, "checkpoint")
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise CheckpointError(f"{path} is not a finetune checkpoint (expected format {FORMAT})")
        try:
            return cls._from_payload(payload)
        except KeyError as exc:
            raise CheckpointError(f"{path} is not a valid finetune checkpoint: it has no {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
            raise CheckpointError(f"{path} is not a valid finetune checkpoint: {first_line(exc)}") from None

    @classmethod
    def _from_payload(cls, payload: dict) -> Checkpoint:
        meta, state = payload["meta"], payload["model"]
        names = meta["class_names"]
        if not (isinstance(names, list) and len(names) >= 2 and all(isinstance(n, str) for n in names)):
            raise ValueError("class_names must be a list of two or more names")
        if not (isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())):
            raise ValueError("the weights are not a state dict of tensors")
        bad = next((k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
        if bad is not None:
            raise ValueError(f"the weight {bad} holds NaN or inf (a damaged file, or a run that diverged)")
        return cls(model=ModelSpec.model_validate({**meta["model"], "weights": None}), class_names=names,
                   preprocessing=Preprocessing.from_dict(meta["preprocessing"]), head_name=str(meta["head_name"]),
                   strategy=str(meta["strategy"]), state=state, metrics=dict(meta.get("metrics") or {}),
                   calibration=Calibration.from_dict(meta["calibration"]) if meta.get("calibration") else None,
                   recipe=meta.get("recipe") or {},
                   environment=meta.get("environment") or {}, resume=payload.get("resume"),
                   embeddings=EmbeddingBank.from_dict(payload["embeddings"]) if "embeddings" in payload else None)
