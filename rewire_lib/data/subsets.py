"""Seeded, nested, stratified low-resource training subsets.

Each row gets a rank from a hash of (seed, ID): the order does not depend on the order of the
rows given nor on the other rows, so subsets are nested (1% within 10% within 100%, and an
hours-based subset within a larger one) and reproducible.

- by fraction: per class (when `stratify` names a column) the first max(1, round(f * n_class))
  rows in rank order, so every class keeps at least one example;
- by hours: rows in a class-interleaved rank order until the total duration reaches the budget.

Rows come back in their original order. File names: `train_frac{F}.csv`, `train_hours{H}.csv`.
"""
from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from typing import Dict, List, Optional, Sequence

Row = Dict[str, object]


def _rank(seed: int, uid: str) -> int:
    return int.from_bytes(hashlib.sha1(f"{seed}:{uid}".encode()).digest()[:8], "big")


def _ordered_groups(rows: Sequence[Row], seed: int, stratify: Optional[str]) -> Dict[str, List[int]]:
    groups: Dict[str, List[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        if "ID" not in row:
            raise KeyError(f"row {i} has no 'ID' column: {row}")
        if stratify is not None and stratify not in row:
            raise KeyError(f"row {row['ID']} has no column {stratify!r} to stratify by")
        groups[str(row[stratify]) if stratify else ""].append(i)
    for key in groups:
        groups[key].sort(key=lambda i: (_rank(seed, str(rows[i]["ID"])), str(rows[i]["ID"])))
    return groups


def per_class_subset(rows: Sequence[Row], k: int, seed: int, column: str) -> List[Row]:
    """The first k rows of each class (`column`) in the same seeded hash order as `nested_subset`, so
    k=1 lies within k=5 within k=20 (and within the fraction subsets of the same seed); rows keep their order."""
    groups = _ordered_groups(rows, seed, column)
    keep = {i for idx in groups.values() for i in idx[:k]}
    return [r for i, r in enumerate(rows) if i in keep]


def subset_name(fraction: Optional[float] = None, hours: Optional[float] = None, split: str = "train") -> str:
    """File name of a subset: `train_frac0.1.csv`, `train_hours1.csv`."""
    if (fraction is None) == (hours is None):
        raise ValueError("give exactly one of fraction or hours")
    if fraction is not None:
        return f"{split}_frac{fraction:g}.csv"
    return f"{split}_hours{hours:g}.csv"


def nested_subset(rows: Sequence[Row], fraction: Optional[float] = None, seed: int = 0,
                  stratify: Optional[str] = None, hours: Optional[float] = None) -> List[Row]:
    """A reproducible subset of `rows` by `fraction` (0 < f <= 1) or `hours` of audio (uses the
    `duration` column), stratified by the column `stratify` if given. Smaller subsets with the
    same seed are contained in larger ones."""
    rows = list(rows)
    if (fraction is None) == (hours is None):
        raise ValueError("nested_subset: give exactly one of fraction or hours")
    if not rows:
        return []
    groups = _ordered_groups(rows, seed, stratify)
    chosen: List[int] = []
    if fraction is not None:
        if not 0 < fraction <= 1:
            raise ValueError(f"nested_subset: fraction must be in (0, 1], got {fraction}")
        for idx in groups.values():
            k = max(1, int(math.floor(fraction * len(idx) + 0.5)))
            chosen.extend(idx[:k])
    else:
        if hours <= 0:
            raise ValueError(f"nested_subset: hours must be > 0, got {hours}")
        # interleave classes by relative position so that any prefix is close to stratified
        pos = {i: (p / len(idx), _rank(seed, str(rows[i]["ID"]))) for idx in groups.values() for p, i in enumerate(idx)}
        order = sorted(pos, key=lambda i: pos[i])
        budget = hours * 3600.0
        total = 0.0
        for i in order:
            if total >= budget:
                break
            if "duration" not in rows[i]:
                raise KeyError(f"row {rows[i]['ID']} has no 'duration' column (needed for an hours subset)")
            chosen.append(i)
            total += float(rows[i]["duration"])
    keep = set(chosen)
    return [row for i, row in enumerate(rows) if i in keep]

