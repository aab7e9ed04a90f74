"""Helpers shared by every preparer: command line, validation + writing of splits and subsets,
speaker-disjoint splitting, and the fingerprint that lets finished work be skipped."""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import random
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

from rewire_lib.data.manifest import Failure, ManifestError, Row, report_failures, validate_entries, write_manifest
from rewire_lib.data.subsets import nested_subset, subset_name
from rewire_lib.files.atomic import atomic_write_text
from rewire_lib.files.outputs import OutputFolderError, check_writable

log = logging.getLogger("data_prep")

DEFAULT_FRACTIONS = (0.1, 0.01)
DONE_FILE = "prepared.json"


class PrepError(RuntimeError):
    """The input corpus is missing or not laid out as published."""


def base_parser(description: str, data_folder_default: Optional[str] = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--data_folder", default=data_folder_default, required=data_folder_default is None,
                   help="the corpus as published" + (f" (default {data_folder_default})" if data_folder_default else ""))
    p.add_argument("--save_folder", required=True, help="where the manifests go")
    p.add_argument("--fraction", type=float, nargs="*", default=list(DEFAULT_FRACTIONS),
                   help="nested training subsets by fraction (train_frac{F}.csv); default 0.1 0.01")
    p.add_argument("--hours", type=float, nargs="*", default=[], help="nested training subsets by hours (train_hours{H}.csv)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="redo even if the save folder has this exact preparation")
    return p


def run_preparer(prepare, description: str, argv=None, data_folder_default: Optional[str] = None, options=()):
    """The command line every preparer shares: the common options plus `options`, (flag, argparse
    keyword arguments) pairs whose values go to `prepare` under their `dest` name; then logging and
    `prepare(...)`. A corpus that is missing or laid out otherwise, a bad list or manifest, or a save
    folder that cannot be written ends the command with one line saying so (exit status 2)."""
    p = base_parser(description, data_folder_default)
    extra = [p.add_argument(flag, **kwargs).dest for flag, kwargs in options]
    a = p.parse_args(argv)
    setup_logging()
    try:
        return prepare(a.data_folder, a.save_folder, seed=a.seed, fractions=a.fraction, hours=a.hours, force=a.force,
                       **{name: getattr(a, name) for name in extra})
    except (PrepError, ManifestError, OutputFolderError) as err:
        p.exit(2, f"{p.prog}: error: {err}\n")


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def require_dir(path: os.PathLike, what: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise PrepError(f"{what}: folder not found: {path}")
    return path


def require_file(path: os.PathLike, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise PrepError(f"{what}: file not found: {path}")
    return path


def fingerprint(**kwargs) -> str:
    """Stable hash of the preparation's arguments (paths made absolute)."""
    norm = {k: (str(Path(v).resolve()) if isinstance(v, Path) else v) for k, v in sorted(kwargs.items())}
    return hashlib.sha1(json.dumps(norm, sort_keys=True, default=str).encode()).hexdigest()[:16]


def is_done(save_folder: os.PathLike, fp: str) -> bool:
    """True when `save_folder` holds a finished preparation with the same fingerprint."""
    try:
        return json.loads((Path(save_folder) / DONE_FILE).read_text()).get("fingerprint") == fp
    except (OSError, ValueError):
        return False


def fingerprint_if_needed(save_folder: os.PathLike, force: bool, **kwargs) -> Optional[str]:
    """The preparation's fingerprint (`fingerprint(**kwargs)`), or None when `save_folder` already holds a
    finished preparation with it and `force` is off (logged): the preparer then returns at once."""
    fp = fingerprint(**kwargs)
    if not force and is_done(save_folder, fp):
        log.info("%s: already prepared; skipping", save_folder)
        return None
    return fp


def mark_done(save_folder: os.PathLike, fp: str, **info) -> None:
    atomic_write_text(Path(save_folder) / DONE_FILE,
                      json.dumps(dict(fingerprint=fp, **info), indent=1, sort_keys=True, default=str) + "\n")


def group_split(groups: Iterable[str], ratios: Sequence[float], seed: int,
                names: Sequence[str] = ("train", "dev", "test")) -> Dict[str, str]:
    """Assign each distinct group (speaker, ...) to a split: seeded shuffle of the sorted groups,
    then cut by `ratios` (each split gets at least one group when there are enough)."""
    uniq = sorted(set(groups))
    rng = random.Random(seed)
    rng.shuffle(uniq)
    n = len(uniq)
    counts = [int(round(r * n)) for r in ratios]
    for i in range(len(counts)):  # at least one each when possible
        if counts[i] == 0 and n >= len(counts):
            counts[i] = 1
    counts[0] = n - sum(counts[1:])
    out: Dict[str, str] = {}
    start = 0
    for name, c in zip(names, counts):
        for g in uniq[start:start + c]:
            out[g] = name
        start += c
    return out


def finish(save_folder: os.PathLike, splits: Dict[str, List[Row]], *, fractions: Sequence[float] = DEFAULT_FRACTIONS,
           hours: Sequence[float] = (), seed: int = 0, stratify: Optional[str] = None,
           failures: Sequence[Failure] = (), validate: bool = True, train_split: str = "train",
           what: str = "") -> Dict[str, List[Row]]:
    """Validate every split's audio, write `{split}.csv`, the nested `train_frac{F}.csv` /
    `train_hours{H}.csv` subsets of the training split and `skipped.csv` (failures given by the
    preparer plus those found here). Returns the kept rows per split."""
    save_folder = check_writable(save_folder, f"{what or 'preparer'}: save_folder")
    all_fail: List[Failure] = list(failures)
    kept: Dict[str, List[Row]] = {}
    for name, rows in splits.items():
        if validate:
            good, bad = validate_entries(rows, desc=f"checking {name}")
            all_fail.extend(bad)
        else:
            good = list(rows)
        if not good:
            raise PrepError(f"{save_folder}: split '{name}' is empty after validation ({len(rows)} listed)")
        kept[name] = good
        write_manifest(save_folder / f"{name}.csv", good)
    if train_split in kept:
        train = kept[train_split]
        for f in fractions:
            if f < 1:
                write_manifest(save_folder / subset_name(fraction=f, split=train_split),
                               nested_subset(train, fraction=f, seed=seed, stratify=stratify))
        for h in hours:
            write_manifest(save_folder / subset_name(hours=h, split=train_split),
                           nested_subset(train, hours=h, seed=seed, stratify=stratify))
    report_failures(save_folder, all_fail, what=what or str(save_folder))
    log.info("%s: %s", save_folder, ", ".join(f"{k} {len(v)}" for k, v in kept.items()))
    return kept
