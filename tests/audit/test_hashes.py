"""Perceptual hashes: a resized, re-encoded copy keeps its photo's hash, a different photo does not, the mirrored
hash matches a flipped copy, the pixels are the ones the model sees (EXIF orientation), and an unreadable file is
left out rather than ending the audit."""

import random

import numpy as np
from PIL import Image, ImageDraw

from finetune.audit.duplicates import MAX_DISTANCE
from finetune.audit.hashes import BITS, as_vectors, hamming, hash_images


def scene(seed: int, size=(96, 64)) -> Image.Image:
    """A few coloured shapes on a gradient: structure at the scales pHash looks at, and not left-right symmetric."""
    rng = random.Random(seed)
    im = Image.linear_gradient("L").resize(size).convert("RGB")
    draw = ImageDraw.Draw(im)
    for _ in range(6):
        x, y = rng.randrange(size[0]), rng.randrange(size[1])
        r = rng.randrange(6, 24)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(rng.randrange(256) for _ in range(3)))
    return im


def test_a_resized_copy_keeps_its_hash_and_a_mirrored_one_matches_the_mirrored_hash(tmp_path):
    photo = scene(0)
    photo.save(tmp_path / "a.png")
    photo.resize((48, 32), Image.BICUBIC).save(tmp_path / "a-half.jpg", quality=60)
    photo.transpose(Image.FLIP_LEFT_RIGHT).save(tmp_path / "a-flip.png")
    scene(1).save(tmp_path / "b.png")
    paths = [str(tmp_path / n) for n in ("a.png", "a-half.jpg", "a-flip.png", "b.png")]
    h = hash_images(paths, mirrored=True, workers=2)
    assert h.readable.all() and h.bits.shape == (4, BITS)
    assert hamming(h.bits[0], h.bits[1]) <= MAX_DISTANCE < hamming(h.bits[0], h.bits[3])
    assert hamming(h.bits[0], h.bits[2]) > MAX_DISTANCE  # pHash is not flip invariant...
    assert hamming(h.mirrored[0], h.bits[2]) <= MAX_DISTANCE  # ...the mirrored hash is
    assert hash_images(paths, mirrored=False).mirrored is None


def test_images_are_hashed_as_the_model_sees_them(tmp_path):
    photo = scene(2)
    photo.save(tmp_path / "upright.jpg", quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 clockwise to display
    photo.transpose(Image.ROTATE_90).save(tmp_path / "tagged.jpg", quality=95, exif=exif)
    h = hash_images([str(tmp_path / "upright.jpg"), str(tmp_path / "tagged.jpg")], mirrored=False)
    assert hamming(h.bits[0], h.bits[1]) <= 4


def test_an_unreadable_file_is_left_out_and_counted(tmp_path):
    scene(3).save(tmp_path / "ok.png")
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    ticks = []
    h = hash_images([str(tmp_path / "ok.png"), str(tmp_path / "broken.jpg"), str(tmp_path / "gone.png")],
                    progress=lambda: ticks.append(1))
    assert h.readable.tolist() == [True, False, False] and len(ticks) == 3
    assert not h.bits[1:].any()


def test_hash_vectors_turn_hamming_into_a_dot_product():
    rng = np.random.default_rng(0)
    bits = rng.random((5, BITS)) < 0.5
    v = as_vectors(bits).numpy()
    assert np.allclose(v @ v.T, 1 - 2 * hamming(bits[:, None], bits[None]) / BITS)


def test_hashes_are_cached_per_file_until_the_file_changes(tmp_path, monkeypatch):
    import finetune.audit.hashes as hashes

    paths = []
    for i in range(3):
        scene(i).save(tmp_path / f"{i}.png")
        paths.append(str(tmp_path / f"{i}.png"))
    first = hash_images(paths)
    decoded = []
    real = hashes.hash_file
    monkeypatch.setattr(hashes, "hash_file", lambda p, m: decoded.append(p) or real(p, m))
    again = hash_images(paths)
    assert decoded == [] and (again.bits == first.bits).all() and (again.mirrored == first.mirrored).all()
    assert (hash_images(paths, mirrored=False).bits == first.bits).all() and decoded == []
    scene(9).save(paths[1])  # changed: hashed again, the others still from the cache
    changed = hash_images(paths)
    assert decoded == [paths[1]] and (changed.bits[0] == first.bits[0]).all()
    assert (changed.bits[1] != first.bits[1]).any()
