"""run_audit(recipe): embeddings (from the feature cache), near-duplicates and leakage, out-of-fold label issues
and the head's accuracy with its spread, written as audit.json, audit.csv and audit.html into a new folder."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from ..config import Recipe, RunSpec
from ..console import literal, progress, stderr_console
from ..data.filecheck import check_files
from ..data.folders import absolute_root, dataset_folders, is_packed_root
from ..errors import ConfigError
from ..files import refuse_inside
from ..runtime.threads import usable_cpus
from ..train.rundir import create_run_dir
from .duplicates import MAX_DISTANCE, MIRRORED, THRESHOLD, Pair, find_duplicates
from .embeddings import Embeddings, load_embeddings
from .folds import FOLDS, REPEATS, Accuracy, out_of_fold
from .hashes import hash_images, require_imagehash
from .labels import LabelIssue, find_label_issues


@dataclass
class Audit:
    folder: Path
    root: Path
    embeddings: Embeddings
    threshold: float
    max_distance: int  # pHash bits
    pairs: list[Pair]
    issues: list[LabelIssue]
    probs: object  # N x C out-of-fold probabilities (numpy)
    accuracy: Accuracy
    seconds: dict[str, float] = field(default_factory=dict)


def run_audit(recipe: Recipe, threshold: float = THRESHOLD, folds: int = FOLDS, repeats: int = REPEATS,
              console=None, max_distance: int = MAX_DISTANCE) -> Audit:
    """Audit the recipe's dataset; the files land in run.output, else a new RUN_DIR/audit-NAME (never in the
    dataset). The dataset is only read."""
    from .report import write_outputs

    if recipe.task == "multilabel":
        raise ConfigError("finetune audit checks one class per image (label conflicts, confident learning); it does "
                          "not read task multilabel's labels CSV")
    if is_packed_root(recipe.data.root):
        raise ConfigError(f"finetune audit reads image files (their bytes, hashes and checks), and data.root "
                          f"{recipe.data.root} packs them in shards or a dataset: audit the folder they were made from")
    console = console or stderr_console()
    root = absolute_root(recipe.data.root) if recipe.data.root else None
    out = recipe.run.output
    refuse_inside(out or recipe.run.dir, dataset_folders(root), "the audit folder")
    require_imagehash()  # before the embeddings, not after
    seconds = {}
    start = time.perf_counter()
    emb = load_embeddings(recipe, console)
    seconds["embeddings"] = time.perf_counter() - start

    start = time.perf_counter()
    with progress(console) as bar:
        task = bar.add_task("perceptual hashes", total=len(emb))
        hashes = hash_images(emb.paths, MIRRORED, min(4, usable_cpus()), progress=lambda: bar.advance(task),
                             root=root)
    seconds["hashes"] = time.perf_counter() - start

    start = time.perf_counter()
    checks = check_files([Path(p) for p in emb.paths], root=root)  # cached by the screen training runs first
    digests = [checks[Path(p)].digest for p in emb.paths]
    pairs = find_duplicates(emb, threshold, digests, hashes, max_distance)
    seconds["near_duplicates"] = time.perf_counter() - start

    start = time.perf_counter()
    with progress(console) as bar:
        task = bar.add_task("out-of-fold heads", total=None)
        probs, accuracy = out_of_fold(emb.features, emb.labels, emb.class_names, folds, repeats,
                                      recipe.train.seed, progress=lambda: bar.advance(task))
    if accuracy.folds < folds:  # stratified folds need an image of each class in each fold
        console.print(f"[yellow]audit: {folds} folds asked, but the smallest class has {accuracy.folds} images: "
                      f"{accuracy.folds}-fold[/]", highlight=False)
    issues = find_label_issues(emb.labels, probs)
    seconds["label_issues"] = time.perf_counter() - start

    folder = create_run_dir(RunSpec(dir=recipe.run.dir, name=f"audit-{recipe.run.name or 'recipe'}", output=out,
                                    exist_ok=recipe.run.exist_ok))
    audit = Audit(folder, root, emb, threshold, max_distance, pairs, issues, probs, accuracy, seconds)
    write_outputs(audit)
    console.print(f"audit: {len(emb)} images, {len(pairs)} near-duplicate pair(s), {len(issues)} label issue(s); "
                  f"written to {literal(folder)}", soft_wrap=True)
    return audit
