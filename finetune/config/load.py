"""Load, override and dump a recipe. Precedence: defaults < recipe file < CLI flags (--data/--output) < --set.

Values of --set are YAML scalars, never evaluated; an unknown key is refused with a "did you mean".
"""

from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ValidationError

from ..errors import ConfigError
from ..files import read_yaml_file, unreadable_file
from .recipe import Recipe


def _suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(valid)}"


def _section_keys(loc: tuple) -> list[str]:
    model: Any = Recipe
    for part in loc[:-1]:
        field = model.model_fields.get(str(part)) if isinstance(model, type) and issubclass(model, BaseModel) else None
        # an optional section (distill: null by default) is Optional[Section]: its keys are the Section's
        section = next((t for t in (field.annotation, *get_args(field.annotation)) if isinstance(t, type) and
                        issubclass(t, BaseModel)), None) if field is not None else None
        if section is None:
            return []
        model = section
    return list(model.model_fields)


def _format(error: ValidationError, source: str) -> ConfigError:
    lines = []
    for e in error.errors():
        key = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            lines.append(f"unknown key {key!r}{_suggest(str(e['loc'][-1]), _section_keys(e['loc']))}")
        else:
            message = e["msg"].removeprefix("Value error, ")
            lines.append(f"{key}: {message} (got {_short(e.get('input'))})" if key else message)
    return ConfigError(f"invalid recipe {source}: " + "; ".join(lines))


def _short(value: Any, limit: int = 80) -> str:
    """repr(value), cut to `limit` characters: a 1 MB string does not make a 1 MB error line."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def parse_override(text: str) -> tuple[list[str], Any]:
    """'optim.lr=3e-4' -> (['optim', 'lr'], 0.0003). Values are YAML scalars, never evaluated."""
    if "=" not in text:
        raise ConfigError(f"--set needs key.path=value, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: cannot parse value {raw!r}: {exc}") from None
    if isinstance(value, str):  # YAML 1.1 reads 3e-4 as a string; people mean a number
        try:
            value = float(value)
        except ValueError:
            pass
    return key.strip().split("."), value


def _apply(tree: dict, path: list[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {'.'.join(path)}: {part!r} is not a section")
        node = child
    node[path[-1]] = value


def read_yaml(path: Path) -> dict:
    """A recipe file as a dict: safe, bounded YAML (files.read_yaml_file); python tags are refused, not run."""
    path = Path(path)
    if why := unreadable_file(path, "recipe file"):
        raise ConfigError(why)
    data = read_yaml_file(path, "recipe")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {path} must be a mapping of sections (model:, data:, ...), "
                          f"got {type(data).__name__}")
    return data


def override_tree(tree: dict, overrides: list[str] = (), flags: dict[str, Any] | None = None) -> dict:
    """A copy of a recipe tree with flags ({'data.root': path}) then --set overrides applied, not yet validated."""
    tree = copy.deepcopy(tree)
    for key, value in (flags or {}).items():
        _apply(tree, key.split("."), value)
    for text in overrides:
        _apply(tree, *parse_override(text))
    return tree


def build_recipe(tree: dict, overrides: list[str] = (), source: str = "",
                 flags: dict[str, Any] | None = None) -> Recipe:
    """Validate a recipe tree after applying flags ({'data.root': path}) then --set overrides."""
    tree = override_tree(tree, overrides, flags)
    try:
        return Recipe.model_validate(tree)
    except ValidationError as exc:
        raise _format(exc, source) from None


def load_recipe(path: Path | None = None, overrides: list[str] = (), data: Path | None = None,
                output: Path | None = None) -> Recipe:
    """defaults < recipe file < --data/--output < --set."""
    tree = read_yaml(path) if path else {}
    flags = {key: str(value) for key, value in (("data.root", data), ("run.output", output)) if value is not None}
    recipe = build_recipe(tree, overrides, source=str(path or "defaults"), flags=flags)
    if recipe.run.name is None and path is not None:
        recipe.run.name = Path(path).stem
    return recipe


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
