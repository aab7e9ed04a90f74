"""Tiny manifests for the downstream recipe tests, made from a few FSDD recordings: every task's
columns (label, wrd, phn, action/object/location) derived from the spoken digit."""
from __future__ import annotations

import csv
from pathlib import Path

import soundfile as sf

from rewire_lib.files.paths import REPO_ROOT, shared_data_dir
from rewire_study.recipes import load_recipe_module

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


def recipe_module(task: str):
    """recipes/<task>/train.py as a module (a recipe folder is not a package): the study's own loader."""
    return load_recipe_module(task)


def run_task(task: str, argv: list, feature_caches=None) -> dict:
    """What the study and a user's command do: `recipes/<task>/train.py`'s main(argv); result.json's dict.
    feature_caches: a FeatureCachePool the run shares with other runs (as a study group's do)."""
    return recipe_module(task).main(list(argv), feature_caches=feature_caches)


def assert_loads_without_code(save_dir) -> list:
    """Every torch file of a run's checkpoints loads with weights_only=True (tensors, numbers, strings, lists and
    dicts only: resuming never runs code from a checkpoint); returns their names. SpeechBrain's own text files
    (counter, data-loader position) are not torch files and are left out."""
    import torch

    names = []
    for path in sorted(Path(save_dir).glob("CKPT*/*.ckpt")):
        if path.read_bytes()[:2] == b"PK":  # torch.save's zip format
            torch.load(path, weights_only=True)
            names.append(path.name)
    assert names, f"no torch checkpoint files under {save_dir}"
    return names


# ---------------------------------------------------------------------- a set a head can learn in seconds
TONES = {"a": 300.0, "b": 900.0, "c": 2200.0}  # one pure tone per class / per "phoneme"
SR = 16000


def _tone(freq: float, seconds: float, rng) -> "np.ndarray":
    import numpy as np

    t = np.arange(int(SR * seconds)) / SR
    return (0.3 * np.sin(2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi)) + 0.01 * rng.standard_normal(t.size)
            ).astype(np.float32)


def make_tone_corpus(folder: Path, per_split: dict = None, seed: int = 0) -> Path:
    """Audio a head can learn in seconds, in two views with train/dev/test.csv each:
    folder/cls/: one 0.4 s tone per clip; `label` is the tone, `action`/`object`/`location` derive from it;
    folder/seq/: 2-3 tones of 0.2 s with 0.1 s silences; `phn` names them in order, `wrd` spells them as
    one word (a letter per tone)."""
    import numpy as np

    per_split = per_split or {"train": 30, "dev": 6, "test": 12}
    rng = np.random.default_rng(seed)
    names = list(TONES)
    gap = np.zeros(int(0.1 * SR), dtype=np.float32)
    for split, n in per_split.items():
        cls_rows, seq_rows = [], []
        for i in range(n):
            label = names[i % len(names)]
            seq = [names[int(k)] for k in rng.integers(0, len(names), size=2 + i % 2)]
            clips = {"cls": _tone(TONES[label], 0.4, rng),
                     "seq": np.concatenate([x for p in seq for x in (_tone(TONES[p], 0.2, rng), gap)])}
            for view, audio in clips.items():
                path = folder / view / "wav" / f"{split}_{i}.wav"
                path.parent.mkdir(parents=True, exist_ok=True)
                sf.write(str(path), audio, SR)
                row = dict(ID=f"{split}_{i}", duration=f"{audio.size / SR:.4f}", wav=str(path))
                if view == "cls":
                    cls_rows.append(dict(row, label=label, action=f"act_{label}", object=f"obj_{label}",
                                         location=f"loc_{label}"))
                else:
                    seq_rows.append(dict(row, phn=" ".join(seq), wrd="".join(p.upper() for p in seq)))
        write_csv(folder / "cls" / f"{split}.csv", cls_rows)
        write_csv(folder / "seq" / f"{split}.csv", seq_rows)
    return folder
