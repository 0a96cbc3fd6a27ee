"""task multilabel's data (data.multilabel): the labels CSV, both separators, empty cells, its errors, a folder
holding labels.csv, and the splits with their multi-hot targets."""

from pathlib import Path

import numpy as np
import pytest

from finetune.data.folders import resolve_splits
from finetune.data.multilabel import parse_labels, read_label_csv
from finetune.errors import DataError


def write_csv(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return f"@{path}"


def test_both_separators_spaces_repeats_and_an_empty_cell():
    assert parse_labels("red|striped", "l.csv", 2) == ("red", "striped")
    assert parse_labels(" red ; striped;red ", "l.csv", 2) == ("red", "striped")
    assert parse_labels("red|striped;dotted", "l.csv", 2) == ("red", "striped", "dotted")
    assert parse_labels("  ", "l.csv", 2) == ()
    with pytest.raises(DataError, match=r"line 7: an empty label in 'red\|\|striped'"):
        parse_labels("red||striped", "l.csv", 7)


def test_paths_resolve_against_the_csv_folder_and_a_folder_holding_labels_csv_is_read(tmp_path):
    item = write_csv(tmp_path / "set" / "labels.csv", "path,labels\nimg/a.png,red|striped\n/abs/b.png,\n")
    rows = read_label_csv(item)
    assert [(r.path, r.labels) for r in rows] == [(tmp_path / "set" / "img" / "a.png", ("red", "striped")),
                                                  (Path("/abs/b.png"), ())]
    assert read_label_csv(tmp_path / "set") == rows  # data.root: the folder itself
    with pytest.raises(DataError, match="a folder holding labels.csv"):
        read_label_csv(tmp_path)


@pytest.mark.parametrize("text, message", [
    ("path,label\na.png,red\n", "has no 'labels' column"),
    ("path,labels,split\na.png,red,train\nb.png,blue,\n", "line 3 has no split"),
    ("path,labels\na.png,red\na.png,blue\n", "line 3 repeats the image of line 2"),
    ("path,labels\na.png,red;;blue\n", "line 2: an empty label"),
])
def test_mistakes_in_the_csv_are_one_line_errors(tmp_path, text, message):
    with pytest.raises(DataError, match=message):
        read_label_csv(write_csv(tmp_path / "l.csv", text))


def test_split_column_gives_train_then_val_rows_of_the_multi_hot_targets(tmp_path):
    item = write_csv(tmp_path / "l.csv", "path,labels,split\na.png,red|striped,train\nb.png,blue,train\n"
                                         "c.png,,val\nd.png,striped;blue,val\n")
    splits = resolve_splits(item, 0.2, 0, task="multilabel")
    assert splits.class_names == ["blue", "red", "striped"]
    assert [(p.name, i) for p, i in splits.train] == [("a.png", 0), ("b.png", 1)]
    assert [(p.name, i) for p, i in splits.val] == [("c.png", 2), ("d.png", 3)]
    np.testing.assert_array_equal(splits.targets, [[0, 1, 1], [1, 0, 0], [0, 0, 0], [1, 0, 1]])
    assert splits.counts("train") == {"blue": 1, "red": 1, "striped": 1}
    assert splits.counts("val") == {"blue": 1, "red": 0, "striped": 1}


def test_without_a_split_column_a_seeded_share_is_held_out(tmp_path):
    rows = "".join(f"i{k}.png,{'red' if k % 2 else 'blue'}|striped\n" for k in range(10))
    item = write_csv(tmp_path / "l.csv", "path,labels\n" + rows)
    a, b = (resolve_splits(item, 0.3, 0, task="multilabel") for _ in range(2))
    assert len(a.val) == 3 and len(a.train) == 7 and a.val == b.val
    assert a.source == "split"
    assert {p for p, _ in a.train} | {p for p, _ in a.val} == {tmp_path / f"i{k}.png" for k in range(10)}
    row = dict(a.train + a.val)[tmp_path / "i3.png"]
    assert list(a.targets[row]) == [0, 1, 1]  # blue, red, striped


def test_a_label_without_a_train_image_and_a_single_label_are_refused(tmp_path):
    item = write_csv(tmp_path / "l.csv", "path,labels,split\na.png,red,train\nb.png,blue,val\n")
    with pytest.raises(DataError, match="label.s. with no training image.*: blue"):
        resolve_splits(item, 0.2, 0, task="multilabel")
    item = write_csv(tmp_path / "one.csv", "path,labels\na.png,red\nb.png,red\n")
    with pytest.raises(DataError, match="at least two labels"):
        resolve_splits(item, 0.5, 0, task="multilabel")


def test_a_labels_csv_trained_as_multiclass_points_to_task_multilabel(tmp_path):
    item = write_csv(tmp_path / "l.csv", "path,labels\na.png,red|striped\nb.png,blue\n")
    with pytest.raises(DataError, match="line 2 has no label .its labels column: several labels per image need "
                                        "task: multilabel"):
        resolve_splits(item, 0.2, 0)
