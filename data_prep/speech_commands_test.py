"""Speech Commands v0.02 test set (real speech, 12 classes), split speaker-disjointly for training.

    python data_prep/speech_commands_test.py [--data_folder ../shared/data/speech_commands_v0.02_test] \
        --save_folder data/speech_commands [--seed 0]

Input: one folder per class (yes no up down left right on off stop go `_unknown_` `_silence_`);
word folders hold `<speaker>_nohash_<n>.wav`, `_unknown_` holds `<word>_<speaker>_nohash_<n>.wav.wav`
(doubled extension, as distributed), `_silence_` holds `<n>.wav` background noise.
Split (seeded, speaker-disjoint): the sorted speaker hashes are shuffled with the seed and cut
70 / 15 / 15 % into train / dev / test; `_silence_` clips have no speaker and are cut 70 / 15 / 15
by a seeded shuffle of their names. Columns: ID,duration,wav,spk_id,sample_rate,channels,label,wrd
(`wrd` is the word actually spoken, e.g. "backward" for an `_unknown_` clip, "" for silence).
"""
from __future__ import annotations

import re
from pathlib import Path

from data_prep.common import (fingerprint_if_needed, finish, group_split, mark_done, PrepError, require_dir,
                              run_preparer)
from rewire_lib.files.paths import shared_data_dir

KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
CLASSES = KEYWORDS + ("_unknown_", "_silence_")
RATIOS = (0.70, 0.15, 0.15)
WORD_FILE = re.compile(r"^([0-9a-f]{8})_nohash_(\d+)\.wav$")
UNKNOWN_FILE = re.compile(r"^([a-z]+)_([0-9a-f]{8})_nohash_(\d+)\.wav(\.wav)?$")


def _audio_files(folder: Path):
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(".wav"))


def prepare(data_folder, save_folder, seed: int = 0, fractions=(0.1, 0.01), hours=(), force: bool = False) -> dict:
    data_folder = require_dir(data_folder, "Speech Commands test set")
    save_folder = Path(save_folder)
    fp = fingerprint_if_needed(save_folder, force, corpus="speech_commands_test", data_folder=data_folder.resolve(),
                               seed=seed, fractions=list(fractions), hours=list(hours))
    if fp is None:
        return {}
    missing = [c for c in CLASSES if not (data_folder / c).is_dir()]
    if missing:
        raise PrepError(f"Speech Commands test set {data_folder}: class folder(s) missing: {missing}")
    failures = []
    for extra in sorted(p.name for p in data_folder.iterdir() if p.is_dir() and p.name not in CLASSES):
        failures.append(("", str(data_folder / extra), "unknown label (folder is not one of the 12 classes)"))
    rows, silence = [], []
    for label in CLASSES:
        for path in _audio_files(data_folder / label):
            if label == "_silence_":
                silence.append(dict(ID=f"_silence__{path.name.split('.')[0]}", wav=str(path.resolve()),
                                    spk_id="none", label=label, wrd=""))
                continue
            m = (UNKNOWN_FILE if label == "_unknown_" else WORD_FILE).match(path.name)
            if not m:
                failures.append(("", str(path), f"file name does not follow the {label} pattern"))
                continue
            if label == "_unknown_":
                word, spk, n = m.group(1), m.group(2), m.group(3)
                if word in KEYWORDS:
                    failures.append(("", str(path), f"unknown label: target word {word!r} in _unknown_"))
                    continue
            else:
                word, spk, n = label, m.group(1), m.group(2)
            rows.append(dict(ID=f"{label}_{word}_{spk}_{n}", wav=str(path.resolve()), spk_id=spk, label=label, wrd=word))
    if not rows:
        raise PrepError(f"Speech Commands test set {data_folder}: no clips found")
    spk_split = group_split([r["spk_id"] for r in rows], RATIOS, seed)
    sil_split = group_split([r["ID"] for r in silence], RATIOS, seed)
    splits = {s: [r for r in rows if spk_split[r["spk_id"]] == s] + [r for r in silence if sil_split[r["ID"]] == s]
              for s in ("train", "dev", "test")}
    out = finish(save_folder, splits, fractions=fractions, hours=hours, seed=seed, stratify="label",
                 failures=failures, what="speech commands v0.02 test set")
    mark_done(save_folder, fp, speakers={s: len({r["spk_id"] for r in v if r["spk_id"] != "none"}) for s, v in out.items()})
    return out


def main(argv=None) -> None:
    run_preparer(prepare, __doc__.splitlines()[0], argv,
                 data_folder_default=str(shared_data_dir() / "speech_commands_v0.02_test"))


if __name__ == "__main__":
    main()
