"""One cache folder for everything finetune keeps between runs, one sub-folder per kind.

The root is `$FINETUNE_CACHE_DIR`, else `$XDG_CACHE_HOME/finetune`, else `~/.cache/finetune`:

- `features/`: frozen-prefix outputs (train.features), reused by later runs on the same data and model;
- `files/`: the file-check database (data.filecheck), so a second scan of a folder only stats it;
- `logs/`: crash logs of commands that were not inside a run folder.

Everything here can be deleted at any time; it is recomputed. The older `$FINETUNE_CACHE` (the file checks' folder)
still sets the root when `$FINETUNE_CACHE_DIR` is not set, with a one-line notice.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

KINDS = ("features", "files", "logs")
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
