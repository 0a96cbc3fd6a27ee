"""check_file names what is wrong with one file (truncated, empty, not an image, too many pixels, corrupt) or odd
about it, without raising and without decoding more than it must; check_files remembers the answers outside the
dataset and checks a changed file again."""

import hashlib
import io
import os
import struct
import time
import zlib
from pathlib import Path

import pytest
from conftest import make_image
from PIL import Image

import finetune.data.filecheck as filecheck
from finetune.cache import cache_dir
from finetune.data.filecheck import check_file, check_files


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encoded(fmt: str, size=40, mode="RGB", **kw) -> bytes:
    im = Image.new("RGB", (size, size), (200, 40, 30))
    for x in range(size):  # a gradient, so the image is a photo's many colours and not a flat placeholder
        for y in range(size):
            im.putpixel((x, y), (x * 6 % 256, y * 6 % 256, (x * y) % 256))
    buf = io.BytesIO()
    im.convert(mode).save(buf, fmt, **kw)
    return buf.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_a_good_image_is_usable_and_described(tmp_path):
    path = write(tmp_path / "a.png", encoded("PNG"))
    result = check_file(path)
    assert result.usable and result.problem is None and result.flags == []
    assert result.detail == "PNG RGB 40x40"
    assert result.digest == hashlib.sha256(path.read_bytes()).hexdigest()  # what duplicate detection compares


@pytest.mark.parametrize("fmt, suffix", [("JPEG", ".jpg"), ("PNG", ".png"), ("GIF", ".gif")])
def test_a_file_cut_short_is_truncated(tmp_path, fmt, suffix):
    data = encoded(fmt)
    result = check_file(write(tmp_path / f"cut{suffix}", data[: len(data) // 2]))
    assert result.problem == "truncated" and not result.usable


def test_a_zero_byte_file_is_empty(tmp_path):
    assert check_file(write(tmp_path / "empty.jpg", b"")).problem == "empty-file"


def test_damaged_bytes_are_corrupt_not_truncated(tmp_path):
    png = bytearray(encoded("PNG"))
    png[png.index(b"IDAT") + 8] ^= 0xFF  # the chunk's CRC no longer matches
    assert check_file(write(tmp_path / "crc.png", bytes(png))).problem == "corrupt"
    header = b"\xff\xd8\xff\xc0\x00\x03" + b"\x00" * 200 + b"\xff\xd9"  # complete, but its header is nonsense
    assert check_file(write(tmp_path / "header.jpg", header)).problem == "corrupt"


def test_files_that_are_not_images_say_what_they_are(tmp_path):
    page = check_file(write(tmp_path / "page.jpg", b"<!DOCTYPE html><html><body>404 Not Found</body></html>"))
    assert page.problem == "not-image" and "HTML page" in page.detail
    notes = check_file(write(tmp_path / "notes.txt", b"shot on a phone\n"))
    assert notes.problem == "not-image" and "training skips it" in notes.detail
    other = check_file(write(tmp_path / "photo.heic", encoded("PNG")))  # an image under a name training skips
    assert other.problem == "ignored-extension" and "rename it" in other.detail


def test_too_many_pixels_are_refused_from_the_header_alone(tmp_path):
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)  # 10 gigapixels, a few hundred bytes
    bomb = (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 4096))
            + _png_chunk(b"IEND", b""))
    start = time.perf_counter()
    result = check_file(write(tmp_path / "bomb.png", bomb))
    assert result.problem == "too-large" and result.digest
    assert time.perf_counter() - start < 5  # never decoded


def test_odd_but_usable_files_are_flagged(tmp_path):
    flags = {name: check_file(write(tmp_path / name, data)) for name, data in {
        "gray.png": encoded("PNG", mode="L"),
        "cmyk.jpg": encoded("JPEG", mode="CMYK"),
        "alpha.png": encoded("PNG", mode="RGBA"),
        "thumb.png": encoded("PNG", size=16),
        "really-a-png.jpg": encoded("PNG"),
        "motion.jpg": encoded("JPEG") + b"video appended by the phone " * 200,
    }.items()}
    assert all(check.usable for check in flags.values())
    assert "grayscale" in flags["gray.png"].flags and "cmyk" in flags["cmyk.jpg"].flags
    assert "transparency" in flags["alpha.png"].flags and "small" in flags["thumb.png"].flags
    assert "extension-mismatch" in flags["really-a-png.jpg"].flags
    assert "trailing-data" in flags["motion.jpg"].flags


def test_what_cannot_be_read_is_unreadable_and_nothing_blocks(tmp_path):
    assert check_file(tmp_path / "gone.png").problem == "unreadable"
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "pipe.png")
        result = check_file(tmp_path / "pipe.png")  # reading it would wait forever
        assert result.problem == "unreadable" and "not a regular file" in result.detail


def test_file_checks_stream_large_files(tmp_path):
    import tracemalloc

    huge = tmp_path / "huge.jpg"
    with open(huge, "wb") as f:
        for _ in range(64):
            f.write(os.urandom(1 << 20))
    tracemalloc.start()
    result = check_file(huge)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert result.problem == "not-image" and result.digest
    assert peak < 16 << 20  # 64 MiB hashed in chunks, never held whole


def test_second_scan_reads_nothing_and_changed_files_are_rechecked(image_folder, monkeypatch, tmp_path):
    from rich.console import Console

    paths = sorted(image_folder.rglob("*.png"))
    log = io.StringIO()
    first = check_files(paths, Console(file=log))
    assert log.getvalue() == ""  # no progress bar, not even its blank line, where stderr is not a terminal
    cache_files = list(cache_dir("files").iterdir())
    assert cache_files and not any(image_folder in p.parents for p in cache_files)
    calls = []
    real = filecheck.check_file
    monkeypatch.setattr(filecheck, "check_file", lambda p: calls.append(p) or real(p))
    assert check_files(paths) == first and calls == []
    paths[0].write_bytes(paths[0].read_bytes()[:40])  # the file changes: size and mtime
    assert check_files(paths)[paths[0]].problem == "truncated" and calls == [paths[0]]


def test_a_cache_inside_the_dataset_is_never_written(tmp_path, monkeypatch):
    data = tmp_path / "data"
    paths = [make_image(data / "red" / f"{i}.png", (220, 40, 30), size=40, seed=i) for i in range(3)]
    monkeypatch.setenv("FINETUNE_CACHE_DIR", str(data / ".cache"))
    results = check_files(paths, root=data)
    assert all(results[p].usable for p in paths)
    assert sorted(data.rglob("*")) == sorted([data / "red", *paths])  # not a file added to the dataset
