"""`finetune shard`: WebDataset tar shards of a dataset, the split training makes, the same bytes on a rerun, the
dataset never written to."""

import hashlib
import json
import tarfile
from pathlib import Path

import pytest
from conftest import invoke, make_folder

from finetune.data.shard_reader import read_shard_set
from finetune.data.shards import MTIME, ShardLimit, parse_shard_size, write_shards
from finetune.errors import ConfigError, DataError

wds = pytest.importorskip("webdataset")


def listing(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def read_back(out: Path, split: str) -> list[dict]:
    shards = sorted(str(p) for p in out.glob(f"{split}-*.tar"))
    return list(wds.WebDataset(shards, shardshuffle=False, empty_check=False))


def test_shard_sizes_are_images_or_bytes_and_bad_ones_are_refused():
    assert parse_shard_size("1GB") == ShardLimit(bytes=10**9)
    assert parse_shard_size("500mb") == ShardLimit(bytes=500 * 10**6)
    assert parse_shard_size("2GiB") == ShardLimit(bytes=2 * 2**30)
    assert parse_shard_size("10000") == ShardLimit(images=10000)
    for bad in ("abc", "0", "1.5", "-3", "2 parsecs"):
        with pytest.raises(ConfigError, match="--shard-size"):
            parse_shard_size(bad)


def test_shards_hold_every_training_image_once_with_its_label_and_own_bytes(tmp_path):
    data = make_folder(tmp_path / "d", {"train": 5, "val": 2})
    before = listing(data)
    shards = write_shards(data, tmp_path / "out", ShardLimit(images=3), 0.2, 0)
    assert listing(data) == before  # the dataset is only read
    assert shards.classes == ["blue", "red"]
    assert [s.images for s in shards.splits["train"]] == [3, 3, 3, 1]
    assert [s.images for s in shards.splits["val"]] == [3, 1]
    index = read_shard_set(tmp_path / "out")
    first = (tmp_path / "out/train-000000.tar").read_bytes()
    assert index.splits["train"][0].sha256 == hashlib.sha256(first).hexdigest()
    for split, n in (("train", 5), ("val", 2)):
        samples = read_back(tmp_path / "out", split)
        assert len(samples) == 2 * n
        seen = set()
        for s in samples:
            meta = json.loads(s["json"])
            source = data / meta["path"]
            assert s["png"] == source.read_bytes() and source.parent.name == meta["class"]
            assert shards.classes[int(s["cls"])] == meta["class"]
            seen.add(meta["path"])
        assert seen == {str(p.relative_to(data)) for p in (data / split).rglob("*.png")}
    # shuffled once before cutting: the first shard mixes the classes (the folder lists them class by class)
    assert len(shards.splits["train"][0].counts) == 2


def test_a_rerun_writes_the_same_bytes_with_fixed_member_times(tmp_path):
    data = make_folder(tmp_path, {"d": 6}) / "d"
    a = write_shards(data, tmp_path / "a", parse_shard_size("1KB"), 0.3, 7)
    b = write_shards(data, tmp_path / "b", parse_shard_size("1KB"), 0.3, 7)
    assert len(a.splits["train"]) > 1 and [s.sha256 for s in a.splits["train"]] == [s.sha256 for s in b.splits["train"]]
    with tarfile.open(tmp_path / "a" / "train-000000.tar") as tar:
        assert {m.mtime for m in tar.getmembers()} == {MTIME}
    c = write_shards(data, tmp_path / "c", parse_shard_size("1KB"), 0.3, 8)
    assert [s.sha256 for s in c.splits["train"]] != [s.sha256 for s in a.splits["train"]]  # the seed orders them


def test_unreadable_images_are_left_out_and_counted(tmp_path):
    data = make_folder(tmp_path / "d", {"train": 3, "val": 2})
    (data / "train" / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    shards = write_shards(data, tmp_path / "out", ShardLimit(images=100), 0.2, 0)
    assert shards.skipped == 1 and shards.images("train") == 6
    assert all("broken" not in json.loads(s["json"])["path"] for s in read_back(tmp_path / "out", "train"))


def test_the_output_must_be_outside_the_dataset_and_new_unless_overwriting_shards(tmp_path):
    data = make_folder(tmp_path / "d", {"train": 2, "val": 1})
    with pytest.raises(DataError, match="inside the dataset"):
        write_shards(data, data / "shards", ShardLimit(images=10), 0.2, 0)
    assert not (data / "shards").exists()
    other = tmp_path / "busy"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty"):
        write_shards(data, other, ShardLimit(images=10), 0.2, 0, overwrite=True)
    assert (other / "notes.txt").read_text() == "mine"
    write_shards(data, tmp_path / "out", ShardLimit(images=1), 0.2, 0)
    with pytest.raises(DataError, match="--overwrite"):
        write_shards(data, tmp_path / "out", ShardLimit(images=10), 0.2, 0)
    write_shards(data, tmp_path / "out", ShardLimit(images=10), 0.2, 0, overwrite=True)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["dataset.json", "train-000000.tar",
                                                                     "val-000000.tar"]
    with pytest.raises(DataError, match="already a dataset of its own format"):  # had crashed on a ShardMember
        write_shards(tmp_path / "out", tmp_path / "again", ShardLimit(images=10), 0.2, 0)
    assert not (tmp_path / "again").exists()


def test_shard_command_from_a_labelled_list(tmp_path):
    data = make_folder(tmp_path, {"d": 4}) / "d"
    rows = [f"{p.relative_to(data)},{p.parent.name}" for p in sorted(data.rglob("*.png"))]
    (data.parent / "labels.csv").write_text("path,label\n" + "\n".join(f"d/{r}" for r in rows) + "\n")
    code, out, err = invoke("shard", f"@{data.parent / 'labels.csv'}", tmp_path / "out", "--shard-size", "2")
    assert code == 0, err
    assert out.strip() == str(tmp_path / "out") and "train: 6 images in 3 shard(s)" in err
    assert {json.loads(s["json"])["path"].split("/")[0] for s in read_back(tmp_path / "out", "val")} == {"d"}
    code, _, err = invoke("shard", data, tmp_path / "x", "--shard-size", "lots")
    assert code == 1 and "--shard-size 'lots'" in err and "Traceback" not in err
