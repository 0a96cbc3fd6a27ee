"""`finetune audit` as a user runs it, on a generated folder with known defects injected: flipped labels,
resized + re-encoded copies of val photos in train (leakage), exact copies. Recall and precision against
the injected truth.

Embeddings of a tiny random net say little, so the recipe's model is a fixed feature function registered with
timm in the subprocess (8x8 average-pooled pixels, a "pixels" backbone in front of a linear head): the command
path, the feature cache, the folds and cleanlab are the real ones. The photos are random 8x8 colour blocks
with a class tint, so distinct photos are far apart and a resized copy stays close.
"""

import hashlib
import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_yaml
from PIL import Image

pytest.importorskip("cleanlab", reason="finetune audit needs the audit extra: pip install 'finetune[audit]'")
pytestmark = pytest.mark.slow  # every test here runs finetune audit in a subprocess

PIXELNET = '''
import torch
from timm.models import register_model
from torch import nn


class PixelNet(nn.Module):
    def __init__(self, num_classes=2):
        super().__init__()
        self.pool, self.flatten = nn.AdaptiveAvgPool2d(8), nn.Flatten()
        self.head = nn.Linear(192, num_classes)
        self.pretrained_cfg = {"classifier": "head", "input_size": (3, 32, 32), "crop_pct": 1.0,
                               "interpolation": "bilinear", "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25),
                               "crop_mode": "center"}

    def forward(self, x):
        return self.head(self.flatten(self.pool(x)))


@register_model
def audit_pixelnet(pretrained=False, **kwargs):
    return PixelNet(kwargs.get("num_classes", 2))
'''

TINTS = {"ant": (60, -60, -60), "bee": (-60, 60, -60), "wasp": (-60, -60, 60)}


def photo(cls: str, seed: int, size: int = 32) -> Image.Image:
    """8x8 blocks of random colour, tinted by class."""
    rng = random.Random(seed)
    small = Image.new("RGB", (8, 8))
    for x in range(8):
        for y in range(8):
            small.putpixel((x, y), tuple(max(0, min(255, rng.randrange(256) + t)) for t in TINTS[cls]))
    return small.resize((size, size), Image.NEAREST)


def defective_folder(root: Path) -> dict:
    """train 14 / val 6 photos per class, then: 3 flipped labels, 3 val photos resized and re-encoded into
    train, one val photo copied byte for byte into train, one exact copy within a train class."""
    seed = 0
    for split, n in (("train", 14), ("val", 6)):
        for cls in TINTS:
            for i in range(n):
                seed += 1
                path = root / split / cls / f"{cls}{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                photo(cls, seed).save(path)
    flipped = {}  # path: the class it really is
    for src, dst, i in (("ant", "bee", 0), ("bee", "wasp", 1), ("wasp", "ant", 2)):
        moved = root / "train" / dst / f"from-{src}{i}.png"
        shutil.move(root / "train" / src / f"{src}{i}.png", moved)
        flipped[str(moved)] = src
    leaks = []
    for cls, i in (("ant", 0), ("bee", 1), ("wasp", 2)):
        original = root / "val" / cls / f"{cls}{i}.png"
        copy = root / "train" / cls / f"resized-{cls}{i}.jpg"
        Image.open(original).resize((26, 26), Image.BILINEAR).save(copy, quality=85)
        leaks.append({str(original), str(copy)})
    exact_leak = root / "train" / "ant" / "exact-val-ant3.png"
    shutil.copyfile(root / "val" / "ant" / "ant3.png", exact_leak)
    shutil.copyfile(root / "train" / "bee" / "bee5.png", root / "train" / "bee" / "bee5-copy.png")
    return {"flipped": flipped, "leaks": leaks, "exact_leak": str(exact_leak)}


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def audit(tmp_path: Path, *args):
    (tmp_path / "pixelnet.py").write_text(PIXELNET)
    code = "import sys; sys.path.insert(0, sys.argv.pop(1)); import pixelnet; from finetune.cli import app; app()"
    return subprocess.run([sys.executable, "-c", code, str(tmp_path), "audit", *map(str, args)],
                          capture_output=True, text=True, cwd=tmp_path)


def recipe(tmp_path: Path, root: Path) -> Path:
    return write_yaml(tmp_path / "pixels.yaml", {
        "model": {"source": "timm", "name": "audit_pixelnet", "weights": None},
        "data": {"root": str(root), "image_size": 32, "workers": 0},
        "train": {"batch_size": 16, "seed": 0},
        "run": {"dir": str(tmp_path / "runs")}})


def test_audit_finds_the_injected_defects(tmp_path):
    root = tmp_path / "photos"
    truth = defective_folder(root)
    before = tree_digest(root)
    out = audit(tmp_path, recipe(tmp_path, root), "--format", "json", "--folds", "4", "--repeats", "2",
                "--max-distance", "6")
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)
    assert report["max_distance"] == 6  # the option reaches the search
    assert tree_digest(root) == before  # the dataset is only read
    folder = Path(report["output"])
    assert folder == tmp_path / "runs" / "audit-pixels"
    assert {p.name for p in folder.iterdir()} >= {"audit.json", "audit.csv", "audit.html"}

    pairs = [f for f in report["findings"] if f["kind"] != "label-issue"]
    found = [{f["path"], f["related"]} for f in pairs]
    # leakage: every resized copy found (recall 1), and nothing else paired (precision 1): not the exact copy
    # within bee (inspect's finding), not two distinct photos
    assert all(leak in found for leak in truth["leaks"]), found
    assert len(found) == len(truth["leaks"]), found
    assert {f["kind"] for f in pairs} == {"leakage"}
    # each pair says which detector found it, and meets that detector's threshold
    assert all(f["score"] >= report["threshold"] if f["detector"] == "embedding" else
               f["hamming"] <= report["max_distance"] for f in pairs)
    assert {f["detector"] for f in pairs} <= {"embedding", "phash", "both"}
    # the exact copy of a val photo never reaches the audit: training's screen leaves it out, and says why
    assert any(s["path"] == truth["exact_leak"] and s["reason"].startswith("leakage")
               for s in report["left_out_by_screen"])

    issues = [f for f in report["findings"] if f["kind"] == "label-issue"]
    flagged = {f["path"] for f in issues}
    recall = len(flagged & set(truth["flipped"])) / len(truth["flipped"])
    precision = len(flagged & set(truth["flipped"])) / max(1, len(flagged))
    assert recall == 1 and precision >= 0.75, (flagged, truth["flipped"])
    for f in issues:
        if f["path"] in truth["flipped"]:  # suggested: the class whose tint it has
            assert f["suggested"] == truth["flipped"][f["path"]], f
            assert f["score"] > 0.5 > f["given_label_prob"]

    acc = report["accuracy"]
    assert acc["folds"] == 4 and acc["repeats"] == 2 and len(acc["per_fold"]) == 8
    assert acc["interval95"][0] <= acc["mean"] <= acc["interval95"][1]
    assert 0.8 < acc["mean"] <= 1.0

    page = (folder / "audit.html").read_text()
    assert page.count("data:image/jpeg;base64,") >= 2 * len(truth["leaks"]) + len(truth["flipped"])
    assert "http" not in page.replace("http-equiv", "")  # self-contained
    assert len((folder / "audit.csv").read_text().splitlines()) == 1 + len(report["findings"])


def test_audit_never_writes_inside_the_dataset(tmp_path):
    root = tmp_path / "photos"
    defective_folder(root)
    out = audit(tmp_path, recipe(tmp_path, root), "--output", root / "audit")
    assert out.returncode == 1
    assert "inside the dataset" in out.stderr and "Traceback" not in out.stderr
    assert not (root / "audit").exists()


def test_audit_without_cleanlab_says_what_to_install(tmp_path):
    root = tmp_path / "photos"
    defective_folder(root)
    (tmp_path / "pixelnet.py").write_text(PIXELNET)
    code = ("import sys; sys.modules['cleanlab'] = None; from finetune.cli import app; app()")
    out = subprocess.run([sys.executable, "-c", code, "audit", str(recipe(tmp_path, root))], capture_output=True,
                         text=True, cwd=tmp_path)
    assert out.returncode == 1
    assert "pip install 'finetune[audit]'" in out.stderr and "Traceback" not in out.stderr


def test_more_folds_than_the_smallest_class_has_images_is_said(tmp_path):
    root = tmp_path / "photos"
    defective_folder(root)
    out = audit(tmp_path, recipe(tmp_path, root), "--format", "json", "--folds", "1000", "--repeats", "1")
    assert out.returncode == 0, out.stderr[-2000:]
    folds = json.loads(out.stdout)["accuracy"]["folds"]
    assert folds < 1000 and f"1000 folds asked, but the smallest class has {folds} images: {folds}-fold" in out.stderr
