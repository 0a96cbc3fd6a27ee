"""suggest: one pass over a folder or @list of unlabelled photos gives logits and the head's input; n photos come
back ranked with why; unreadable ones are reported; the CSV is an @list (a labelled one once filled in); the
photos' folder never changes. The checkpoint is a tiny untrained model (random head: uneven margins)."""

import csv
import hashlib
import io
from pathlib import Path

import pytest
import torch
from conftest import COLORS, make_image

from finetune.checkpoint import Checkpoint
from finetune.config import ModelSpec
from finetune.data.lists import read_path_list
from finetune.deploy.loading import load_model
from finetune.deploy.predict import predict
from finetune.deploy.suggest import CSV_FIELDS, embed, suggest
from finetune.errors import CheckpointError, ConfigError, DataError
from finetune.models.registry import create_model

CLASSES = ["cat", "dog", "fox"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    spec = ModelSpec(source="timm", name="test_efficientnet", weights=None)
    torch.manual_seed(0)
    model, info = create_model(spec, len(CLASSES), 32)
    path = tmp_path_factory.mktemp("suggest") / "best.pt"
    Checkpoint(spec, CLASSES, info.preprocessing, info.head_name, "feature-extract",
               state=model.state_dict()).save(path)
    return path


def unlabeled(folder: Path, n: int = 8) -> list[Path]:
    """n photos, some in a subfolder (searched recursively)."""
    return [make_image(folder / ("sub" if i % 3 == 0 else "") / f"{i}.png", list(COLORS.values())[i % 2], size=40,
                       seed=i) for i in range(n)]


def tree_hash(folder: Path) -> str:
    """Names, sizes, contents and modification times of everything under `folder`."""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        st = p.stat()
        h.update(f"{p.relative_to(folder)} {st.st_size} {st.st_mtime_ns}".encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def test_n_photos_ranked_by_margin_with_why_and_the_folder_unchanged(checkpoint, tmp_path):
    photos = unlabeled(tmp_path / "new")
    (tmp_path / "new" / "page.jpg").write_text("<html>404</html>")
    before = tree_hash(tmp_path / "new")
    result = suggest(checkpoint, tmp_path / "new", 3, pool=2, workers=0)
    assert tree_hash(tmp_path / "new") == before
    assert result.photos == 8 and result.pool == 6
    assert [Path(p).name for p, _ in result.unreadable] == ["page.jpg"] and result.unreadable[0][1]
    assert [s.rank for s in result.chosen] == [1, 2, 3]
    margins = [s.margin for s in result.chosen]
    assert margins == sorted(margins) and all(0 <= m <= 1 for m in margins)
    assert {s.path for s in result.chosen} <= {str(p) for p in photos}
    said = {r.path: r.top for r in predict(checkpoint, photos, top_k=2, workers=0, engine="torch")}
    for s in result.chosen:  # what the model says of each: predict's two most likely classes, calibrated
        top = said[s.path]
        assert (s.suggested_label, s.runner_up) == (top[0].label, top[1].label)
        assert (s.prob, s.runner_up_prob) == pytest.approx((top[0].prob, top[1].prob), abs=1e-4)
        assert s.margin == pytest.approx(s.prob - s.runner_up_prob, abs=2e-4)
        assert "most uncertain" in s.why and s.to_dict()["why"] == s.why
    assert result.chosen[0].uncertainty_rank == 1  # the most uncertain photo is always among them


def test_the_pass_gives_predicts_logits_and_the_heads_input(checkpoint, tmp_path):
    photos = unlabeled(tmp_path / "new", 5)
    seen = embed(Checkpoint.load(checkpoint), photos, batch_size=2)
    logits, embeddings = seen.logits, seen.embeddings
    assert seen.paths == photos and not seen.unreadable
    expected = torch.tensor([r.logits for r in predict(checkpoint, photos, workers=0, engine="torch")])
    assert torch.allclose(logits, expected, atol=1e-4)
    model, ckpt = load_model(checkpoint)
    head = model.get_submodule(ckpt.head_name)
    assert embeddings.shape == (5, head.in_features)
    assert torch.allclose(head(embeddings), logits, atol=1e-4)  # the head's input: it gives the logits back


def test_output_csv_is_an_at_list_and_a_labelled_one_once_filled_in(checkpoint, tmp_path):
    unlabeled(tmp_path / "new")
    out = tmp_path / "out" / "next.csv"
    out.parent.mkdir()
    result = suggest(checkpoint, tmp_path / "new", 4, output=out, workers=0)
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert tuple(rows[0]) == CSV_FIELDS and [int(r["rank"]) for r in rows] == [1, 2, 3, 4]
    listed = read_path_list(f"@{out}")
    assert [str(x.path) for x in listed] == [str(Path(s.path).resolve()) for s in result.chosen]
    assert all(x.label is None for x in listed)  # label left empty for the user
    for r in rows:
        r["label"] = r["suggested_label"]
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    assert [x.label for x in read_path_list(f"@{out}")] == [s.suggested_label for s in result.chosen]
    # the list is itself something to suggest from (an @list in, the same photos out)
    again = suggest(checkpoint, f"@{out}", 2, workers=0)
    assert {s.path for s in again.chosen} <= {str(x.path) for x in listed}


def test_output_inside_the_photos_folder_is_refused_and_nothing_is_written(checkpoint, tmp_path):
    unlabeled(tmp_path / "new")
    before = tree_hash(tmp_path / "new")
    with pytest.raises(DataError, match="never writes into a dataset"):
        suggest(checkpoint, tmp_path / "new", 2, output=tmp_path / "new" / "sub" / "next.csv", workers=0)
    assert tree_hash(tmp_path / "new") == before


def test_user_mistakes(checkpoint, tmp_path):
    with pytest.raises(DataError, match="not a folder"):
        suggest(checkpoint, tmp_path / "missing", 2)
    (tmp_path / "empty" / "notes").mkdir(parents=True)
    (tmp_path / "empty" / "notes" / "a.txt").write_text("no photo")
    with pytest.raises(DataError, match="no images in"):
        suggest(checkpoint, tmp_path / "empty", 2)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"")
    with pytest.raises(DataError, match="none of the 1 image"):
        suggest(checkpoint, tmp_path / "bad", 2, workers=0)
    with pytest.raises(ConfigError, match="at least 1"):
        suggest(checkpoint, tmp_path / "bad", 0)
    (tmp_path / "m.onnx").write_bytes(b"")
    with pytest.raises(CheckpointError, match="use the .pt checkpoint"):
        suggest(tmp_path / "m.onnx", tmp_path / "bad", 2)
