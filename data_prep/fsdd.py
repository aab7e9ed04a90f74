"""Free Spoken Digit Dataset (real speech, 8 kHz): digit classification and speaker identification.

    python data_prep/fsdd.py [--data_folder ../shared/data/fsdd] --save_folder data/fsdd [--seed 0]

Reads `<data_folder>/recordings/{digit}_{speaker}_{take}.wav` (6 speakers x 10 digits x 50 takes).
Writes, with columns ID,duration,wav,spk_id,sample_rate,channels,label,wrd,take:
- `digits/{train,dev,test}.csv`: label = digit word ("seven"), speaker-disjoint: of the sorted
  speakers shuffled with the seed, 4 train, 1 dev, 1 test (the chosen speakers are logged and
  recorded in prepared.json).
- `speakers/{train,dev,test}.csv`: label = speaker name, take-disjoint, following the dataset's
  own convention: takes 0-4 test, 5-9 dev, 10-49 train (all speakers and digits in each split).
The audio stays 8 kHz: `sample_rate` says so and `load_audio` resamples to 16 kHz.
"""
from __future__ import annotations

import re
from pathlib import Path

from data_prep.common import (fingerprint_if_needed, finish, group_split, log, mark_done, PrepError, require_dir,
                              run_preparer)
from rewire_lib.files.paths import shared_data_dir

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
NAME = re.compile(r"^(\d+)_([A-Za-z]+)_(\d+)\.wav$")


def speaker_take_split(take: int) -> str:
    return "test" if take < 5 else "dev" if take < 10 else "train"


def prepare(data_folder, save_folder, seed: int = 0, fractions=(0.1, 0.01), hours=(), force: bool = False) -> dict:
    data_folder = require_dir(data_folder, "FSDD")
    rec = require_dir(data_folder / "recordings", "FSDD recordings (expected <data_folder>/recordings)")
    save_folder = Path(save_folder)
    fp = fingerprint_if_needed(save_folder, force, corpus="fsdd", data_folder=data_folder.resolve(), seed=seed,
                               fractions=list(fractions), hours=list(hours))
    if fp is None:
        return {}
    rows, failures = [], []
    for path in sorted(rec.iterdir()):
        if path.name.startswith(".") or path.is_dir():
            continue
        m = NAME.match(path.name)
        if not m:
            failures.append(("", str(path), "file name is not {digit}_{speaker}_{take}.wav"))
            continue
        digit, spk, take = int(m.group(1)), m.group(2), int(m.group(3))
        if digit > 9:
            failures.append(("", str(path), f"unknown label: digit {digit}"))
            continue
        rows.append(dict(ID=path.stem, wav=str(path.resolve()), spk_id=spk, label=DIGITS[digit], wrd=DIGITS[digit], take=take))
    if not rows:
        raise PrepError(f"FSDD: no recordings named like 7_jackson_32.wav under {rec}")
    split_of = group_split([r["spk_id"] for r in rows], (4 / 6, 1 / 6, 1 / 6), seed)
    log.info("FSDD digits speaker split: %s", {s: sorted(k for k, v in split_of.items() if v == s) for s in ("train", "dev", "test")})
    digits = {s: [r for r in rows if split_of[r["spk_id"]] == s] for s in ("train", "dev", "test")}
    out = {"digits": finish(save_folder / "digits", digits, fractions=fractions, hours=hours, seed=seed,
                            stratify="label", failures=failures, what="fsdd digits")}
    # speaker identification reuses the validated rows (no second header pass)
    valid = [r for split in out["digits"].values() for r in split]
    speakers = {s: [] for s in ("train", "dev", "test")}
    for r in sorted(valid, key=lambda r: r["ID"]):
        speakers[speaker_take_split(int(r["take"]))].append(dict(r, label=r["spk_id"]))
    out["speakers"] = finish(save_folder / "speakers", speakers, fractions=fractions, hours=hours, seed=seed,
                             stratify="label", failures=failures, validate=False, what="fsdd speakers")
    mark_done(save_folder, fp, digit_speaker_split=split_of)
    return out


def main(argv=None) -> None:
    run_preparer(prepare, __doc__.splitlines()[0], argv, data_folder_default=str(shared_data_dir() / "fsdd"))


if __name__ == "__main__":
    main()
