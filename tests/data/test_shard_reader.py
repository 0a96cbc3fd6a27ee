"""data.root as shards (data.shard_reader): the folder's split in the folder's order, read by offset; damaged,
truncated and missing shards said in one line; a damaged image skipped and counted, not a crash."""

import io
import json
import tarfile
from pathlib import Path

import pytest
from conftest import make_folder

from finetune.data.folders import dataset_folders, resolve_splits
from finetune.data.images import ImageDataset, load_rgb
from finetune.data.shard_reader import ShardMember, is_shard_root
from finetune.data.shards import ShardLimit, write_shards
from finetune.errors import DataError


@pytest.fixture
def sharded(tmp_path) -> tuple[Path, Path]:
    data = make_folder(tmp_path / "d", {"train": 5, "val": 3})
    write_shards(data, tmp_path / "shards", ShardLimit(images=3), 0.2, 0)
    return data, tmp_path / "shards"


def test_shards_give_the_folders_split_in_its_order_and_the_same_pixels(sharded):
    data, shards = sharded
    folder, sharded_splits = resolve_splits(data, 0.2, 0), resolve_splits(shards, 0.2, 0)
    assert sharded_splits.class_names == folder.class_names and sharded_splits.source == "shards"
    for split in ("train", "val"):
        ours, theirs = getattr(sharded_splits, split), getattr(folder, split)
        assert [(m.source, y) for m, y in ours] == [(str(p.relative_to(data)), y) for p, y in theirs]
        assert all(isinstance(m, ShardMember) for m, _ in ours)
        assert all(load_rgb(m).tobytes() == load_rgb(p).tobytes() for (m, _), (p, _) in zip(ours, theirs))
    assert dataset_folders(shards) == [shards]


def test_a_brace_pattern_picks_train_shards_and_a_bare_pattern_is_split_by_val_fraction(sharded, tmp_path):
    _, shards = sharded
    picked = resolve_splits(f"{shards}/train-{{000000..000001}}.tar", 0.2, 0)
    assert len(picked.train) == 6 and len(picked.val) == 6  # two of the four train shards; the set's own val
    bare = tmp_path / "bare"
    bare.mkdir()
    for p in shards.glob("*.tar"):
        (bare / p.name).write_bytes(p.read_bytes())
    pooled = resolve_splits(f"{bare}/train-{{000000..000003}}.tar", 0.2, 0)  # no dataset.json: .json class names
    assert pooled.class_names == ["blue", "red"] and len(pooled.train) + len(pooled.val) == 10
    assert pooled.counts("val") == {"blue": 1, "red": 1}
    assert is_shard_root(bare / "train-000000.tar") and not is_shard_root(bare)


def test_damaged_truncated_and_missing_shards_are_one_line_errors(sharded):
    _, shards = sharded
    first = shards / "train-000000.tar"
    original = first.read_bytes()
    first.write_bytes(original[:-1024])  # truncated
    with pytest.raises(DataError, match="truncated or was replaced"):
        resolve_splits(shards, 0.2, 0)
    first.write_bytes(original[:600] + b"x" * 10 + original[610:])  # the same size, other bytes
    with pytest.raises(DataError, match="does not match the sha256"):
        resolve_splits(shards, 0.2, 0)
    first.unlink()
    with pytest.raises(DataError, match="train-000000.tar is missing"):
        resolve_splits(shards, 0.2, 0)


def test_a_truncated_shard_without_an_index_is_said_not_read_past(tmp_path, sharded):
    _, shards = sharded
    cut = tmp_path / "cut.tar"
    cut.write_bytes((shards / "train-000000.tar").read_bytes()[:2000])
    with pytest.raises(DataError, match="cut.tar cannot be read .*truncated or damaged"):
        resolve_splits(cut, 0.2, 0)


def test_an_image_that_does_not_decode_is_skipped_and_counted_and_the_index_is_reused(tmp_path, monkeypatch):
    own = tmp_path / "shards" / "own.tar"  # not the folder the cache is in: the cache is never written into data
    own.parent.mkdir()
    with tarfile.open(own, "w") as tar:
        for i in range(6):
            good = io.BytesIO()
            from PIL import Image

            Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(good, "PNG")
            data = good.getvalue() if i != 2 else b"not a png at all"
            for ext, payload in (("png", data), ("cls", str(i % 2).encode())):
                info = tarfile.TarInfo(f"s{i}.{ext}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    splits = resolve_splits(own, 0.34, 0)
    assert splits.class_names == ["0", "1"]  # no .json: the class numbers
    dataset = ImageDataset(splits.train + splits.val, lambda im: im.size, size=8)
    labels = [dataset[i][1] for i in range(len(dataset))]
    assert sum(label < -1 for label in labels) == 1  # the damaged one: data.images.missing_label, left out

    import finetune.data.shard_reader as reader

    monkeypatch.setattr(reader, "_read_index", lambda *a: pytest.fail("indexed again"))
    assert resolve_splits(own, 0.34, 0).train == splits.train  # the cached index


def test_class_numbers_outside_the_sets_classes_are_refused(sharded):
    _, shards = sharded
    index = json.loads((shards / "dataset.json").read_text())
    index["classes"] = ["blue"]
    (shards / "dataset.json").write_text(json.dumps(index))
    with pytest.raises(DataError, match="class number outside the 1 classes"):
        resolve_splits(shards, 0.2, 0)


def test_inspect_says_shards_were_checked_when_written_and_audit_asks_for_the_folder(sharded, tiny_tree):
    from finetune.audit.run import run_audit
    from finetune.config import build_recipe
    from finetune.data.doctor import inspect_dataset
    from finetune.errors import ConfigError

    with pytest.raises(DataError, match="holds shards: `finetune shard` checked their images"):
        inspect_dataset(sharded[1])
    recipe = build_recipe({**tiny_tree, "data": {**tiny_tree["data"], "root": str(sharded[1])}})
    with pytest.raises(ConfigError, match="audit the folder they were made from"):
        run_audit(recipe)
