"""predict over several processes (torchrun ... -m finetune predict ... --output FILE): each rank takes one
contiguous share of the inputs, writes its predictions to a part file of its own, and rank 0 joins the parts, in
rank order, into FILE, so the merged file lists the images in the order one process would (the parts stay, as the
issue's "one file per rank plus a merged one"). Each image's result does not depend on which rank or batch it was
in (eval mode), so the merged file is what one process writes, to float rounding.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..files import atomic_write, write_text
from ..runtime.distributed import Dist


def share(items: list, dist: Dist) -> list:
    """This rank's contiguous part of `items` (sizes differ by at most one)."""
    n = len(items)
    return items[dist.rank * n // dist.world:(dist.rank + 1) * n // dist.world]


def part_path(output: Path, dist: Dist) -> Path:
    """FILE.rank00001-of-00004.jsonl beside FILE.jsonl."""
    output = Path(output)
    return output.with_name(f"{output.stem}.rank{dist.rank:05d}-of-{dist.world:05d}{output.suffix}")


def write_part(output: Path, text: str, dist: Dist) -> None:
    write_text(part_path(output, dist), text)


def merge_parts(output: Path, format: str, dist: Dist) -> None:
    """On rank 0, after every part is written: FILE from the parts in rank order (a JSON list joined, a CSV's header
    once, JSON lines as they are), written atomically."""
    parts = [part_path(output, Dist(rank, dist.world)).read_bytes().decode("utf-8") for rank in range(dist.world)]
    if format == "json":
        text = json.dumps([item for part in parts for item in json.loads(part)], indent=2) + "\n"
    elif format == "csv":
        text = parts[0] + "".join(part.split("\n", 1)[1] if "\n" in part else "" for part in parts[1:])
    else:
        text = "".join(parts)
    atomic_write(Path(output), lambda f: f.write(text.encode("utf-8")))
