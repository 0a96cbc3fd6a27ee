"""CIFAR-10 as an ImageFolder (train/<class>/*.png, val/<class>/*.png), from torchvision's own download.

torchvision.datasets.CIFAR10 fetches cifar-10-python.tar.gz (163 MB), checks every batch file's md5 and
unpickles it; this writes its 50,000 train and 10,000 test images as PNGs, the test set as val/, so the
seed's CIFAR recipe (recipes/resnet18-cifar-scratch.yaml) reads them like any other folder. The folder is
written under a temporary name and renamed when complete: an interrupted export leaves no half dataset.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ..console import track
from ..errors import DataError
from ..files import make_folder

ARCHIVE = "cifar-10-python.tar.gz"


def default_download_dir() -> Path:
    """Beside torch's hub cache: $TORCH_HOME/datasets (~/.cache/torch/datasets)."""
    import torch

    return Path(torch.hub.get_dir()).parent / "datasets"


def write_cifar10(out: Path, download_dir: Path | None = None, console=None) -> dict[str, int]:
    """Download CIFAR-10 through torchvision (or reuse its download in download_dir) and write it to `out` as
    an ImageFolder. Returns {split: images written}."""
    import torchvision

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out} already exists and is not empty; choose a new folder for CIFAR-10")
    download_dir = make_folder(Path(download_dir or default_download_dir()), "the download folder", DataError)
    partial = out.with_name(f".{out.name}.partial")
    if partial.exists():
        shutil.rmtree(partial)  # an earlier export that stopped midway
    counts = {}
    for split, train in (("train", True), ("val", False)):
        try:
            dataset = torchvision.datasets.CIFAR10(str(download_dir), train=train, download=True)
        except OSError as exc:  # URLError is an OSError: offline, proxy, DNS
            raise DataError(f"could not download CIFAR-10 ({exc}). Offline? Put {ARCHIVE} from "
                            f"https://www.cs.toronto.edu/~kriz/ into {download_dir} and run this again") from None
        except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted"
            raise DataError(f"CIFAR-10 in {download_dir} is damaged ({exc}); delete {download_dir / ARCHIVE} "
                            "and cifar-10-batches-py there and run this again") from None
        for name in dataset.classes:
            (partial / split / name).mkdir(parents=True, exist_ok=True)
        seen = dict.fromkeys(dataset.classes, 0)
        for i in track(range(len(dataset)), f"writing CIFAR-10 {split}", console):
            image, label = dataset[i]
            name = dataset.classes[label]
            image.save(partial / split / name / f"{name}_{seen[name]:05d}.png")
            seen[name] += 1
        counts[split] = len(dataset)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        out.rmdir()  # empty, checked above
    partial.rename(out)
    return counts
