"""`finetune average RUN_DIR... --output OUT.pt`: a model soup (Wortsman et al. 2022, "Model soups: averaging
weights of multiple fine-tuned models improves accuracy without increasing inference time").

- uniform: the plain mean of every checkpoint's weights.
- greedy: the checkpoints sorted by val accuracy, best first; each next one joins the soup only when the average
  with it scores at least as well on val as the soup without it (the paper's rule, ties join). So the soup never
  scores below the best single checkpoint on that val split - the split it was chosen on, so its accuracy there
  is optimistic; judge it on other images.

The checkpoints are the runs' best.pt: one architecture, the same classes, the same pretrained start
(averaging.check_same_model). The val split is the runs' own (averaging.val_split); uniform scores on it when it is
readable here, greedy needs it. OUT.pt is a normal checkpoint (the best ingredient's architecture, classes,
preprocessing and recipe, with the soup's weights and val scores), without a temperature: none was fitted for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..checkpoint import Checkpoint
from ..errors import ConfigError, DataError
from .averaging import (
    Score,
    average_states,
    check_output,
    check_same_model,
    read_checkpoints,
    result_checkpoint,
    val_split,
)

METHODS = ("uniform", "greedy")


@dataclass(frozen=True)
class Ingredient:
    path: Path
    score: Score | None  # alone, on the val split (None when not scored)
    kept: bool  # in the soup
    soup_score: Score | None = None  # greedy: the soup's score with it (the decision)


@dataclass(frozen=True)
class Soup:
    method: str
    output: Path
    ingredients: list[Ingredient]  # in the order they were considered (greedy: best first)
    score: Score | None  # the soup's, on the val split
    val: str  # where the val images are, or why it was not scored
    notes: list[str] = field(default_factory=list)

    @property
    def kept(self) -> list[Ingredient]:
        return [i for i in self.ingredients if i.kept]


def make_soup(runs: list[Path], output: Path, method: str = "uniform", *, batch_size: int = 32,
              device: str = "auto", console=None) -> Soup:
    """Average the runs' best.pt (`method` uniform or greedy) and write OUT.pt; returns what was done and scored."""
    if method not in METHODS:
        raise ConfigError(f"--method {method!r}: choose uniform or greedy")
    if len(runs) < 2:
        raise ConfigError("give two or more run folders (or checkpoints) to average")
    checkpoints = read_checkpoints(runs)
    check_same_model(checkpoints)
    output = check_output(output, checkpoints)
    val, why = val_split(checkpoints, batch_size, device, console)
    if val is None and method == "greedy":
        raise DataError(f"--method greedy chooses by val accuracy, but {why}; use --method uniform")
    scores = {p: val.score(c) for p, c in checkpoints} if val is not None else {p: None for p, _ in checkpoints}
    if method == "greedy":
        ingredients, state = greedy(checkpoints, scores, val.score)
    else:
        state = average_states([c.state for _, c in checkpoints])
        ingredients = [Ingredient(p, scores[p], True) for p, _ in checkpoints]
    by_path = dict(checkpoints)
    base = by_path[ingredients[0].path]  # the best alone (greedy), or the first given
    soup_score = None
    if val is not None:
        kept = [i for i in ingredients if i.kept]
        soup_score = kept[-1].soup_score if method == "greedy" else val.score(base.with_state(state))
    metrics = {"epoch": "soup", "soup": method, "ingredients": [str(i.path) for i in ingredients if i.kept]}
    if soup_score is not None:
        metrics.update(val_acc=soup_score.acc, val_loss=soup_score.loss, val_images=soup_score.images)
    result_checkpoint(base, state, metrics).save(output)
    notes = [] if val is not None else [f"not scored: {why}"]
    return Soup(method, output, ingredients, soup_score, val.where if val is not None else why, notes)


def greedy(checkpoints: list[tuple[Path, Checkpoint]], scores: dict[Path, Score], score
           ) -> tuple[list[Ingredient], dict]:
    """Wortsman et al.'s greedy soup: best first; a checkpoint joins when the soup with it scores at least as well
    (val accuracy) as without. Returns the ingredients as considered and the soup's weights."""
    # best first: accuracy, then the lower loss, then the order given
    ordered = sorted(checkpoints, key=lambda pc: (-scores[pc[0]].acc, scores[pc[0]].loss))
    (first_path, first), *rest = ordered
    kept_states, best = [first.state], scores[first_path]
    ingredients = [Ingredient(first_path, best, True, best)]
    for path, ckpt in rest:
        candidate = average_states([*kept_states, ckpt.state])
        tried = score(first.with_state(candidate))
        joins = tried.acc >= best.acc
        if joins:
            kept_states.append(ckpt.state)
            best = tried
        ingredients.append(Ingredient(path, scores[path], joins, tried))
    return ingredients, average_states(kept_states)
