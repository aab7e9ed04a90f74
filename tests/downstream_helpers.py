"""Tiny manifests for the downstream recipe tests, made from a few FSDD recordings: every task's
columns (label, wrd, phn, action/object/location) derived from the spoken digit."""
from __future__ import annotations

import csv
import importlib.util
from functools import lru_cache
from pathlib import Path

import soundfile as sf

from rewire_lib.paths import REPO_ROOT, shared_data_dir

FSDD = shared_data_dir() / "fsdd" / "recordings"
WORDS = {0: "ZERO", 1: "ONE", 2: "TWO"}
PHONES = {0: "z ih r ow", 1: "w ah n", 2: "t uw"}
SLOTS = {0: ("activate", "lights", "kitchen"), 1: ("deactivate", "lights", "kitchen"), 2: ("activate", "music", "bedroom")}
SPLITS = {"train": range(0, 4), "dev": range(10, 12), "test": range(20, 22)}


def _rows(takes, speakers=("jackson", "nicolas")):
    rows = []
    for d in WORDS:
        for spk in speakers:
            for t in takes:
                path = FSDD / f"{d}_{spk}_{t}.wav"
                info = sf.info(str(path))
                action, obj, loc = SLOTS[d]
                rows.append(dict(ID=path.stem, duration=f"{info.duration:.4f}", wav=str(path), spk_id=spk,
                                 label=str(d), wrd=WORDS[d], phn=PHONES[d], action=action, object=obj,
                                 location=loc))
    return rows


def write_csv(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def make_tiny_corpus(folder: Path) -> Path:
    """folder/{train,dev,test}.csv: 3 digits x 2 speakers; 24 / 12 / 12 utterances."""
    for split, takes in SPLITS.items():
        write_csv(folder / f"{split}.csv", _rows(takes))
    return folder


@lru_cache(maxsize=None)
def recipe_module(task: str):
    """recipes/<task>/train.py as a module (a recipe folder is not a package)."""
    spec = importlib.util.spec_from_file_location(f"downstream_recipe_{task}", REPO_ROOT / "recipes" / task / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_task(task: str, argv: list) -> dict:
    """What the study and a user's command do: `recipes/<task>/train.py`'s main(argv); result.json's dict."""
    return recipe_module(task).main(list(argv))
