"""The recipe: typed, documented sections (model, data, strategy, ...), each field with its default and range.

Unknown keys, NaN and inf are refused; the defaults that depend on other sections (data.augment,
strategy.head_solver) are resolved once, here, when a Recipe is built.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_serializer, field_validator, model_validator

from .features import plan_features
from .strategies import TRAINED_GROUPS

MAX_LR = 10.0  # no optimizer here trains at a higher rate; above it Adam's step overflows float32 before it diverges
MAX_BATCH = 65_536  # images per batch (train.batch_size)
MAX_IMAGE_SIZE = 4096  # pixels a side: a 100,000 px crop would need 30 GB per image before any message


class _Section(BaseModel):
    # Unknown keys are errors (with a "did you mean"), never silently ignored; NaN and inf are never numbers here.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class HeadSpec(_Section):
    type: Literal["linear", "mlp"] = Field(
        "linear", description="linear: one Linear layer; mlp: Linear-ReLU-Dropout-Linear")
    hidden: int = Field(512, gt=0, description="mlp only: hidden width")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the pooled features, before the first Linear")
    hidden_dropout: float = Field(0.5, ge=0, lt=1, description="mlp only: dropout after the hidden layer")


class ModelSpec(_Section):
    source: Literal["torchvision", "scratch", "timm"] = Field(
        "torchvision", description="where the architecture comes from")
    name: str = Field("resnet50", description="architecture name, e.g. resnet50, tf_efficientnet_lite0")
    weights: Optional[str] = Field(
        "DEFAULT",
        description="torchvision weights name (DEFAULT, IMAGENET1K_V1, IMAGENET1K_V2), a local state-dict file, "
        "or null for random init",
    )
    head: HeadSpec = Field(default_factory=HeadSpec)
    cifar_stem: bool = Field(False, description="scratch ResNets: 3x3 stride-1 stem, no max-pool (small images)")


# data.root is read as a path, which makes one "/" of the "//" after a URL's scheme (a shard URL, data.shard_fetch)
_COLLAPSED_URL = re.compile(r"\b(https?|s3|gs|gcs|ais|sftp|scp|ftps|az|abfs):/(?=[^/])", re.IGNORECASE)


def root_text(root) -> str:
    """data.root as the user wrote it: a URL's "//" put back."""
    return _COLLAPSED_URL.sub(r"\1://", str(root))


class DataSpec(_Section):
    root: Optional[Path] = Field(None, description="ImageFolder root: class folders, or train/ and val/ holding "
                                                   "them; or @labels.csv (path, label, optional split columns); "
                                                   "or WebDataset shards: a `finetune shard` folder, a .tar, or a "
                                                   "brace pattern of .tar files, or the same behind a URL "
                                                   "(https://, s3://, pipe:COMMAND); or hf:PATH[:split], a Hugging "
                                                   "Face dataset (save_to_disk, parquet). task multilabel: @labels.csv "
                                                   "with path and labels (separated by | or ;) columns, or a "
                                                   "folder holding labels.csv")
    val_fraction: float = Field(
        0.2, gt=0, lt=1, description="share of each class held out when there is no val/ folder")

    image_size: Optional[int] = Field(
        None, ge=8, le=MAX_IMAGE_SIZE, description="crop size for training and evaluation (default: the weights' own)")
    augment: Optional[Literal["none", "flip", "standard", "randaugment", "trivialaugment", "autoaugment"]] = Field(
        None, description="none; flip: horizontal flip; standard: random resized crop + flip; randaugment, "
        "trivialaugment, autoaugment: standard + that policy (torchvision v2). Default: none for strategy "
        "feature-extract (so the frozen features are computed once and cached), standard otherwise")
    mixup: Optional[float] = Field(
        None, gt=0, le=10, description="mixup alpha (Beta(alpha, alpha) mixing of image pairs, e.g. 0.2); null: off")
    cutmix: Optional[float] = Field(
        None, gt=0, le=10, description="cutmix alpha (e.g. 1.0); null: off. With mixup too, each batch uses one of "
        "the two, chosen at random (as timm does)")
    random_erasing: float = Field(
        0.0, ge=0, lt=1, description="probability of erasing a random rectangle of each training image (0: off)")
    workers: Union[int, Literal["auto"]] = Field(
        "auto", description="DataLoader worker processes, 0 to load in the main process (auto: from the CPU count)")
    class_weights: Optional[Literal["auto"]] = Field(None, description="auto: inverse-frequency loss weights")
    sampler: Optional[Literal["balanced"]] = Field(None, description="balanced: sample classes equally often")
    shuffle_buffer: Optional[int] = Field(
        None, ge=1, description="shards only: stream the train shards, each epoch dealt to the processes and read "
        "through in order, shuffled by a buffer of this many images (webdataset's shuffle(N)), e.g. 1000; null: "
        "the whole split shuffled each epoch, the images read wherever they are")

    @property
    def fixed_inputs(self) -> bool:
        """Each training image is the same tensor every epoch: no random augmentation, erasing or mixing."""
        return self.augment == "none" and not self.random_erasing and not (self.mixup or self.cutmix)

    @field_validator("workers")
    @classmethod
    def _workers(cls, workers):
        if workers != "auto" and not 0 <= workers <= 256:
            raise ValueError("must be auto or a number of worker processes from 0 to 256")
        return workers

    @model_validator(mode="after")
    def _streamed(self) -> DataSpec:
        if self.shuffle_buffer is not None and self.sampler is not None:
            raise ValueError("data.sampler balanced draws images from the whole split, and data.shuffle_buffer "
                             "streams each process its own shards; set one of them to null")
        return self

    @field_serializer("root", when_used="json")
    def _root(self, root: Optional[Path]) -> Optional[str]:
        return None if root is None else root_text(root)


class StrategySpec(_Section):
    name: Literal["feature-extract", "last-stage", "full"] = Field(
        "feature-extract", description="which parameters train: the head; the last stage + head; everything"
    )
    lr: dict[Literal["head", "last_stage", "backbone"], float] = Field(
        default_factory=lambda: {"head": 1e-3, "last_stage": 1e-4, "backbone": 1e-5},
        description="absolute learning rate per parameter group (head, last_stage, backbone)",
    )
    freeze_epochs: int = Field(
        0, ge=0, description="last-stage or full: train only the head for this many epochs first (the backbone "
        "frozen, its BatchNorm in eval), then unfreeze the other groups at their own rates (fastai's fine_tune)")
    layer_decay: Optional[float] = Field(
        None, gt=0, le=1, description="layer-wise lr decay: each block's lr is its group's lr x decay^(blocks from "
        "the top), blocks found by name (timm's group_matcher, ResNets' layerN.M); null: off")
    frozen_bn: Literal["eval", "train"] = Field(
        "eval", description="BatchNorm in frozen parts: eval keeps its running statistics; train lets them adapt "
        "to the new data (fastai's train_bn; the frozen features are then not cached)")
    head_solver: Optional[Literal["lbfgs", "sgd"]] = Field(
        None, description="feature-extract only: lbfgs fits the linear head on the cached features as L2-regularised "
        "logistic regression (L-BFGS, L2 chosen by a sweep on val; train.epochs, optim and schedule unused); sgd "
        "trains it for train.epochs with optim. Default: lbfgs when the features can be cached (feature-extract, "
        "linear head without dropout, no random augmentation or features.views > 0, no mixup/cutmix/EMA/SWA/distill), "
        "else sgd")

    @field_validator("lr")
    @classmethod
    def _positive(cls, lr: dict) -> dict:
        for group, value in lr.items():
            if not 0 < value <= MAX_LR:
                raise ValueError(f"learning rate for {group!r} must be above 0 and at most {MAX_LR:g}, got {value}")
        return lr


class FeaturesSpec(_Section):
    cache: Literal["auto", "off"] = Field(
        "auto", description="auto: with strategy feature-extract and a deterministic frozen backbone, compute the "
        "backbone's pooled features once and train the head on them; off: run the backbone every step")
    views: int = Field(
        0, ge=0, description="with random augmentation (data.augment flip/standard): 0 recomputes the backbone on "
        "fresh augmentations every epoch (default); K > 0 caches K augmented views of each training image, "
        "epoch e reading view e mod K")
    dir: Optional[Path] = Field(
        None, description="where cached features live (default: $FINETUNE_CACHE_DIR, else $XDG_CACHE_HOME/finetune/"
        "features or ~/.cache/finetune/features); never inside the dataset")

    @field_validator("cache", mode="before")
    @classmethod
    def _yaml_off(cls, value):  # YAML reads a bare `off` (and `no`, `false`) as false
        return {False: "off", True: "auto"}.get(value, value) if isinstance(value, bool) else value


class OptimSpec(_Section):
    name: Literal["sgd", "adam", "adamw"] = Field("adam", description="optimizer")
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd only")
    nesterov: bool = Field(False, description="sgd only")
    weight_decay: float = Field(0.0, ge=0, description="applied to weights only, never to norm or bias parameters")


class ScheduleSpec(_Section):
    name: Literal["constant", "step", "cosine"] = Field("cosine", description="learning-rate schedule over the epochs")
    warmup_epochs: float = Field(0.0, ge=0, description="linear warmup from 0 over this many epochs")
    step_size: int = Field(30, gt=0, description="step only: epochs between decays")
    gamma: float = Field(0.1, gt=0, le=1, description="step only: decay factor")
    min_factor: float = Field(0.0, ge=0, le=1, description="cosine only: final lr as a fraction of the initial")


class SwaSpec(_Section):
    start_epoch: int = Field(
        ..., ge=1, description="stochastic weight averaging (Izmailov et al. 2018, torch.optim.swa_utils): the "
        "weights at the end of this epoch and of every later one are averaged with equal weight; at the end of the "
        "run the BatchNorm layers that trained get their statistics recomputed on the train images for the "
        "average, which is evaluated on val (metrics.csv's `swa` row). last.pt holds the average; best.pt holds it "
        "when it scores at least as well on val as the best epoch. The recipe's own schedule keeps running (no "
        "SWALR): a schedule that ends near 0 (cosine) leaves little to average, so keep some lr (schedule.min_factor, "
        "or constant)")


class TrainSpec(_Section):
    epochs: int = Field(5, gt=0, le=100_000, description="passes over the training images")
    batch_size: Union[int, Literal["auto"]] = Field(
        32, description="images per batch, over all processes when data-parallel (each of N processes takes "
        "batch_size / N); auto: found for this machine before the run on real training steps (CUDA: the largest "
        "power of two per process that fits with 10% of the memory left; CPU: the most training images/s), written "
        "to the run's recipe.yaml; 32 when only the head trains on stored features (docs/performance.md)")
    seed: int = Field(0, ge=0, lt=2**32, description="seeds the split, the model's new head and the data order")
    device: str = Field("auto", description="auto (CUDA if present), cpu, cuda, cuda:N")
    amp: bool = Field(True, description="mixed precision on CUDA (bf16 where supported); ignored on CPU")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="share of the target spread over all classes")
    save_every: Optional[int] = Field(
        None, gt=0, description="also write last.pt every N optimizer steps, mid-epoch (long epochs); "
        "null: at the end of each epoch only")
    ema: Optional[float] = Field(
        None, gt=0, lt=1, description="decay of an exponential moving average of the weights, updated every "
        "optimizer step (e.g. 0.999); evaluated each epoch beside the raw weights, and what best.pt/last.pt hold. "
        "null: off")
    swa: Optional[SwaSpec] = Field(
        None, description="stochastic weight averaging from epoch start_epoch on ({start_epoch: N}); null: off")
    accumulate: int = Field(1, ge=1, le=1024, description="gradient accumulation: batches per optimizer step")
    grad_clip: Optional[float] = Field(None, gt=0, description="clip the gradient norm to this value; null: off")
    compile: bool = Field(False, description="run the trained part through torch.compile")
    early_stop: Optional[int] = Field(
        None, ge=1, description="stop when val accuracy has not improved for this many epochs; null: off")
    sync_bn: bool = Field(False, description="data parallel on GPUs: trainable BatchNorm layers normalise over "
                          "every rank's batch (SyncBatchNorm)")
    dist_backend: Literal["auto", "nccl", "gloo"] = Field(
        "auto", description="data parallel (torchrun): NCCL on CUDA, gloo on CPU (auto)")
    budget: Optional[float] = Field(
        None, gt=0, description="wall-clock seconds for the whole run (or 90s, 10m, 1h, 1h30m; --budget): no epoch "
        "starts that would end past it, and best.pt is the best so far; null: no limit")

    @field_validator("batch_size")
    @classmethod
    def _batch_size(cls, batch_size):
        if batch_size != "auto" and not 0 < batch_size <= MAX_BATCH:
            raise ValueError(f"must be auto or a number of images from 1 to {MAX_BATCH}")
        return batch_size

    @field_validator("budget", mode="before")
    @classmethod
    def _duration(cls, value):
        return parse_duration(value) if isinstance(value, str) else value


def parse_duration(text: str) -> float:
    """Seconds in "600", "90s", "10m", "1.5h", "1h30m" (train.budget, --budget)."""
    import re

    parts = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*", text)
    if not text.strip() or parts is None or not any(parts.groups()):
        raise ValueError(f"{text!r} is not a duration: give seconds (600), or 90s, 10m, 1h, 1h30m")
    h, m, sec = (float(g) if g else 0.0 for g in parts.groups())
    return 3600 * h + 60 * m + sec


class DistillSpec(_Section):
    """Knowledge distillation (Hinton et al. 2015, "Distilling the Knowledge in a Neural Network"): a trained
    checkpoint's logits teach the model this recipe trains. The training loss is
    (1 - alpha) * CE(student, labels) + alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))."""
    teacher: Path = Field(description="the teacher: a finetune checkpoint (best.pt of a run, any architecture) "
                          "trained on the same classes, named and ordered as this data's")
    alpha: float = Field(0.5, ge=0, le=1, description="weight of the teacher's soft targets in the loss (0: the "
                         "labels alone, as without distill; 1: the teacher alone)")
    temperature: float = Field(4.0, gt=0, le=100, description="T: both models' logits are divided by T before the "
                               "softmax (softer targets as T grows); the soft term is scaled by T^2 so its gradients "
                               "keep their size")


class RunSpec(_Section):
    dir: Path = Field(Path("runs"), description="parent folder of new run folders")
    name: Optional[str] = Field(
        None, description="run folder name (default: the recipe file's name); -2, -3... if taken")
    output: Optional[Path] = Field(None, description="exact run folder (--output); must be new or empty")
    exist_ok: bool = Field(False, description="reuse run.output or runs/NAME if it exists (--exist-ok), "
                           "overwriting its checkpoints, instead of making a new NAME-2")
    loggers: list[Literal["csv", "tensorboard", "mlflow"]] = Field(
        default_factory=lambda: ["csv"], description="where the per-epoch scores go besides metrics.csv (always "
        "written): tensorboard (RUN_DIR/tensorboard), mlflow (a local mlruns/ store, or run.mlflow_uri)")
    mlflow_uri: Optional[str] = Field(
        None, description="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite in ./mlruns)")


class Recipe(_Section):
    task: Literal["multiclass", "multilabel"] = Field(
        "multiclass", description="multiclass: one class per image (softmax, cross-entropy); multilabel: any number "
        "of labels per image (data.root: @labels.csv with path and labels columns, or a folder holding labels.csv; "
        "sigmoid, BCE, per-class thresholds chosen on val, best.pt by val mAP)")
    model: ModelSpec = Field(default_factory=ModelSpec)
    data: DataSpec = Field(default_factory=DataSpec)
    strategy: StrategySpec = Field(default_factory=StrategySpec)
    features: FeaturesSpec = Field(default_factory=FeaturesSpec)
    optim: OptimSpec = Field(default_factory=OptimSpec)
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    run: RunSpec = Field(default_factory=RunSpec)
    distill: Optional[DistillSpec] = Field(
        None, description="knowledge distillation from a trained checkpoint (teacher, alpha, temperature); null: off")

    @model_validator(mode="after")
    def _resolve(self) -> Recipe:
        missing = [g for g in TRAINED_GROUPS[self.strategy.name] if g not in self.strategy.lr]
        if missing:
            raise ValueError(f"strategy {self.strategy.name!r} trains {missing} but strategy.lr has no rate for it")
        if self.data.augment is None:  # the default depends on the strategy: a frozen backbone's features are cached
            self.data.augment = "none" if self.strategy.name == "feature-extract" else "standard"
        if self.strategy.freeze_epochs and self.strategy.name == "feature-extract":
            raise ValueError("strategy.freeze_epochs needs strategy.name last-stage or full (feature-extract "
                             "freezes everything but the head for the whole run)")
        if self.task == "multilabel":
            self._check_multilabel()
        self._resolve_head_solver()
        swa = self.train.swa
        if swa is not None and self.train.ema:
            raise ValueError("train.swa and train.ema both average the weights (equally from an epoch on, or by a "
                             "decay every step); choose one and set the other to null")
        if swa is not None and swa.start_epoch > self.train.epochs:
            raise ValueError(f"train.swa.start_epoch ({swa.start_epoch}) is after the last epoch "
                             f"(train.epochs {self.train.epochs}): nothing would be averaged")
        self._check_distill()
        if self.strategy.freeze_epochs >= self.train.epochs:
            raise ValueError(f"strategy.freeze_epochs ({self.strategy.freeze_epochs}) must be less than "
                             f"train.epochs ({self.train.epochs}), or the backbone never trains")
        return self

    def _check_multilabel(self) -> None:
        """What assumes one class per image, refused with the reason (each one a line)."""
        data = self.data
        for why, refused in (
                ("data.mixup/data.cutmix mix one-class targets (torchvision's MixUp/CutMix); set them to null",
                 bool(data.mixup or data.cutmix)),
                ("train.label_smoothing spreads a softmax target over the classes; set it to 0 (BCE has no "
                 "such target)", self.train.label_smoothing > 0),
                ("data.sampler balanced draws each class equally often, which needs one class per image; set it "
                 "to null", data.sampler is not None),
                ("data.class_weights auto weights each image by its one class; set it to null",
                 data.class_weights is not None),
                ("train.swa scores its average by accuracy, not the val mAP multilabel runs are chosen by; set it "
                 "to null", self.train.swa is not None),
                ("distill matches one softmax over the classes to the teacher's; set distill to null",
                 self.distill is not None)):
            if refused:
                raise ValueError(f"task multilabel: {why}")

    def _resolve_head_solver(self) -> None:
        """strategy.head_solver: lbfgs needs a fixed set of pooled features to fit on; say what stands in its way."""
        features = plan_features(self)
        blockers = [why for why, blocks in (
            (f"strategy.name {self.strategy.name} (only feature-extract keeps the features fixed)",
             self.strategy.name != "feature-extract"),
            ("model.head.type mlp (L-BFGS fits a linear head)", self.model.head.type != "linear"),
            ("model.head.dropout (L2 regularises the solved head instead)", self.model.head.dropout > 0),
            (features.reason, self.strategy.name == "feature-extract" and not features.fixed),
            ("train.ema", bool(self.train.ema)),
            ("train.swa (one solve has no epochs to average)", self.train.swa is not None),
            ("distill (the solved head fits the labels alone; the teacher's soft targets train by SGD)",
             self.distill is not None),
        ) if blocks]
        if self.strategy.head_solver is None:
            self.strategy.head_solver = "sgd" if blockers else "lbfgs"
        elif self.strategy.head_solver == "lbfgs" and blockers:
            raise ValueError(f"strategy.head_solver lbfgs cannot run with {'; '.join(blockers)}: "
                             "set strategy.head_solver sgd, or change those settings")

    def _check_distill(self) -> None:
        """The teacher sees the images the student trains on: stored augmented views (features.views) are features,
        not images, so there is nothing for it to see."""
        if self.distill is not None and plan_features(self).train_views > 0 and not self.data.fixed_inputs:
            raise ValueError(f"distill cannot run with features.views {self.features.views}: the student trains on "
                             "stored augmented views the teacher never sees. Set features.views 0 (the teacher runs "
                             "on each batch) or data.augment none (its logits are computed once per image)")
