"""distill: a trained checkpoint teaches the model a run trains (Hinton et al. 2015, "Distilling the Knowledge in a
Neural Network"). The training loss becomes

    (1 - alpha) * CE(student, labels) + alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))

with the run's own criterion as CE (class weights, label smoothing, mixup's soft targets), the KL summed over the
classes and averaged over the batch like the CE. Dividing by T softens both distributions; the T^2 keeps the soft
term's gradients the size of the hard term's as T changes (Hinton et al., section 2). Validation loss stays the
plain CE, so val scores compare with a run without the teacher.

The teacher sees what the student sees: each train batch as the student's transform made it, renormalised and
resized to the teacher's own preprocessing. When every training image is the same tensor each epoch
(DataSpec.fixed_inputs: data.augment none, no erasing or mixing) its logits are computed once per image before
the epochs and looked up by index (the sampler's order); otherwise the teacher runs on each batch, in eval mode,
without gradients. Neither draws from torch's RNG, so a resumed run stays bit-identical.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from ..checkpoint import Checkpoint
from ..config import DistillSpec
from ..console import literal, track
from ..data.loading import Loaders, one_pass_loader, prefetched
from ..errors import CheckpointError, ConfigError
from ..files import write_text
from ..models.checkpointed import load_model
from ..preprocessing import Preprocessing
from ..runtime.device import Compute
from ..runtime.threads import tuned_threads
from .progress import Tally


def distillation_loss(hard: torch.Tensor, student: torch.Tensor, teacher: torch.Tensor, alpha: float,
                      temperature: float) -> torch.Tensor:
    """(1 - alpha) * hard + alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)), the KL's batch mean.
    `hard`: the criterion's loss on the labels; `student`, `teacher`: logits (batch x classes)."""
    t = temperature
    soft = F.kl_div(F.log_softmax(student / t, dim=1), F.log_softmax(teacher.float() / t, dim=1),
                    reduction="batchmean", log_target=True)
    return (1 - alpha) * hard + alpha * t * t * soft


class DistillLoss:
    """What TrainStep calls with a batch's teacher logits: distillation_loss at the recipe's alpha and T."""

    def __init__(self, alpha: float, temperature: float):
        self.alpha, self.temperature = alpha, temperature

    def __call__(self, hard: torch.Tensor, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return distillation_loss(hard, student, teacher, self.alpha, self.temperature)


class Teacher:
    """The teacher model on the run's device, in eval mode, and how it is fed. Built by load_teacher before the run
    folder exists; `taught` runs its passes and records its val score for the summary."""

    def __init__(self, model: nn.Module, checkpoint: Checkpoint, spec: DistillSpec, student: Preprocessing,
                 compute: Compute, cached: bool):
        self.model, self.checkpoint, self.spec, self.compute = model, checkpoint, spec, compute
        self.student, self.cached = student, cached
        self.val_loss: float | None = None
        self.val_acc: float | None = None

    @property
    def name(self) -> str:
        return f"{self.checkpoint.model.source}:{self.checkpoint.model.name}"

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """The teacher's float32 logits (on the device) of a batch made by the student's transform."""
        with torch.no_grad(), self.compute.autocast():
            return self.model(self.as_teacher_sees(self.compute.to_device(images))).float()

    def as_teacher_sees(self, images: torch.Tensor) -> torch.Tensor:
        """The student's normalised crops in the teacher's normalisation and at its crop size."""
        s, t = self.student, self.checkpoint.preprocessing
        if (s.mean, s.std) != (t.mean, t.std):
            def column(values):
                return torch.tensor(values, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
            images = (images * column(s.std) + column(s.mean) - column(t.mean)) / column(t.std)
        if images.shape[-1] != t.size or images.shape[-2] != t.size:
            mode = t.interpolation if t.interpolation in ("bilinear", "bicubic") else "bilinear"
            images = F.interpolate(images, size=(t.size, t.size), mode=mode, antialias=True, align_corners=False)
        return images

    def taught(self, loaders: Loaders, cut, console):
        """(train batches with the teacher's logits as their fourth item, val batches). `cut(loaders)` makes the
        batches the trained part runs on (loop.frozen_batches: images, or the frozen prefix's outputs)."""
        self.score(loaders.val, console)
        if self.cached:
            logits = self.pass_over(loaders, console)
            train, val = cut(loaders)
            return CachedTeacherBatches(train, logits, loaders.sampler), val
        return cut(replace(loaders, train=LiveTeacherBatches(loaders.train, self)))

    def score(self, val_batches, console) -> None:
        """The teacher's val loss and accuracy, on the val images as it sees them in training."""
        tally = Tally()
        for images, labels, *_ in track(val_batches, "distill: teacher on val", console):
            keep = labels >= 0
            if keep.any():
                logits, y = self.logits(images[keep]), labels[keep].to(self.compute.device)
                tally.add(float(F.cross_entropy(logits, y)), int((logits.argmax(1) == y).sum()), int(keep.sum()))
        self.val_loss, self.val_acc = tally.means(self.compute.dist)
        console.print(f"distill: teacher {literal(self.name)} ({literal(self.spec.teacher)}), val acc "
                      f"{self.val_acc:.4f}; its logits "
                      + ("computed once per train image (the inputs are the same every epoch)" if self.cached else
                         "computed on each batch (random augmentation)"), style="dim", soft_wrap=True)

    def pass_over(self, loaders: Loaders, console) -> torch.Tensor:
        """The teacher's logits of every train image (file order, on the CPU), each computed once."""
        images = loaders.train_images
        cpu = self.compute.device.type == "cpu"  # as the feature pass: decode in a thread of this process on a CPU
        ordered = one_pass_loader(images, loaders.batch_size, 0 if cpu else loaders.workers, loaders.seed, not cpu)
        out = []
        with torch.random.fork_rng(devices=[]):  # draws nothing from the run's RNG, whatever a transform does
            for batch, _ in track(tuned_threads(prefetched(ordered)) if cpu else ordered,
                                  "distill: teacher on train", console, total=len(ordered)):
                out.append(self.logits(batch).cpu())
        return torch.cat(out)

    def summary(self, best: dict, run_dir: Path) -> list[tuple[str, str]]:
        """The summary's rows: teacher against student on val, and the run to compare with."""
        without = f"finetune train {run_dir / 'recipe.yaml'} --set distill=null --output {run_dir}-plain"
        return [("distill", f"teacher {self.name}: val acc {self.val_acc:.4f}; student best.pt {best['val_acc']:.4f} "
                            f"(alpha {self.spec.alpha:g}, T {self.spec.temperature:g}; distill.json)"),
                ("without the teacher", without)]

    def record(self, best: dict, run_dir: Path) -> None:
        """RUN_DIR/distill.json: the teacher, its val score and the student's, and the comparison run's command."""
        write_text(run_dir / "distill.json", json.dumps({
            "teacher": str(self.spec.teacher), "teacher_model": self.name, "alpha": self.spec.alpha,
            "temperature": self.spec.temperature,
            "teacher_logits": "once per train image" if self.cached else "each batch",
            "teacher_val_acc": self.val_acc, "teacher_val_loss": self.val_loss,
            "student_val_acc": best["val_acc"], "student_val_loss": best["val_loss"], "student_epoch": best["epoch"],
            "without": self.summary(best, run_dir)[1][1]}, indent=2))


def load_teacher(spec: DistillSpec | None, class_names: list[str], student: Preprocessing, compute: Compute,
                 cached: bool) -> Teacher | None:
    """distill.teacher as a model on the run's device, after the checks a user can fix: the file is a finetune
    checkpoint, trained on the data's classes in the data's order (its logit k must mean the student's class k).
    Builds the model without drawing from the run's RNG (the student's head is initialised from it)."""
    if spec is None:
        return None
    try:
        checkpoint = Checkpoint.load(spec.teacher)
    except CheckpointError as exc:
        raise CheckpointError(f"distill.teacher: {exc}") from None
    if checkpoint.class_names != list(class_names):
        same = sorted(checkpoint.class_names) == sorted(class_names)
        raise ConfigError(f"distill.teacher {spec.teacher} was trained on the classes "
                          f"{', '.join(checkpoint.class_names)}, this data has {', '.join(class_names)}"
                          + (" (the same names in another order)" if same else "")
                          + ": a teacher must be trained on the same class folders")
    with torch.random.fork_rng(devices=[]):
        model, _ = load_model(checkpoint)
    model.to(compute.device, memory_format=torch.channels_last)
    return Teacher(model.eval().requires_grad_(False), checkpoint, spec, student, compute, cached)


class _TeacherBatches:
    """Train batches with the teacher's logits beside them; epochs, length and workers are the batches' own."""

    def __init__(self, batches):
        self.batches = batches

    @property
    def loader(self):  # data.loading.stopped_workers finds the worker processes through it
        return self.batches

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.batches.set_epoch(epoch, skip)

    def __len__(self) -> int:
        return len(self.batches)


class CachedTeacherBatches(_TeacherBatches):
    """Train batches with each image's stored teacher logits, looked up by the index the sampler gave it: the
    DataLoader under the batches takes the sampler's positions in order, `len(labels)` per batch."""

    def __init__(self, batches, logits: torch.Tensor, sampler):
        super().__init__(batches)
        self.logits, self.sampler = logits, sampler

    def __iter__(self):
        positions = iter(self.sampler)  # a pure function of (seed, epoch, skip): the same order the loader reads
        for inputs, labels, *rest in self.batches:
            index = torch.tensor([next(positions)[0] for _ in range(len(labels))])
            yield inputs, labels, rest[0] if rest else None, self.logits[index.clamp(min=0)]  # -1: padding


class LiveTeacherBatches(_TeacherBatches):
    """Image batches (augmented, or mixed) with the teacher's logits of those very images."""

    def __init__(self, batches, teacher: Teacher):
        super().__init__(batches)
        self.teacher = teacher

    def __iter__(self):
        for images, labels, *rest in self.batches:
            yield images, labels, rest[0] if rest else None, self.teacher.logits(images)
