"""Check one image file, cheaply and correctly, and remember the answer.

A check reads the file once (for its content hash), parses the header, and proves the file is
complete without a full decode where the format allows it: a JPEG ends with its EOI marker (else it
is decoded at 1/8 scale to tell truncation from harmless trailing data), PNG chunks carry CRCs
(Image.verify). Other formats (GIF, BMP, WebP, TIFF) are decoded. Images over the decompression-bomb
limit are refused from the header alone.

Results are cached per file by (absolute path, size, mtime) in the user cache directory
(finetune.cache: `files/` under $FINETUNE_CACHE_DIR, else ~/.cache/finetune), never under the dataset.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import PIL
from PIL import Image, UnidentifiedImageError

from ..cache import FileResults
from ..errors import DataError
from .folders import is_image_name
from .images import open_image, special_file

# Bump when what a check finds changes, so cached answers from older code are not trusted.
CHECK_VERSION = f"2/pillow-{PIL.__version__}"
SMALL_SIDE = 32  # pixels; smaller images are upscaled a lot by any pretrained model's preprocessing
FORMATS = {".jpg": {"JPEG", "MPO"}, ".jpeg": {"JPEG", "MPO"}, ".png": {"PNG"}, ".gif": {"GIF"}, ".bmp": {"BMP"},
           ".webp": {"WEBP"}, ".tif": {"TIFF"}, ".tiff": {"TIFF"}}
PLACEHOLDER_COLORS = 64  # at most this many distinct colours: a graphic, not a photo
SIGNATURES = [(b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF8", "GIF"), (b"BM", "BMP"),
              (b"RIFF", "WEBP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF")]
GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}
ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}


@dataclass
class FileCheck:
    problem: str | None = None  # why the file cannot be used (a finding kind), None when usable
    detail: str = ""  # what was found: "JPEG RGB 500x375", or the error
    flags: list[str] = field(default_factory=list)  # odd-but-usable kinds: grayscale, cmyk, small, ...
    digest: str = ""  # sha256 of the bytes, for duplicate detection

    @property
    def usable(self) -> bool:
        return self.problem is None


@dataclass(frozen=True)
class _Ends:
    """A file's first and last few KiB and its size: all a check reads besides the streamed hash and the decoder."""
    head: bytes
    tail: bytes
    size: int


def check_file(path: Path) -> FileCheck:
    """What is wrong or odd about one file. Never raises for a bad file; never writes anything. The file is
    hashed in chunks (a 2 GB file costs no 2 GB of memory) and its header sniffed before any decode."""
    path = Path(path)
    try:
        if not stat.S_ISREG(path.stat().st_mode):  # a FIFO would block the read forever, a device never end
            return FileCheck("unreadable", f"not a regular file: {special_file(path)}")
    except OSError as exc:
        return FileCheck("unreadable", f"cannot read: {exc.strerror or exc}")
    if not is_image_name(path):
        return _check_other(path)
    try:
        digest, ends = _digest_and_ends(path)
    except OSError as exc:
        return FileCheck("unreadable", f"cannot read: {exc.strerror or exc}")
    if not ends.size:
        return FileCheck("empty-file", "empty (0 bytes)")
    try:
        im = open_image(path)
    except DataError as exc:
        return FileCheck("too-large", str(exc), digest=digest)
    except UnidentifiedImageError:
        signature = next((fmt for magic, fmt in SIGNATURES if ends.head.startswith(magic)), None)
        if signature:  # an image's signature, then nonsense: a damaged file, not a stray document
            return FileCheck(_broken(None, signature, ends), f"{signature} signature but an unreadable header",
                             digest=digest)
        return FileCheck("not-image", f"not an image ({_sniff(ends.head)})", digest=digest)
    except Exception as exc:  # a header Pillow cannot parse, or one cut short
        return FileCheck(_broken(exc, None, ends), _describe(exc), digest=digest)
    with im:
        detail = f"{im.format} {im.mode} {im.width}x{im.height}"
        try:
            flags = _odd(im, ends, path)
            problem = _integrity(im, ends, path)
            if problem is None and im.format not in ("JPEG", "MPO", "PNG") and _few_colors(im):
                flags.append("placeholder")  # only where the pixels are already decoded: no extra cost
        except Exception as exc:
            return FileCheck(_broken(exc, im.format, ends), f"{detail}: {_describe(exc)}", digest=digest)
    if problem == "trailing-data":
        flags.append(problem)
    elif problem:
        return FileCheck(problem.split(":")[0], f"{detail}: {problem.split(':', 1)[-1].strip()}", digest=digest)
    return FileCheck(None, detail, flags, digest)


def _digest_and_ends(path: Path, chunk: int = 1 << 20, keep: int = 4096) -> tuple[str, _Ends]:
    h, head, tail, size = hashlib.sha256(), b"", b"", 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
            head = head or block[:keep]
            tail = (tail + block)[-keep:]
            size += len(block)
    return h.hexdigest(), _Ends(head, tail, size)


def _check_other(path: Path) -> FileCheck:
    """A file whose name training skips (.txt, .DS_Store, Thumbs.db, photo.heic): say whether it is an image."""
    try:
        with open_image(path) as im:
            return FileCheck("ignored-extension", f"{im.format} image that training skips (hidden name or an "
                             f"extension other than {', '.join(sorted(FORMATS))}); rename it to use it")
    except Exception:
        return FileCheck("not-image", "not an image file name; training skips it")


def _odd(im: Image.Image, ends: _Ends, path: Path) -> list[str]:
    flags = []
    if im.format not in FORMATS[path.suffix.lower()]:
        flags.append("extension-mismatch")
    if im.mode in GRAY_MODES:
        flags.append("grayscale")
    if im.mode in ALPHA_MODES or "transparency" in im.info:
        flags.append("transparency")
    if im.mode == "CMYK":
        flags.append("cmyk")
    if im.mode.startswith("I") or (im.format == "PNG" and ends.head[24:25] == b"\x10"):  # IHDR bit depth 16
        flags.append("16-bit")
    if getattr(im, "n_frames", 1) > 1:
        flags.append("animated")
    if im.getexif().get(0x0112, 1) not in (0, 1):  # EXIF Orientation
        flags.append("exif-rotated")
    if min(im.size) < SMALL_SIDE:
        flags.append("small")
    return flags


def _integrity(im: Image.Image, ends: _Ends, path: Path) -> str | None:
    """None when the file is complete, else 'truncated: why' / 'corrupt: why' / 'trailing-data'."""
    try:
        if im.format in ("JPEG", "MPO"):
            if b"\xff\xd9" in ends.tail:  # the EOI marker
                return None  # EOI present; entropy-coded data never contains FFD9, so the scan is complete
            im.draft("RGB", (1, 1))  # no EOI near the end: decode cheaply to tell truncation from trailing data
            im.load()
            return "trailing-data"
        if im.format == "PNG":
            with Image.open(path) as fresh:  # verify must come straight after open
                fresh.verify()  # walks every chunk and checks its CRC, without decompressing
            return None
        im.load()
        return None
    except Exception as exc:
        return f"{_broken(exc, im.format, ends)}: {_describe(exc)}"


def _broken(exc: Exception | None, fmt: str | None, ends: _Ends) -> str:
    """truncated when Pillow says so or the format's end marker is missing, else corrupt."""
    tail = ends.tail
    complete = {"PNG": tail.endswith(b"IEND\xaeB`\x82"), "GIF": tail.endswith(b";"), "JPEG": b"\xff\xd9" in tail}
    complete["MPO"] = complete["JPEG"]
    return "truncated" if "truncat" in str(exc).lower() or not complete.get(fmt, True) else "corrupt"


def _few_colors(im: Image.Image) -> bool:
    """A photo has thousands of colours; a 'not found' placeholder or a logo has a handful."""
    return im.mode not in ("1", "I", "I;16", "F") and im.getcolors(PLACEHOLDER_COLORS) is not None


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"[:200]


def _sniff(head: bytes) -> str:
    start = head[:64].lstrip().lower()
    if start.startswith((b"<!doctype html", b"<html")):
        return "an HTML page"
    if all(32 <= b < 127 or b in (9, 10, 13) for b in head[:512]):
        return "text"
    return "unknown content"


# ---------------------------------------------------------------- many files, cached


class _Cache:
    """FileCheck objects in the file-results cache (finetune.cache.FileResults, table `checks`)."""

    def __init__(self, root: Path | None = None):
        self.store = FileResults("checks", CHECK_VERSION, root)

    def get(self, key: str, st: os.stat_result) -> FileCheck | None:
        text = self.store.get(key, st)
        if text is None:
            return None
        try:
            check = FileCheck(**json.loads(text))
        except (TypeError, ValueError):  # a damaged row: check the file again (put() replaces the row)
            return None
        return check if isinstance(check.problem, (str, type(None))) and isinstance(check.flags, list) else None

    def put(self, rows: list[tuple[str, os.stat_result, FileCheck]]) -> None:
        self.store.put([(k, st, json.dumps(asdict(c))) for k, st, c in rows])

    def close(self) -> None:
        self.store.close()


def check_files(paths: list[Path], console=None, label: str = "checking images",
                root: Path | None = None) -> dict[Path, FileCheck]:
    """check_file for every path, from the cache where the file is unchanged, the rest in parallel threads
    (hashing and decoding release the GIL). A progress bar on `console` while uncached files are read.
    `root`: the dataset the paths are in; a cache folder inside it is not used."""
    from ..console import progress

    cache, results, todo = _Cache(root), {}, []
    try:
        for p in paths:
            try:
                st = p.stat()
            except OSError as exc:
                results[p] = FileCheck("unreadable", f"cannot read: {exc.strerror or exc}")
                continue
            key = os.path.abspath(p)
            results[p] = cache.get(key, st)
            if results[p] is None:
                todo.append((p, key, st))
        with progress(console if todo else None) as bar, \
                ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            task = bar.add_task(label, total=len(todo))
            for (p, _, _), check in zip(todo, pool.map(lambda t: check_file(t[0]), todo)):
                results[p] = check
                bar.advance(task)
        cache.put([(key, st, results[p]) for p, key, st in todo])
    finally:
        cache.close()
    return results
