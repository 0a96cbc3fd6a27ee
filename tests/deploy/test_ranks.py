"""predict over torchrun ranks: each rank a contiguous share, the parts joined in input order into what one process
writes."""

import json
import os
import subprocess
import sys

import pytest
from conftest import invoke, train_tiny

from finetune.deploy.predict import Prediction, Ranked
from finetune.deploy.ranks import merge_parts, part_path, share
from finetune.deploy.render import format_predictions
from finetune.runtime.distributed import Dist


@pytest.fixture(autouse=True)
def _untuned(monkeypatch):
    import finetune.runtime.process

    monkeypatch.setattr(finetune.runtime.process, "tune_process", lambda imports=(): None)


def test_the_shares_cover_every_item_once_in_order():
    for n, world in ((7, 3), (2, 4), (0, 2), (10, 1)):
        parts = [share(list(range(n)), Dist(rank, world)) for rank in range(world)]
        assert [i for p in parts for i in p] == list(range(n))
        assert max(map(len, parts)) - min(map(len, parts)) <= 1


@pytest.mark.parametrize("fmt", ["json", "jsonl", "csv"])
def test_joined_parts_are_what_one_process_writes(tmp_path, fmt):
    results = [Prediction(f"/p/{i}.png", top=[Ranked("red", 1, 0.5 + i / 100)]) for i in range(5)]
    results[2] = Prediction("/p/broken.png", error="cannot read")
    out = tmp_path / f"preds.{fmt}"
    world = 3
    for rank in range(world):
        part = share(results, Dist(rank, world))
        part_path(out, Dist(rank, world)).write_text(format_predictions(part, fmt, False))
    merge_parts(out, fmt, Dist(0, world))
    assert out.read_bytes() == format_predictions(results, fmt, False).encode()
    assert part_path(out, Dist(1, world)).name == f"preds.rank00001-of-00003.{fmt}"


def test_output_needs_a_file_format_and_torchrun_needs_output(tmp_path, monkeypatch):
    code, _, err = invoke("predict", tmp_path / "m.pt", tmp_path, "--output", tmp_path / "p.json")
    assert code == 1 and "--format jsonl" in err
    monkeypatch.setenv("WORLD_SIZE", "2")
    code, _, err = invoke("predict", tmp_path / "m.pt", tmp_path)
    assert code == 1 and "add --output" in err and "Traceback" not in err


@pytest.mark.slow
def test_two_processes_write_what_one_does(tmp_path):
    ckpt, data = train_tiny(tmp_path / "tiny")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = tmp_path / "one.jsonl"
    code, _, err = invoke("predict", ckpt, data, "--format", "jsonl", "--output", one)
    assert code == 0, err
    two = tmp_path / "two.jsonl"
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                          "29731", "-m", "finetune", "predict", str(ckpt), str(data), "--format", "jsonl",
                          "--output", str(two), "--device", "cpu"], env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    a, b = ([json.loads(line) for line in f.read_text().splitlines()] for f in (one, two))
    assert [r["path"] for r in b] == [r["path"] for r in a] and len(a) == 24
    for x, y in zip(a, b):
        assert x["top"][0]["label"] == y["top"][0]["label"]
        assert x["top"][0]["prob"] == pytest.approx(y["top"][0]["prob"], abs=1e-5)
    halves = [part_path(two, Dist(r, 2)) for r in range(2)]
    assert [len(p.read_text().splitlines()) for p in halves] == [12, 12]


def test_output_is_never_written_inside_the_photos(tmp_path):
    from conftest import checkpoint_of, make_folder

    data = make_folder(tmp_path / "d", {"val": 1})
    ckpt = tmp_path / "m.pt"
    checkpoint_of({}).save(ckpt)
    code, _, err = invoke("predict", ckpt, data / "val", "--format", "jsonl", "--output", data / "preds.jsonl")
    assert code == 1 and "inside the dataset" in err and not (data / "preds.jsonl").exists()
