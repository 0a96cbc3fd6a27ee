"""The split: train/ + val/ or a seeded stratified one, with the screened files left out before it."""

import pytest

from finetune.data.folders import dataset_of, resolve_splits
from finetune.errors import DataError


def test_the_screen_leaves_files_out_before_the_split(image_folder):
    bad = image_folder / "train" / "red" / "red0.png"
    splits = resolve_splits(image_folder, 0.2, 0, screen=lambda tree: {bad: "truncated: cut short"})
    assert bad not in {p for p, _ in splits.train} and splits.skipped == [(bad, "truncated: cut short")]
    assert splits.counts("train") == {"blue": 8, "red": 7}

    def every_red(tree):
        return {p: "corrupt" for classes in tree.values() for p in classes.get("red", [])}

    with pytest.raises(DataError, match="no usable training images.*red"):
        resolve_splits(image_folder, 0.2, 0, screen=every_red)


def test_the_dataset_of_a_photo_is_read_off_its_place(tmp_path):
    for photo in ("data/train/ants/1.jpg", "data/val/bees/1.jpg", "flat/ants/1.jpg", "flat/bees/1.jpg", "loose/1.jpg",
                  "docs/notes.txt"):
        (tmp_path / photo).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / photo).touch()
    assert dataset_of(tmp_path / "data/val/bees/1.jpg") == tmp_path / "data"  # ROOT/SPLIT/CLASS
    assert dataset_of(tmp_path / "flat/ants/1.jpg") == tmp_path / "flat"  # ROOT/CLASS beside other classes
    assert dataset_of(tmp_path / "loose/1.jpg") == tmp_path / "loose"  # beside folders that are no classes
    (tmp_path / "loose").rename(tmp_path / "flat" / "loose")
    assert dataset_of(tmp_path / "flat/loose/1.jpg") == tmp_path / "flat"  # one more class folder
