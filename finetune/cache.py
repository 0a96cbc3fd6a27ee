"""One cache folder for everything finetune keeps between runs, one sub-folder per kind.

The root is `$FINETUNE_CACHE_DIR`, else `$XDG_CACHE_HOME/finetune`, else `~/.cache/finetune`:

- `features/`: frozen-prefix outputs (train.features), reused by later runs on the same data and model;
- `files/`: per-file results (FileResults): the file checks (data.filecheck), so a second scan of a folder only
  stats it, and the audit's perceptual hashes;
- `hf/`: parquet files converted to Arrow by `datasets` (data.hf);
- `logs/`: crash logs of commands that were not inside a run folder;
- `shards/`: copies of shards behind a URL (data.shard_fetch), one folder per data.root.

Everything here can be deleted at any time; it is recomputed. The older `$FINETUNE_CACHE` (the file checks' folder)
still sets the root when `$FINETUNE_CACHE_DIR` is not set, with a one-line notice.
"""

from __future__ import annotations

import os
import sqlite3
import sys
from pathlib import Path

KINDS = ("features", "files", "hf", "logs", "shards")
_said: set[str] = set()


def cache_root() -> Path:
    if os.environ.get("FINETUNE_CACHE_DIR"):
        return Path(os.environ["FINETUNE_CACHE_DIR"]).expanduser()
    if os.environ.get("FINETUNE_CACHE"):
        if "FINETUNE_CACHE" not in _said:
            _said.add("FINETUNE_CACHE")
            print("note: $FINETUNE_CACHE is deprecated; set $FINETUNE_CACHE_DIR (the one cache folder) instead",
                  file=sys.stderr)
        return Path(os.environ["FINETUNE_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "finetune"


def cache_dir(kind: str) -> Path:
    """The sub-folder for one kind of cached thing (not created here)."""
    if kind not in KINDS:
        raise ValueError(f"unknown cache kind {kind!r}; one of {', '.join(KINDS)}")
    return cache_root() / kind


class FileResults:
    """Text results per file in SQLite (cache folder `files/`, one table per kind of result), keyed by absolute path
    and trusted only while the file's size and mtime and the result's `version` are what they were; processes share
    it safely. Best effort: a cache that cannot be opened or written (read-only home, a cache folder inside the
    dataset `root`, a damaged file, which is started again) only means computing again."""

    FILE = "filecheck.sqlite"

    def __init__(self, table: str, version: str, root: Path | None = None):
        self.table, self.version, self.db = table, version, None
        try:
            folder = cache_dir("files")
            if root is not None and _inside(folder, root):  # never written into the dataset being read
                return
            folder.mkdir(parents=True, exist_ok=True)
            try:
                self.db = self._open(folder / self.FILE)
            except sqlite3.DatabaseError as exc:
                if "not a database" not in str(exc) and "malformed" not in str(exc):
                    raise
                (folder / self.FILE).unlink()  # damaged: it is only our cache, so it starts again
                self.db = self._open(folder / self.FILE)
        except (OSError, sqlite3.Error):
            self.db = None

    def _open(self, path: Path) -> sqlite3.Connection:
        db = sqlite3.connect(path, timeout=30)
        try:
            db.execute(f"CREATE TABLE IF NOT EXISTS {self.table} (path TEXT PRIMARY KEY, size INTEGER, "
                       "mtime_ns INTEGER, version TEXT, result TEXT)")
        except sqlite3.Error:
            db.close()
            raise
        return db

    def get(self, key: str, st: os.stat_result) -> str | None:
        if self.db is None:
            return None
        try:
            row = self.db.execute(f"SELECT size, mtime_ns, version, result FROM {self.table} WHERE path = ?",
                                  (key,)).fetchone()
        except sqlite3.Error:
            return None
        return row[3] if row and row[:3] == (st.st_size, st.st_mtime_ns, self.version) else None

    def put(self, rows: list[tuple[str, os.stat_result, str]]) -> None:
        if self.db is None or not rows:
            return
        try:
            with self.db:
                self.db.executemany(f"INSERT OR REPLACE INTO {self.table} VALUES (?, ?, ?, ?, ?)",
                                    [(k, st.st_size, st.st_mtime_ns, self.version, text) for k, st, text in rows])
        except sqlite3.Error:
            pass

    def close(self) -> None:
        if self.db is not None:
            self.db.close()


def _inside(path: Path, root: Path) -> bool:
    path, root = Path(path).expanduser().resolve(), Path(root).expanduser().resolve()
    return path == root or root in path.parents
