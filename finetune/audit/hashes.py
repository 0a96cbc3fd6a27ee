"""Perceptual hashes, the audit's second near-duplicate detector: each image's 64-bit pHash (imagehash.phash: the
grey image shrunk to 32 x 32, its lowest 8 x 8 DCT coefficients compared with their median), and optionally the
pHash of the image mirrored left-right.

pHash looks at the picture at 32 px, so it does not care how large a copy was saved: a half-size copy of a
200-px photo, which the pooled embedding of the upscaled blur misses (issue 25), keeps its hash. It is not flip
invariant (a mirror changes the sign of every odd horizontal frequency), hence the mirrored hash; see
docs/audit.md for what each one finds on which data. Images are decoded by the project's own load_rgb (EXIF
orientation, transparency, 16-bit), the same pixels the model sees.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from ..cache import FileResults
from ..data.images import load_rgb
from ..errors import ConfigError

HASH_SIZE = 8  # 8 x 8 = 64 bits, imagehash's default
BITS = HASH_SIZE * HASH_SIZE
DRAFT = 4 * HASH_SIZE * 4  # JPEGs decode at a reduced scale no smaller than this: phash shrinks to 32 px anyway


@dataclass
class Hashes:
    """N images' pHashes as N x 64 booleans, in the order of the paths given; `readable` is False where a file
    could not be decoded (its rows are zeros and it is in no pair)."""
    bits: np.ndarray
    mirrored: np.ndarray | None  # of each image flipped left-right; None when not computed
    readable: np.ndarray

    def __len__(self) -> int:
        return len(self.bits)


def require_imagehash():
    try:
        import imagehash
    except ImportError as exc:
        raise ConfigError("the audit's perceptual hashes need imagehash: pip install 'finetune[audit]'") from exc
    return imagehash


def phash_bits(im: Image.Image) -> np.ndarray:
    """The 64 bits of one decoded image's pHash."""
    return require_imagehash().phash(im, hash_size=HASH_SIZE).hash.reshape(-1).astype(bool)


def hash_file(path: str | Path, mirrored: bool) -> tuple[np.ndarray, np.ndarray | None]:
    im = load_rgb(Path(path), DRAFT)
    return phash_bits(im), phash_bits(ImageOps.mirror(im)) if mirrored else None


def hash_images(paths: list[str], mirrored: bool = True, workers: int = 4, progress=None, root: Path | None = None
                ) -> Hashes:
    """Every image's pHash (and its mirror's): from the file-results cache where the file is unchanged (table
    `phash`; a second audit of a million photos only stats them), the rest decoded in a pool of `workers` threads
    (Pillow decodes without the GIL) that ends with the call; progress() after each image. `root`: the dataset, in
    which no cache is written."""
    imagehash = require_imagehash()
    n = len(paths)
    bits, mirror, readable = np.zeros((n, BITS), bool), np.zeros((n, BITS), bool), np.ones(n, bool)
    cache = FileResults("phash", f"{BITS}/{DRAFT}/imagehash-{imagehash.__version__}/pillow-{Image.__version__}",
                        root)
    todo, done = [], []
    try:
        for i, path in enumerate(paths):  # the cache is read and written here; the threads only decode
            try:
                st = os.stat(path)
            except OSError:  # vanished since the scan: left out of the hash pairs, not of the audit
                readable[i] = False
                if progress is not None:
                    progress()
                continue
            cached = (cache.get(os.path.abspath(path), st) or "").split(":")
            if cached[0] and (len(cached) == 2 or not mirrored):
                bits[i], mirror[i] = _unpack(cached[0]), _unpack(cached[1]) if mirrored else False
                if progress is not None:
                    progress()
            else:
                todo.append((i, st))

        def one(item) -> None:
            i, st = item
            try:
                b, m = hash_file(paths[i], mirrored)
            except Exception:  # unreadable since the scan: left out of the hash pairs, not of the audit
                readable[i] = False
            else:
                bits[i] = b
                if m is not None:
                    mirror[i] = m
                done.append((os.path.abspath(paths[i]), st, _pack(b) + (":" + _pack(m) if m is not None else "")))
            if progress is not None:
                progress()

        with ThreadPoolExecutor(max(1, workers)) as pool:
            list(pool.map(one, todo))
        cache.put(done)
    finally:
        cache.close()
    return Hashes(bits, mirror if mirrored else None, readable)


def _pack(bits: np.ndarray) -> str:
    return np.packbits(bits).tobytes().hex()


def _unpack(text: str) -> np.ndarray:
    return np.unpackbits(np.frombuffer(bytes.fromhex(text), np.uint8))[:BITS].astype(bool)


def as_vectors(bits: np.ndarray) -> torch.Tensor:
    """Hashes as unit vectors of +-1/8, so a dot product is 1 - 2 * hamming / 64 and the cosine search finds the
    closest hashes (exactly: the products are sums of 1/64ths, exact in float32)."""
    return torch.from_numpy(np.where(bits, 1.0, -1.0).astype(np.float32) / np.sqrt(bits.shape[1], dtype=np.float32))


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bits that differ between rows of a and b (broadcast)."""
    return (a != b).sum(-1)
