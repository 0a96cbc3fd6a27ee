"""--resume: a stopped run continues from its last.pt, with its own recipe.yaml.

What makes a resumed run bit-identical to an uninterrupted one on CPU:
- last.pt holds model, optimizer, scheduler, AMP scaler, epoch and step, best accuracy, the metrics rows, the
  partial epoch's running totals, and every RNG state (train.progress, written by train.state.RunState.save).
- The data order and each sample's augmentation are a pure function of (seed, epoch) (data.sampling), so
  resuming at step k of an epoch is just skipping the first k batches' indices: no worker RNG to restore, and the
  result does not depend on the number of DataLoader workers.
- Only where the data is and how it is loaded may change (RESUME_OVERRIDABLE); anything else would be another run.
"""

from __future__ import annotations

from pathlib import Path

from ..checkpoint import Checkpoint
from ..errors import ConfigError
from .checkpoints import require_last

# Keys --resume may change: where the data is and how it is loaded, not what the run computes.
RESUME_OVERRIDABLE = ("data.root", "data.workers", "train.device", "train.save_every")


def load_run_recipe(run_dir: Path, overrides: list[str] = (), data: Path | None = None):
    """The recipe a run folder was started with (RUN_DIR/recipe.yaml, safe YAML), with the few changes
    a resume may make; refused when it no longer matches the recipe last.pt was trained with."""
    from ..config import load_recipe, parse_override

    run_dir = Path(run_dir)
    if not (run_dir / "recipe.yaml").is_file():
        raise ConfigError(f"{run_dir} is not a run folder (no recipe.yaml); --resume takes a folder written by "
                          "`finetune train`")
    for text in overrides:
        key = ".".join(parse_override(text)[0])
        if key not in RESUME_OVERRIDABLE:
            raise ConfigError(f"--resume continues a run as it was; --set {key} would change it. Only "
                              f"{', '.join(RESUME_OVERRIDABLE)} can change; start a new run for anything else")
    recipe = load_recipe(run_dir / "recipe.yaml", overrides, data=data)
    trained = _flatten(_with_defaults(Checkpoint.load(require_last(run_dir)).recipe))
    now = _flatten(recipe.model_dump(mode="json"))
    changed = [f"{k}: {trained.get(k)!r} -> {now.get(k)!r}" for k in sorted(set(trained) | set(now))
               if trained.get(k) != now.get(k) and not k.startswith("run.") and k not in RESUME_OVERRIDABLE]
    if changed:
        raise ConfigError(f"{run_dir / 'recipe.yaml'} no longer matches the recipe last.pt was trained with "
                          f"({'; '.join(changed[:3])}); undo the edit, or start a new run")
    return recipe


def _with_defaults(tree: dict) -> dict:
    """A run's recipe as this version reads it: keys added since the run started take their defaults."""
    from ..config import build_recipe

    try:
        return build_recipe(tree).model_dump(mode="json")
    except ConfigError:
        return tree


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict) and not (prefix == "strategy." and k == "lr"):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
