"""The dataset doctor on a generated corpus of every kind of bad and odd file real folders contain."""

import hashlib
import io
import json
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import COLORS, make_folder, make_image, stable_seed
from PIL import Image

from finetune.data.doctor import inspect_dataset
from finetune.errors import DataError


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _save(path: Path, im: Image.Image, fmt: str, **kw) -> Path:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    path.write_bytes(buf.getvalue())
    return path


def make_corpus(root: Path) -> dict[str, list[Path]]:
    """train/ and val/ with blue and red, good 40 px images, plus one file of each bad or odd kind.
    Returns {expected finding kind: [paths]}."""
    for split, n in (("train", 8), ("val", 4)):
        for name, color in COLORS.items():
            for i in range(n):
                make_image(root / split / name / f"{name}{i}.png", color, size=40, seed=stable_seed(split, name, i))
    blue, red, val = root / "train" / "blue", root / "train" / "red", root / "val" / "blue"
    good = Image.open(blue / "blue0.png").convert("RGB")
    jpeg = io.BytesIO()
    good.save(jpeg, "JPEG")
    jpeg = jpeg.getvalue()
    png = (blue / "blue0.png").read_bytes()
    kinds: dict[str, list[Path]] = {}

    def add(kind, path):
        kinds.setdefault(kind, []).append(path)
        return path

    # unreadable: left out of training
    add("empty-file", blue / "empty.jpg").write_bytes(b"")
    add("truncated", blue / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    add("truncated", red / "cut.png").write_bytes(png[: len(png) // 2])
    bad_crc = bytearray(png)
    bad_crc[png.index(b"IDAT") + 8] ^= 0xFF
    add("corrupt", red / "badcrc.png").write_bytes(bytes(bad_crc))
    add("corrupt", red / "badheader.jpg").write_bytes(b"\xff\xd8\xff\xc0\x00\x03" + b"\x00" * 200 + b"\xff\xd9")
    add("not-image", blue / "page.jpg").write_bytes(b"<!DOCTYPE html><html><body>404 Not Found</body></html>")
    add("not-image", blue / "notes.txt").write_text("shot on a phone\n")
    add("not-image", blue / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + b"\x00" * 64)
    add("not-image", red / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 64)
    bomb = (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0))
            + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 4096)) + _png_chunk(b"IEND", b""))
    add("too-large", red / "bomb.png").write_bytes(bomb)
    # odd but usable
    _save(add("extension-mismatch", blue / "really-a-png.jpg"), good, "PNG")
    _save(add("grayscale", blue / "gray.png"), good.convert("L"), "PNG")
    rgba = good.convert("RGBA")
    rgba.putpixel((0, 0), (0, 0, 0, 0))
    _save(add("transparency", blue / "alpha.png"), rgba, "PNG")
    _save(add("transparency", blue / "keyed.png"), good, "PNG", transparency=good.getpixel((0, 0)))
    _save(add("cmyk", blue / "cmyk.jpg"), good.convert("CMYK"), "JPEG")
    deep = Image.fromarray(np.asarray(good.convert("L"), dtype=np.uint16) * 257)
    _save(add("16-bit", blue / "deep.png"), deep, "PNG")
    frames = [Image.new("RGB", (40, 40), c) for c in ((30, 60, 220), (60, 90, 200), (20, 40, 240))]
    frames[0].save(add("animated", blue / "anim.gif"), save_all=True, append_images=frames[1:], duration=100)
    kinds.setdefault("placeholder", []).append(blue / "anim.gif")  # three flat colours: not a photo
    exif = Image.Exif()
    exif[0x0112] = 6
    _save(add("exif-rotated", blue / "rotated.jpg"), good.resize((40, 30)), "JPEG", exif=exif)
    make_image(add("small", red / "thumb.png"), COLORS["red"], size=16)
    add("trailing-data", red / "motion.jpg").write_bytes(jpeg + b"video appended by the phone " * 200)
    # exact copies
    shutil.copy(blue / "blue1.png", add("duplicate", blue / "copy-of-blue1.png"))
    shutil.copy(blue / "blue2.png", add("label-conflict", red / "blue2-as-red.png"))
    shutil.copy(blue / "blue3.png", add("leakage", val / "blue3-in-val.png"))
    return kinds


def tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "corpus"
    return root, make_corpus(root)


@pytest.mark.slow
def test_json_names_every_bad_file_with_its_kind(corpus):
    root, kinds = corpus
    out = subprocess.run([sys.executable, "-m", "finetune", "inspect", root, "--format", "json"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr  # findings alone do not fail without --strict
    report = json.loads(out.stdout)
    found = {(f["kind"], Path(f["path"])) for f in report["findings"]}
    for kind, paths in kinds.items():
        for p in paths:
            assert (kind, p) in found, (kind, p)
    leak = next(f for f in report["findings"] if f["kind"] == "leakage")
    assert leak["severity"] == "error" and leak["related"] == [str(root / "train" / "blue" / "blue3.png")]
    # a good image carries no finding; unreadable files do not count as usable
    assert not any(Path(f["path"]).name == "blue4.png" for f in report["findings"])
    assert report["counts"]["train"] == {"blue": 8 + 9, "red": 8 + 3} and report["imbalance"] == round(17 / 11, 2)
    severity = {Path(f["path"]).name: f["severity"] for f in report["findings"] if f["kind"] == "not-image"}
    assert severity == {"page.jpg": "error", "notes.txt": "warning", ".DS_Store": "warning", "Thumbs.db": "warning"}
    strict = subprocess.run([sys.executable, "-m", "finetune", "inspect", root, "--strict"],
                            capture_output=True, text=True)
    assert strict.returncode == 1 and "Traceback" not in strict.stderr
    assert "leakage" in strict.stdout and "too-large" in strict.stdout


@pytest.mark.slow
def test_train_and_predict_survive_the_corpus_and_never_touch_it(corpus, tiny_tree, tmp_path):
    from finetune.config import build_recipe
    from finetune.deploy.predict import predict
    from finetune.train.loop import fit

    root, kinds = corpus
    before = tree_hashes(root)
    inspect_dataset(root)
    tiny_tree["data"]["root"] = str(root)
    tiny_tree["train"]["epochs"] = 3
    run_dir = fit(build_recipe(tiny_tree))

    summary = json.loads((run_dir / "data.json").read_text())
    unreadable = {p for k in ("empty-file", "truncated", "corrupt", "not-image", "too-large") for p in kinds[k]
                  if p.suffix in (".jpg", ".png")}  # training never looks at .txt, .DS_Store, Thumbs.db
    # inspect's errors are left out of training: the unreadable files, both copies of a label conflict, and the
    # train copy of an image that is also in val
    conflict = {kinds["label-conflict"][0], root / "train" / "blue" / "blue2.png"}
    leaked = {root / "train" / "blue" / "blue3.png"}
    skipped = {Path(s["path"]): s["reason"] for s in summary["skipped"]}
    assert set(skipped) == unreadable | conflict | leaked
    assert all(skipped[p].startswith("label-conflict") for p in conflict) and skipped[next(iter(leaked))].startswith(
        "leakage")
    assert summary["train"] == {"blue": 17 - 2, "red": 11 - 1} and summary["class_weights"] is None
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    assert float(rows[-1].split(",")[4]) >= 0.75  # val_acc: it learned from the good files

    bad = sorted(p for p in unreadable) + [kinds["not-image"][1]]
    results = predict(run_dir / "best.pt", bad + sorted((root / "val").rglob("*.png")), workers=0)
    assert all(r.error and not r.top for r in results[: len(bad)]), [r for r in results[: len(bad)] if not r.error]
    assert all(r.top and not r.error for r in results[len(bad):])
    assert tree_hashes(root) == before  # not a byte changed, not a file added, by inspect, train or predict


def test_dataset_level_findings(tmp_path):

    root = make_folder(tmp_path / "d", {"": 0})
    for i in range(8):
        make_image(root / "big cats" / f"{i}.png", (200, 150, 30), size=40, seed=i)
    make_image(root / "çhats" / "0.png", (20, 20, 20), size=40)
    (root / "empty").mkdir()
    report = inspect_dataset(root)
    kinds = {(f.kind, Path(f.path).name) for f in report.findings}
    assert {("class-name", "big cats"), ("class-name", "çhats"), ("empty-class", "empty"), ("imbalance", "d")} <= kinds
    assert report.layout == "split" and report.counts == {"all": {"big cats": 8, "empty": 0, "çhats": 1}}

    single = tmp_path / "single"
    make_image(single / "only" / "a.png", (1, 2, 3), size=40)
    assert any(f.kind == "single-class" for f in inspect_dataset(single).findings)
    with pytest.raises(DataError, match="not a folder"):
        inspect_dataset(tmp_path / "missing")


def test_training_fails_before_any_epoch_when_a_class_has_no_usable_images(image_folder, tiny_tree):
    from finetune.config import build_recipe
    from finetune.train.loop import fit

    for p in (image_folder / "train" / "red").iterdir():
        p.write_bytes(p.read_bytes()[:30])  # every red training image truncated
    with pytest.raises(DataError, match="no usable training images.*red.*finetune inspect"):
        fit(build_recipe(tiny_tree))
    assert not (Path(tiny_tree["run"]["dir"])).exists()  # failed before creating a run


def test_inspect_names_fifos_device_links_and_folder_loops(tmp_path):
    import os

    from finetune.data.doctor import inspect_dataset

    root = make_folder(tmp_path / "data", {"train": 2, "val": 1})
    os.mkfifo(root / "train" / "red" / "pipe.jpg")
    (root / "train" / "red" / "zero.jpg").symlink_to("/dev/zero")
    (root / "train" / "blue" / "loop").symlink_to("..")
    found = {Path(f.path).name: f for f in inspect_dataset(root).findings}
    assert "a FIFO (named pipe)" in found["pipe.jpg"].message and found["pipe.jpg"].severity == "error"
    assert "a character device through a symbolic link to /dev/zero" in found["zero.jpg"].message
    loop = found["loop"]  # not followed (rglob does not), and said so; training never looks at it: a warning
    assert "a folder that holds it: a loop, not followed" in loop.message and loop.severity == "warning"
