"""data.root hf:SOURCE[:SPLIT] (data.hf): a save_to_disk folder or parquet files read as the photos they hold, in
the dataset's own splits or a seeded one; a run on it is the run on the folder it was built from."""

import pytest
import torch
from conftest import make_folder

from finetune.config import build_recipe
from finetune.data.folders import dataset_folders, resolve_splits
from finetune.data.images import load_rgb, sample_at
from finetune.errors import DataError

datasets = pytest.importorskip("datasets")


def as_dataset(splits, names=None):
    """The folder's splits as a DatasetDict: images as Image features, labels as a ClassLabel."""
    def build(samples):
        return datasets.Dataset.from_dict(
            {"image": [str(p) for p, _ in samples], "label": [y for _, y in samples]},
            features=datasets.Features({"image": datasets.Image(),
                                        "label": datasets.ClassLabel(names=names or splits.class_names)}))
    return datasets.DatasetDict({"train": build(splits.train), "validation": build(splits.val)})


@pytest.fixture
def folder(tmp_path):
    return make_folder(tmp_path / "colors", {"train": 8, "val": 4})


def test_a_saved_dataset_gives_its_splits_with_the_photos_pixels(folder, tmp_path):
    splits = resolve_splits(folder, 0.2, 0)
    as_dataset(splits).save_to_disk(str(tmp_path / "saved"))
    ours = resolve_splits(f"hf:{tmp_path / 'saved'}", 0.2, 0)
    assert ours.class_names == ["blue", "red"] and ours.source == "hf"
    assert [y for _, y in ours.train] == [y for _, y in splits.train] and len(ours.val) == 8
    assert all(load_rgb(a).tobytes() == load_rgb(b).tobytes() for (a, _), (b, _) in zip(ours.train, splits.train))
    assert sample_at(str(ours.val[3][0])) == ours.val[3][0]  # what predictions record reads back
    assert dataset_folders(f"hf:{tmp_path / 'saved'}") == [tmp_path / "saved"]
    one = resolve_splits(f"hf:{tmp_path / 'saved'}:validation", 0.5, 0)  # a split named: divided by val_fraction
    assert (len(one.train), len(one.val)) == (4, 4) and {s.split for s, _ in one.train} == {"validation"}


def test_parquet_files_with_label_names_and_what_is_refused(folder, tmp_path):
    splits = resolve_splits(folder, 0.2, 0)
    table = as_dataset(splits)["train"].cast_column("label", datasets.Value("string"))
    table = table.map(lambda row: {"label": ["blue", "red"][int(row["label"])]})
    table.to_parquet(str(tmp_path / "train.parquet"))
    ours = resolve_splits(f"hf:{tmp_path / 'train.parquet'}", 0.25, 0)  # one split: a seeded 25% val
    assert ours.class_names == ["blue", "red"] and ours.counts("val") == {"blue": 2, "red": 2}
    with pytest.raises(DataError, match="no split 'nope'; it has train"):
        resolve_splits(f"hf:{tmp_path / 'train.parquet'}:nope", 0.2, 0)
    datasets.Dataset.from_dict({"text": ["a", "b"]}).to_parquet(str(tmp_path / "text" / "x.parquet"))
    with pytest.raises(DataError, match="needs an image column and a label column"):
        resolve_splits(f"hf:{tmp_path / 'text'}", 0.2, 0)
    with pytest.raises(DataError, match="task multilabel reads a labels CSV"):
        resolve_splits(f"hf:{tmp_path / 'text'}", 0.2, 0, task="multilabel")


@pytest.mark.slow
def test_a_run_on_the_dataset_is_the_run_on_the_folder(folder, tmp_path):
    from finetune.train.loop import fit

    as_dataset(resolve_splits(folder, 0.2, 0)).save_to_disk(str(tmp_path / "saved"))
    runs = []
    for name, root in (("folder", folder), ("hf", f"hf:{tmp_path / 'saved'}")):
        tree = {"model": {"source": "timm", "name": "test_efficientnet", "weights": None},
                "data": {"root": str(root), "image_size": 32, "augment": "flip", "workers": 0},
                "strategy": {"name": "last-stage", "lr": {"head": 0.05, "last_stage": 0.01}},
                "train": {"epochs": 2, "batch_size": 8, "seed": 0}, "run": {"output": str(tmp_path / name)}}
        runs.append(torch.load(fit(build_recipe(tree)) / "last.pt", weights_only=True)["model"])
    assert runs[0].keys() == runs[1].keys() and all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
