"""`finetune evaluate` end to end on a trained tiny model: figures, files, unknown classes, no writes into DATA."""

import csv
import json
import subprocess
import sys

import pytest
from conftest import make_folder, make_image
from typer.testing import CliRunner

from finetune.config import build_recipe
from finetune.deploy.evaluate import evaluate
from finetune.errors import DataError
from finetune.train.loop import fit

pytestmark = pytest.mark.slow  # every test here trains a model, or runs finetune in a subprocess


def finetune(*args):
    return subprocess.run([sys.executable, "-m", "finetune", *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny model for the module (blue vs red, like conftest's tiny_tree), trained once."""
    root = tmp_path_factory.mktemp("eval")
    tree = {"model": {"source": "timm", "name": "test_efficientnet", "weights": None},
            "data": {"root": str(make_folder(root / "colors", {"train": 8, "val": 4})), "image_size": 32,
                     "augment": "none", "workers": 0},
            "strategy": {"name": "feature-extract", "lr": {"head": 0.1}},
            "train": {"epochs": 2, "batch_size": 8, "seed": 0}, "run": {"output": str(root / "run")}}
    return fit(build_recipe(tree)) / "best.pt"


@pytest.fixture
def image_folder(tmp_path):
    return make_folder(tmp_path / "colors", {"val": 4})


def snapshot(folder):
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_evaluate_reports_metrics_files_and_unknown_classes(trained, image_folder, tmp_path):
    for i in range(3):  # a class the checkpoint has never seen: reported, not scored
        make_image(image_folder / "val" / "green" / f"g{i}.png", (30, 200, 40), seed=i)
    (image_folder / "train").mkdir()  # a split root: its val/ is what gets evaluated
    before = snapshot(image_folder)
    report = evaluate(trained, image_folder, tta=True)

    assert report.data == str(image_folder / "val")
    assert report.unknown_classes == {"green": 3}
    assert report.images == 8 and sum(map(sum, report.confusion_matrix)) == 8
    assert [r["class"] for r in report.per_class] == ["blue", "red"]
    assert sum(r["support"] for r in report.per_class) == 8
    assert report.top1 == pytest.approx(sum(report.confusion_matrix[i][i] for i in range(2)) / 8)
    assert report.top5 is None  # only 2 classes
    assert report.tta and 0 <= report.ece <= 1
    assert snapshot(image_folder) == before  # nothing written into the dataset

    out = trained.parent / "eval-best-val"  # next to the checkpoint
    assert report.output == out
    rows = list(csv.reader((out / "confusion_matrix.csv").open()))
    assert rows[0] == ["true \\ predicted", "blue", "red"]
    assert sum(int(n) for row in rows[1:] for n in row[1:]) == 8
    for png in ("confusion_matrix.png", "confusion_matrix_normalized.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list(csv.DictReader((out / "predictions.csv").open()))) == 8
    assert json.loads((out / "report.json").read_text())["confusion_matrix"] == report.confusion_matrix

    # honest accuracy: a 95% Wilson interval around the accuracy and each class's recall, in every output
    lo, hi = report.top1_interval
    assert lo <= report.top1 <= hi and hi - lo > 0.2  # 8 images cannot pin it down
    assert json.loads((out / "report.json").read_text())["top1_interval"] == [lo, hi]
    for row in report.per_class:
        assert row["recall_interval"][0] <= row["recall"] <= row["recall_interval"][1]
    per_class = list(csv.DictReader((out / "per_class.csv").open()))
    assert [r["class"] for r in per_class[:2]] == ["blue", "red"]
    assert float(per_class[-1]["recall_low95"]) == pytest.approx(lo, abs=1e-6)


def test_mistakes_grid_and_json_from_the_cli(trained, image_folder, tmp_path):
    # swap the folder names: now every image is a confident mistake
    swapped = tmp_path / "swapped"
    for src, dst in (("blue", "red"), ("red", "blue")):
        for p in (image_folder / "val" / src).iterdir():
            (swapped / dst).mkdir(parents=True, exist_ok=True)
            (swapped / dst / p.name).write_bytes(p.read_bytes())
    out = finetune("evaluate", trained, swapped, "--format", "json", "--output", tmp_path / "ev", "--mistakes", "5",
                   "--raw")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["top1"] == 0.0 and report["raw"] is True
    worst = report["most_confident_mistakes"]
    assert len(worst) == 5 and [m["prob"] for m in worst] == sorted((m["prob"] for m in worst), reverse=True)
    assert all(m["true"] != m["predicted"] for m in worst)
    assert (tmp_path / "ev" / "mistakes.png").stat().st_size > 5_000

    from finetune.cli import app

    table = CliRunner().invoke(app, ["evaluate", str(trained), str(swapped), "--output", str(tmp_path / "ev2")])
    assert table.exit_code == 0 and "top-1 accuracy" in table.stdout and "macro avg" in table.stdout
    assert "95% interval 0.000-0.3" in table.stdout and "recall 95%" in table.stdout  # 0 of 8 right


def test_evaluate_refuses_to_write_into_the_dataset_and_unknown_only_data(trained, image_folder, tmp_path):
    with pytest.raises(DataError, match="inside the dataset"):
        evaluate(trained, image_folder / "val", output=image_folder / "val" / "report")
    other = tmp_path / "other"
    make_image(other / "cats" / "c.png", (1, 2, 3))
    from finetune.cli import app

    out = CliRunner().invoke(app, ["evaluate", str(trained), str(other), "--output", str(tmp_path / "o")])
    assert out.exit_code == 1 and "Traceback" not in out.output
    assert "no images of the checkpoint's classes (blue, red)" in out.output and "cats" in out.output


def test_evaluate_and_predict_read_shards_as_the_folder_they_were_made_from(trained, tmp_path):
    from finetune.data.shards import ShardLimit, write_shards
    from finetune.deploy.predict import expand_paths, predict

    data = make_folder(tmp_path / "d", {"train": 3, "val": 4})
    write_shards(data, tmp_path / "shards", ShardLimit(images=5), 0.2, 0)
    on_folder = evaluate(trained, data, output=tmp_path / "f")
    on_shards = evaluate(trained, tmp_path / "shards", output=tmp_path / "s")  # the set's val shards
    assert on_shards.images == on_folder.images == 8
    assert on_shards.confusion_matrix == on_folder.confusion_matrix and on_shards.top1 == on_folder.top1
    assert (tmp_path / "s" / "mistakes.png").exists() == (tmp_path / "f" / "mistakes.png").exists()
    members = expand_paths([str(tmp_path / "shards")])  # every image of the set, shard by shard
    assert len(members) == 14 and all(str(m).startswith(str(tmp_path / "shards")) for m in members)
    results, files = predict(trained, members), predict(trained, [data / m.source for m in members])
    assert [r.path for r in results] == [str(m) for m in members] and not any(r.error for r in results)
    assert [r.top for r in results] == [r.top for r in files]  # the same bytes, decoded alike
    last = tmp_path / "shards" / "val-000001.tar"  # one shard of a set: that shard alone, with no train split
    assert evaluate(trained, last, output=tmp_path / "one").images == 3 == len(expand_paths([str(last)]))
    assert [str(m) for m in expand_paths([str(tmp_path / "shards" / "train-000000.tar")])] == \
        [str(m) for m in members[:5]]
