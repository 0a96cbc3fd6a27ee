"""The split: train/ + val/ or a seeded stratified one, with the screened files left out before it."""

import pytest

from finetune.data.folders import resolve_splits
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
