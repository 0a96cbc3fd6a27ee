"""Shards behind a URL (data.shard_fetch): fetched once into the cache, then the same samples as the local shards;
a failed fetch is one line and leaves no partial file."""

import importlib.util
import os
import shutil
import subprocess
import sys
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import make_folder

from finetune.config import DataSpec
from finetune.data.folders import absolute_root, dataset_folders, packed_images, resolve_splits
from finetune.data.images import load_rgb
from finetune.data.shards import ShardLimit, write_shards
from finetune.errors import ConfigError, DataError


@pytest.fixture
def served(tmp_path, monkeypatch):
    """(local shard set, its URL, the paths the server was asked for): the set served over HTTP on localhost."""
    if shutil.which("curl") is None:
        pytest.skip("webdataset fetches http:// URLs with curl, which is not installed")
    monkeypatch.setenv("FINETUNE_CACHE_DIR", str(tmp_path / "cache"))
    shards = tmp_path / "www" / "shards"
    write_shards(make_folder(tmp_path / "d", {"train": 5, "val": 3}), shards, ShardLimit(images=3), 0.2, 0)
    asked: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            asked.append(self.path)

        def do_GET(self):
            time.sleep(float(os.environ.get("SLOW_SERVER", "0")))
            super().do_GET()

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(tmp_path / "www")))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield shards, f"http://127.0.0.1:{server.server_address[1]}/shards", asked
    server.shutdown()


def _same_samples(a, b):
    assert a.class_names == b.class_names
    for split in ("train", "val"):
        ours, theirs = getattr(a, split), getattr(b, split)
        assert [(m.source, y) for m, y in ours] == [(m.source, y) for m, y in theirs]
        assert all(load_rgb(m).tobytes() == load_rgb(n).tobytes() for (m, _), (n, _) in zip(ours, theirs))


def test_a_set_behind_a_url_is_fetched_once_and_read_as_the_local_set(served, tmp_path, capsys):
    shards, url, asked = served
    remote = resolve_splits(Path(url), 0.2, 0)  # as data.root and --data read it: a path, its "//" made "/"
    assert f"shards: fetching 6 of 6 from {url}/train-000000.tar ..." in capsys.readouterr().err  # never silent
    _same_samples(remote, resolve_splits(shards, 0.2, 0))
    assert sorted(asked) == sorted(f"/shards/{p.name}" for p in shards.iterdir())  # each file once
    assert all(str(m.shard).startswith(str(tmp_path / "cache" / "shards")) for m, _ in remote.train)
    asked.clear()
    again = resolve_splits(url, 0.2, 0)
    assert asked == ["/shards/dataset.json"] and again.train == remote.train  # the shards come from the cache
    cached = Path(remote.train[0][0].shard)
    cached.write_bytes(cached.read_bytes()[:100])  # a copy of another size than dataset.json says: fetched again
    asked.clear()
    _same_samples(resolve_splits(url, 0.2, 0), remote)
    assert asked == ["/shards/dataset.json", f"/shards/{cached.name}"]
    assert dataset_folders(Path(url)) == []
    recorded = DataSpec(root=absolute_root(Path(url))).model_dump(mode="json")["root"]
    assert recorded == url and resolve_splits(recorded, 0.2, 0).train == remote.train  # as a run records it


def test_a_url_pattern_and_a_pipe_command_are_read_as_local_patterns(served):
    shards, url, asked = served
    pattern = "train-{000000..000003}.tar"  # the train shards, served without their dataset.json
    copy = shards.parent / "bare"
    copy.mkdir()
    for p in shards.glob("train-*.tar"):
        shutil.copy(p, copy)
    bare = resolve_splits(f"{copy}/{pattern}", 0.2, 0)
    remote = f"{url.replace('shards', 'bare')}/{pattern}"
    first = resolve_splits(remote, 0.2, 0)
    _same_samples(first, bare)
    assert len(asked) == 4
    assert resolve_splits(remote, 0.2, 0).train == first.train and len(asked) == 4  # a pattern's shards: kept
    _same_samples(resolve_splits(f"pipe:cat {copy}/{pattern}", 0.2, 0), bare)
    signed = packed_images(f"{url}/val-000000.tar?token=x")  # one shard, by a signed URL: its query is no set
    assert [m.name for m in signed] == [m.name for m in packed_images(shards / "val-000000.tar")]
    assert len(bare.train) + len(bare.val) == 10 and bare.counts("val") == {"blue": 1, "red": 1}


def test_a_failed_fetch_is_one_line_and_leaves_nothing_half_written(served, tmp_path):
    shards, url, _ = served
    with pytest.raises(DataError, match=r"cannot fetch http://.*/nowhere/dataset.json: the server answered with an "
                                        r"error \(no such file, or access refused\) \(curl's status 22\)"):
        resolve_splits(url.replace("shards", "nowhere"), 0.2, 0)
    with pytest.raises(DataError, match="cannot fetch pipe:cat /nope/train-000000.tar: the command exited"):
        resolve_splits("pipe:cat /nope/train-000000.tar", 0.2, 0)
    (shards / "val-000000.tar").unlink()
    with pytest.raises(DataError, match="val-000000.tar: the server answered with an error"):
        resolve_splits(url, 0.2, 0)
    if importlib.util.find_spec("s3fs") is None:  # other schemes go to fsspec, which needs the scheme's package
        with pytest.raises(ConfigError, match=r"s3:// is opened by fsspec .*Install s3fs"):
            packed_images("s3://bucket/shards/train-000000.tar")
    left = [p.name for p in (tmp_path / "cache" / "shards").rglob("*")]
    assert left and not [n for n in left if n.endswith(".part")]


READER = """
import sys, time
from pathlib import Path
from finetune.data.folders import resolve_splits
print("ready", flush=True)
while not Path(sys.argv[2]).exists():
    time.sleep(0.01)
print(len(resolve_splits(sys.argv[1], 0.2, 0).train))
"""


@pytest.mark.slow
def test_processes_reading_one_url_at_once_fetch_each_shard_once(served, tmp_path, monkeypatch):
    _, url, asked = served
    monkeypatch.setenv("SLOW_SERVER", "0.3")  # each answer takes a while, so the two overlap
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", READER, f"{url}/train-{{000000..000003}}.tar", str(go)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    assert all(p.stdout.readline().strip() == "ready" for p in procs)
    go.touch()  # both start fetching now
    outs = [p.communicate(timeout=120) for p in procs]
    assert [o.strip() for o, _ in outs] == ["8", "8"], outs
    assert sorted(asked) == [f"/shards/train-00000{i}.tar" for i in range(4)]  # once each, not once a process
