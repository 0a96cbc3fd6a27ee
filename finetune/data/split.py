"""The seeded stratified split that every source without a val split of its own gets (a folder without val/, a
list without a split column, shards without dataset.json, a dataset with one split)."""

from __future__ import annotations

import random


def stratified_split(by_class: dict[int, list], val_fraction: float, seed: int, order=sorted) -> tuple[list, list]:
    """(train, val) as (item, label) pairs: each class's items, in label order, shuffled by one generator seeded by
    `seed`, and round(n x val_fraction) of them held out (at least one; none of a class of one); each part of a
    class in `order`."""
    rng = random.Random(seed)
    train, val = [], []
    for label in sorted(by_class):
        items = list(by_class[label])
        rng.shuffle(items)
        n_val = max(1, round(len(items) * val_fraction)) if len(items) > 1 else 0
        val += [(item, label) for item in order(items[:n_val])]
        train += [(item, label) for item in order(items[n_val:])]
    return train, val
