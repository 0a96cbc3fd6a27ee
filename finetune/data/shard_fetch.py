"""Shards behind a URL: fetched once, whole, into the cache (`$FINETUNE_CACHE_DIR/shards/`), then indexed and read
by offset as local shards are, the way webdataset's indexed reader (wids) keeps remote shards in a local cache.

A URL is opened by webdataset (`pipe:COMMAND`, http(s):// through curl, gs:// through gsutil, sftp://, scp://) or,
for any other scheme (s3://, az://...), by fsspec with the user's filesystem package (s3fs, adlfs). Each shard is
written to a temporary file and renamed into place, so an interrupted fetch leaves nothing half-written; the
processes of a machine take turns on each shard, so it is fetched once.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path

from ..config.recipe import root_text
from ..errors import ConfigError, DataError

REMOTE = re.compile(r"^(pipe|https?|s3|gs|gcs|ais|sftp|scp|ftps|az|abfs):", re.IGNORECASE)
_SHARD_NAME = re.compile(r"[\w.-]+\.tar")
_CHUNK = 1 << 20
CURL_STATUS = {6: "the host name does not resolve", 7: "the server cannot be reached",
               22: "the server answered with an error (no such file, or access refused)", 28: "it timed out"}


def remote_text(root) -> str | None:
    """The URL data.root names (its "//" put back where a path made them "/"), or None for a local root."""
    text = root_text(root)
    return text if REMOTE.match(text) else None


def cache_folder(url: str) -> Path:
    """Where the shards of one remote root are kept: a folder of its own under the cache's shards/."""
    from ..cache import cache_dir

    return cache_dir("shards") / hashlib.sha256(url.encode()).hexdigest()[:16]


def local_names(urls: list[str]) -> list[str]:
    """A file name for each shard URL: its last NAME.tar, else its place in the list (pipe: commands)."""
    found = [(_SHARD_NAME.findall(u) or [""])[-1] for u in urls]
    if all(found) and len(set(found)) == len(found):
        return found
    return [f"shard-{i:06d}.tar" for i in range(len(urls))]


def fetch(wanted: list[tuple[str, Path, int | None]], console=None) -> None:
    """Copy each (url, destination, size) the cache lacks (a copy of that size; of any, for None; always, for -1),
    under one progress bar; the first that fails stops with one line. The processes of a machine take turns on
    each destination (a lock file beside it), so one fetches and the others find its copy."""
    from ..console import literal, track

    def cached(dest: Path, size: int | None) -> bool:
        return size != -1 and dest.is_file() and size in (None, dest.stat().st_size)

    todo = [(url, dest) for url, dest, size in wanted if not cached(dest, size)]
    if console is not None and todo:  # a fetch can take long, or retry a while before it fails: never silently
        console.print(f"shards: fetching {len(todo)} of {len(wanted)} from {literal(todo[0][0])}"
                      f"{' ...' if len(todo) > 1 else ''} into {literal(todo[0][1].parent)}", style="dim",
                      soft_wrap=True)
    for url, dest, size in track(wanted, "fetching shards", console):
        with _locked(dest):
            if cached(dest, size):
                continue
            tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
            try:
                with _open(url) as source, open(tmp, "wb") as out:
                    shutil.copyfileobj(source, out, _CHUNK)
                os.replace(tmp, dest)
            except OSError as exc:  # webdataset's pipes say "(COMMAND...): exit STATUS (read) ..."
                status = re.search(r"\): exit (\d+)", str(exc))
                why = f"the command exited with status {status.group(1)}" if status else str(exc)
                if status and url.lower().startswith("http") and int(status.group(1)) in CURL_STATUS:
                    why = f"{CURL_STATUS[int(status.group(1))]} (curl's status {status.group(1)})"
                raise DataError(f"cannot fetch {url}: {why}") from None
            finally:
                tmp.unlink(missing_ok=True)


@contextmanager
def _locked(dest: Path):
    try:
        import fcntl
    except ImportError:  # no fcntl (Windows): each process fetches its own copy, renamed into place alike
        yield
        return
    with open(dest.with_name(f".{dest.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _open(url: str):
    try:
        from webdataset.gopen import gopen, gopen_schemes
    except ImportError:
        raise ConfigError("shards need webdataset, which is not installed: pip install 'finetune[shards]'") from None
    scheme = url.split(":", 1)[0].lower()
    if scheme in gopen_schemes:
        return gopen(url, "rb")
    try:
        import fsspec

        return fsspec.open(url, "rb").open()
    except ImportError as exc:  # fsspec itself, or its package for the scheme ("Install s3fs to access S3")
        raise ConfigError(f"{url}: {scheme}:// is opened by fsspec with its package for {scheme}:// ({exc}): pip "
                          f"install fsspec and it (s3fs for s3://, gcsfs for gcs://, adlfs for az://)") from None
    except ValueError as exc:  # fsspec: unknown protocol
        raise ConfigError(f"{url}: {exc}") from None
