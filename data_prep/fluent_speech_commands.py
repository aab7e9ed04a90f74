"""Fluent Speech Commands: intent classification with (action, object, location) slots.

    python data_prep/fluent_speech_commands.py --data_folder /corpora/fluent_speech_commands_dataset \
        --save_folder data/fsc

Input, as published: `<data_folder>/data/{train,valid,test}_data.csv` with columns
`,path,speakerId,transcription,action,object,location` and audio at
`<data_folder>/wavs/speakers/<speakerId>/<uuid>.wav` (the `path` column).
Output: train.csv, dev.csv (valid_data.csv), test.csv with
ID,duration,wav,spk_id,sample_rate,channels,action,object,location,wrd,intent (intent =
"action_object_location"). A row with an empty slot, or a dev/test intent never seen in training
(unknown label), or missing audio is a counted skip.
"""
from __future__ import annotations

import csv
from pathlib import Path

from data_prep.common import (fingerprint_if_needed, finish, mark_done, PrepError, require_dir, require_file,
                              run_preparer)

FILES = {"train": "train_data.csv", "dev": "valid_data.csv", "test": "test_data.csv"}
COLUMNS = ("path", "speakerId", "transcription", "action", "object", "location")


def read_list(data_folder: Path, csv_path: Path, failures: list) -> list:
    rows = []
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise PrepError(f"{csv_path}: line 1: missing column(s) {missing}")
        for row in reader:
            where = f"{csv_path}:{reader.line_num}"
            slots = [row[c].strip() for c in ("action", "object", "location")]
            if not all(slots):
                failures.append(("", where, "empty intent slot"))
                continue
            wav = data_folder / row["path"]
            uid = f"{row['speakerId']}_{Path(row['path']).stem}"
            rows.append(dict(ID=uid, wav=str(wav.resolve()), spk_id=row["speakerId"], action=slots[0], object=slots[1],
                             location=slots[2], wrd=row["transcription"].strip(), intent="_".join(slots), where=where))
    return rows


def prepare(data_folder, save_folder, seed: int = 0, fractions=(0.1, 0.01), hours=(), force: bool = False) -> dict:
    data_folder = require_dir(data_folder, "Fluent Speech Commands")
    save_folder = Path(save_folder)
    fp = fingerprint_if_needed(save_folder, force, corpus="fsc", data_folder=data_folder.resolve(), seed=seed,
                               fractions=list(fractions), hours=list(hours))
    if fp is None:
        return {}
    failures, splits = [], {}
    for name, fname in FILES.items():
        splits[name] = read_list(data_folder, require_file(data_folder / "data" / fname, "FSC list"), failures)
    known = {r["intent"] for r in splits["train"]}
    for name in ("dev", "test"):
        keep = []
        for r in splits[name]:
            if r["intent"] in known:
                keep.append(r)
            else:
                failures.append((r["ID"], r["where"], f"unknown label: intent {r['intent']!r} not in training data"))
        splits[name] = keep
    for rows in splits.values():
        for r in rows:
            r.pop("where")
    kept = finish(save_folder, splits, fractions=fractions, hours=hours, seed=seed, stratify="intent", failures=failures,
                  what="fluent speech commands")
    mark_done(save_folder, fp)
    return kept


def main(argv=None) -> None:
    run_preparer(prepare, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    main()
