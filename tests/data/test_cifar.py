"""`finetune cifar10`: torchvision's CIFAR-10, offline on batch files in the CIFAR pickle format written here."""

import pickle

import numpy as np
import pytest
import torchvision
from PIL import Image

from finetune.data.cifar import write_cifar10
from finetune.errors import DataError

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _fake_download(root, per_batch=3):
    """cifar-10-batches-py as the real archive unpacks: 5 train batches, a test batch, batches.meta."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)  # rows: R plane, G plane, B plane
        labels = [int(x) for x in rng.integers(0, 10, per_batch)]
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": labels, "batch_label": name}, f)
        written[name] = (data, labels)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": CLASSES, "num_vis": 3072}, f)
    return written


@pytest.fixture
def offline(monkeypatch):
    # the md5 sums are the real archive's; our small files stand in for it
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args, **kwargs: True)


def test_writes_an_imagefolder_with_the_test_set_as_val(tmp_path, offline):
    written = _fake_download(tmp_path / "dl")
    counts = write_cifar10(tmp_path / "cifar10", tmp_path / "dl")
    assert counts == {"train": 15, "val": 3}
    out = tmp_path / "cifar10"
    assert sorted(p.name for p in (out / "train").iterdir()) == sorted(CLASSES)
    assert sum(1 for _ in (out / "train").rglob("*.png")) == 15 and sum(1 for _ in (out / "val").rglob("*.png")) == 3
    data, labels = written["data_batch_1"]
    first = out / "train" / CLASSES[labels[0]] / f"{CLASSES[labels[0]]}_00000.png"
    with Image.open(first) as im:
        assert im.size == (32, 32) and im.mode == "RGB"
        assert np.array_equal(np.asarray(im), data[0].reshape(3, 32, 32).transpose(1, 2, 0))
    assert not any(p.name.endswith(".partial") for p in tmp_path.iterdir())


def test_refuses_a_folder_in_use(tmp_path, offline):
    _fake_download(tmp_path / "dl")
    (tmp_path / "cifar10").mkdir()
    (tmp_path / "cifar10" / "mine.txt").write_text("x")
    with pytest.raises(DataError, match="not empty"):
        write_cifar10(tmp_path / "cifar10", tmp_path / "dl")


def test_offline_download_says_where_to_put_the_archive(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", no_network)
    with pytest.raises(DataError, match="cifar-10-python.tar.gz"):
        write_cifar10(tmp_path / "cifar10", tmp_path / "dl")
    assert not (tmp_path / "cifar10").exists()
