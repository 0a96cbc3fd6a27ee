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
