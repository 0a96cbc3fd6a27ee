"""What the package needs to know about one source of models, in one place: `ModelAdapter`.

An adapter builds a source's architecture with its weights and names the seams the rest of the package cuts
at, from what the source itself declares (timm's `reset_classifier` / `group_matcher` / `forward_head`,
torchvision's weights entries, our ResNets' stable child names) rather than from guesses:

- the head: its module name, and `reset_head` that replaces it with one for k classes;
- the parameter groups: blocks in timm's `group_matcher` form (layer-wise lr decay), and the last stage;
- the feature/head split: the head's input computed by the model's own forward_features (the frozen
  prefix for feature-extract), where the source has that seam;
- preprocessing, from the weights.

Adding a model family is one file with one subclass, registered in `adapters/__init__.py`. A family without a
feature/head seam still trains: the frozen prefix falls back to the generic cut (train/prefix.py).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable

from torch import Tensor, nn

from ...config import HeadSpec, ModelSpec
from ...preprocessing import Preprocessing

HeadInput = Callable[[nn.Module, Tensor], Tensor]  # (model, images) -> what its head takes


class ModelAdapter(ABC):
    source: str  # model.source in a recipe

    @abstractmethod
    def build(self, spec: ModelSpec) -> nn.Module:
        """The architecture spec.name with spec.weights loaded (random init for None), its own head still on."""

    @abstractmethod
    def preprocessing(self, spec: ModelSpec, model: nn.Module) -> Preprocessing:
        """What the weights were trained on: size, resize, interpolation, mean and std."""

    @abstractmethod
    def head_name(self, model: nn.Module) -> str:
        """Dotted module path of the classifier head."""

    @abstractmethod
    def last_stage(self, spec: ModelSpec, model: nn.Module) -> list[str]:
        """Parameter-name prefixes of the last stage, the head excluded ([] where the model has none)."""

    @abstractmethod
    def block_matcher(self, model: nn.Module) -> dict | None:
        """timm's group_matcher form: which parameters make up each block, input side first (None: unknown)."""

    def reset_head(self, model: nn.Module, num_classes: int, head: HeadSpec) -> int:
        """Replace the head with `head` for num_classes; returns the feature width it takes. The old head's
        parameters leave the model."""
        name = self.head_name(model)
        width = head_width(model.get_submodule(name))
        model.set_submodule(name, build_head(head, width, num_classes))
        return width

    def head_input(self, model: nn.Module) -> HeadInput | None:
        """The head's input from the model's own feature seam (None: the source has none; the generic cut)."""
        return None

    def groups(self, model: nn.Module) -> list[list[str]]:
        """Parameter names block by block, input side first (the head last), each parameter in one block."""
        from timm.models import group_parameters

        matcher = self.block_matcher(model)
        if matcher is None:
            return [[n for n, _ in model.named_parameters()]]
        return [list(names) for _, names in sorted(group_parameters(model, matcher).items())]


def build_head(spec: HeadSpec, in_features: int, num_classes: int) -> nn.Module:
    """The one place a head is made. A bare Linear keeps torchvision/timm key names (fc.weight)."""
    if spec.type == "linear":
        linear = nn.Linear(in_features, num_classes)
        return nn.Sequential(nn.Dropout(spec.dropout), linear) if spec.dropout else linear
    return nn.Sequential(
        nn.Dropout(spec.dropout),
        nn.Linear(in_features, spec.hidden),
        nn.ReLU(inplace=True),
        nn.Dropout(spec.hidden_dropout),
        nn.Linear(spec.hidden, num_classes),
    )


def head_width(head: nn.Module) -> int:
    """The feature width a head takes: its first Linear's inputs (a head of ours may be Dropout, Linear, ...)."""
    return next(m for m in head.modules() if isinstance(m, nn.Linear)).in_features


def module_name(model: nn.Module, module: nn.Module) -> str | None:
    """The dotted name `module` has inside `model` (identity, not type: what the model itself says it is)."""
    return next((n for n, m in model.named_modules() if m is module), None)


def outermost_prefixes(names: list[str], chosen: list[str]) -> list[str]:
    """The outermost module paths (or bare parameter names) whose parameters are all in `chosen`, in the order
    of `names` (all of a model's parameter names): the last stage as a user would name it (blocks.5, not
    blocks.5.0.conv_pw)."""
    def prefixes(name: str) -> list[str]:
        parts = name.split(".")
        return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]

    total = Counter(p for n in names for p in prefixes(n))
    inside = Counter(p for n in chosen for p in prefixes(n))
    out: list[str] = []
    for n in chosen:
        prefix = next(p for p in prefixes(n) if inside[p] == total[p])
        if prefix not in out:
            out.append(prefix)
    return out
