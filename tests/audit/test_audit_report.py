"""The audit's outputs say, for each pair, which detector found it and how far apart the hashes are: in
audit.json, audit.csv, the page and the table."""

import csv
import io
import json

import numpy as np
from PIL import Image
from rich.console import Console

from finetune.audit.duplicates import Pair
from finetune.audit.embeddings import Embeddings
from finetune.audit.folds import Accuracy
from finetune.audit.report import print_audit, to_dict, write_outputs
from finetune.audit.run import Audit


def small_audit(tmp_path) -> Audit:
    paths = []
    for i in range(4):
        path = tmp_path / "photos" / ("train" if i < 2 else "val") / "ant" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (16, 16), (60 * i, 0, 0)).save(path)
        paths.append(str(path))
    emb = Embeddings(np.eye(4, dtype=np.float32), np.zeros(4, dtype=np.int64), paths, np.array([0, 0, 1, 1]),
                     ["ant"], [])
    pairs = [Pair("leakage", 0, 2, 0.95, "both", 3), Pair("leakage", 1, 3, 0.61, "phash", 8, mirrored=True),
             Pair("near-duplicate", 0, 1, 0.9, "embedding", 30)]
    accuracy = Accuracy(2, 1, [1.0, 1.0], 0.01, 1.0, 0.0, (1.0, 1.0), 1.0, {"ant": 1.0})
    folder = tmp_path / "out"
    folder.mkdir()
    return Audit(folder, tmp_path / "photos", emb, 0.82, 10, pairs, [], np.ones((4, 1)), accuracy)


def test_every_output_names_the_detector(tmp_path):
    audit = small_audit(tmp_path)
    write_outputs(audit)
    report = json.loads((audit.folder / "audit.json").read_text())
    assert report["max_distance"] == 10 and set(report["detectors"]) == {"embedding", "phash", "both"}
    assert [(f["detector"], f["hamming"], f["mirrored"]) for f in report["findings"]] == [
        ("both", 3, False), ("phash", 8, True), ("embedding", 30, False)]
    rows = list(csv.DictReader(io.StringIO((audit.folder / "audit.csv").read_text())))
    assert [(r["detector"], r["hamming"]) for r in rows] == [("both", "3"), ("phash", "8"), ("embedding", "30")]
    page = (audit.folder / "audit.html").read_text()
    assert "found by</b> phash" in page and "8 bits apart (one mirrored)" in page and "within 10 of 64 bits" in page
    out = Console(file=io.StringIO(), width=200)
    print_audit(to_dict(audit), out)
    assert "phash, pHash 8 bits apart (one mirrored)" in out.file.getvalue()
