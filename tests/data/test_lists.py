"""`@list.txt` / `@list.csv` for predict and evaluate: paths relative to the list, nothing listed dropped, a bad list
a one-line error."""

import json
import os
from pathlib import Path

import pytest
from conftest import invoke as cli
from conftest import train_tiny

from finetune.data.lists import read_path_list
from finetune.errors import DataError


@pytest.fixture(autouse=True)
def _untuned(monkeypatch):
    import finetune.runtime.process

    monkeypatch.setattr(finetune.runtime.process, "tune_process", lambda imports=(): None)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("lists"))


def test_txt_and_csv_lists_resolve_relative_to_the_list_and_keep_every_line(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "l.txt").write_text("# my photos\n\na.jpg\n../b.png\n/abs/c.jpg\n  spaced name [1].png  \n")
    listed = read_path_list(f"@{tmp_path / 'sub' / 'l.txt'}")
    assert [i.path for i in listed] == [tmp_path / "sub" / "a.jpg", tmp_path / "sub" / ".." / "b.png",
                                        Path("/abs/c.jpg"), tmp_path / "sub" / "spaced name [1].png"]
    (tmp_path / "l.csv").write_text("\ufeffid,path,label\n1,x/a.jpg,bees\n2,b.jpg,\n", encoding="utf-8")
    listed = read_path_list(f"@{tmp_path / 'l.csv'}")
    assert [(i.path, i.label) for i in listed] == [(tmp_path / "x" / "a.jpg", "bees"), (tmp_path / "b.jpg", None)]
    (tmp_path / "nopath.csv").write_text("file,label\na.jpg,x\n")
    with pytest.raises(DataError, match="CSV without a 'path' column"):
        read_path_list(f"@{tmp_path / 'nopath.csv'}")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9.jpg\n".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        read_path_list(f"@{tmp_path / 'latin1.txt'}")


@pytest.mark.slow
def test_predict_and_evaluate_read_lists(trained, tmp_path):
    best, data = trained
    images = sorted((data / "val").rglob("*.png"))
    lists = tmp_path / "lists"
    lists.mkdir()
    relative = [os.path.relpath(p, lists) for p in images[:3]]  # from the list's folder, not the current one
    (lists / "some.txt").write_text("\n".join(relative + ["gone.png"]) + "\n")
    code, out, err = cli("predict", best, f"@{lists / 'some.txt'}", "--format", "json")
    assert code == 0, err
    results = json.loads(out)
    assert [Path(r["path"]).resolve() for r in results] == [*images[:3], (lists / "gone.png").resolve()]
    assert all(r["top"] for r in results[:3])
    assert results[3]["top"] == [] and "gone.png" in results[3]["error"]  # a stale line is reported, not dropped

    # a CSV with labels that are not the folder names: evaluate scores by the label column
    swap = {"blue": "red", "red": "blue"}
    rows = ["path,label"] + [f"{p.relative_to(data.parent)},{swap[p.parent.name]}" for p in images]
    (data.parent / "swapped.csv").write_text("\n".join(rows) + "\n")
    code, out, err = cli("evaluate", best, f"@{data.parent / 'swapped.csv'}", "--output", tmp_path / "ev",
                         "--format", "json")
    assert code == 0, err
    report = json.loads(out)
    assert report["images"] == len(images) and report["top1"] == 0.0  # every label swapped: every image "wrong"

    code, _, err = cli("predict", best, f"@{tmp_path / 'missing.txt'}")
    assert code == 1 and "no such list file" in err.strip().splitlines()[-1] and "Traceback" not in err
    code, _, err = cli("evaluate", best, f"@{data.parent / 'swapped.csv'}", "--output", data / "val" / "blue" / "x")
    assert code == 1 and "inside the dataset" in err  # never written next to the listed images


def _listed(folder: Path, out: Path, split_column: bool) -> Path:
    """A labels CSV naming every image of a train/ + val/ folder (relative to the list), with or without split."""
    rows = ["path,label" + (",split" if split_column else "")]
    for split in ("train", "val"):
        for p in sorted((folder / split).rglob("*.png")):
            rows.append(f"{os.path.relpath(p, out.parent)},{p.parent.name}" + (f",{split}" if split_column else ""))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(rows) + "\n")
    return out


def test_a_labelled_csv_splits_as_the_folders_it_names(image_folder, tmp_path):
    from finetune.data.folders import resolve_splits

    folders = resolve_splits(image_folder, 0.2, 0)
    listed = resolve_splits(f"@{_listed(image_folder, tmp_path / 'with.csv', True)}", 0.2, 0)
    assert (listed.class_names, listed.train, listed.val) == (folders.class_names, folders.train, folders.val)
    every = resolve_splits(f"@{_listed(image_folder, tmp_path / 'without.csv', False)}", 0.2, 0)
    flat = tmp_path / "flat"  # the same images as one folder of class folders: the same seeded split
    for p, label in folders.train + folders.val:
        (flat / folders.class_names[label]).mkdir(parents=True, exist_ok=True)
        (flat / folders.class_names[label] / f"{p.parent.parent.name}-{p.name}").symlink_to(p)
    split = resolve_splits(flat, 0.2, 0)
    for mine, theirs in ((every.train, split.train), (every.val, split.val)):
        assert [(f"{p.parent.parent.name}-{p.name}", y) for p, y in mine] == [(p.name, y) for p, y in theirs]
    assert every.source == "split" and len(every.val) == len(split.val) > 0


def test_a_list_to_train_on_needs_labels_and_whole_splits(tmp_path):
    from finetune.data.lists import labelled_tree

    for name, text, says in (("l.txt", "a.png\n", "not a .csv"),
                             ("nolabel.csv", "path,label\na.png,x\nb.png,\n", "line 3 has no label"),
                             ("half.csv", "path,label,split\na.png,x,train\nb.png,y,\n", "line 3 has no split"),
                             ("bad.csv", "path,label,split\na.png,x,test\n", "'test' is not train or val"),
                             ("onesplit.csv", "path,label,split\na.png,x,train\n", "both splits")):
        (tmp_path / name).write_text(text)
        with pytest.raises(DataError, match=says):
            labelled_tree(f"@{tmp_path / name}")


@pytest.mark.slow
def test_a_run_trains_on_a_list_records_it_absolute_and_never_writes_beside_its_images(tiny_tree, image_folder,
                                                                                      tmp_path, monkeypatch):
    from finetune.config import build_recipe
    from finetune.errors import ConfigError
    from finetune.train.loop import fit

    listed = _listed(image_folder, tmp_path / "labels.csv", True)
    monkeypatch.chdir(tmp_path)
    tiny_tree["data"]["root"] = "@labels.csv"
    with pytest.raises(ConfigError, match="inside the dataset"):
        fit(build_recipe({**tiny_tree, "run": {"output": str(image_folder / "train" / "run")}}))
    run = fit(build_recipe(tiny_tree))
    import yaml

    recorded = yaml.safe_load((run / "recipe.yaml").read_text())["data"]["root"]
    assert recorded == f"@{listed}"
    code, out, err = cli("evaluate", run / "best.pt", f"@{listed}", "--output", tmp_path / "eval")
    assert code == 0, err
    assert json.loads((tmp_path / "eval" / "report.json").read_text())["images"] == 8  # the val rows only
