"""VoxCeleb1 speaker identification (1,251 speakers, the official `iden_split.txt`).

    python data_prep/voxceleb1.py --data_folder /corpora/VoxCeleb1 --save_folder data/voxceleb1 \
        [--split_file /corpora/VoxCeleb1/iden_split.txt]

Input, as published: `<data_folder>/wav/<speaker>/<video>/<n>.wav` and `iden_split.txt` lines
`<1|2|3> <speaker>/<video>/<n>.wav` (1 train, 2 dev, 3 test), found in data_folder unless given.
Output: train.csv, dev.csv, test.csv with ID,duration,wav,spk_id,sample_rate,channels,label
(label = speaker id). Lines with another split number, or without audio, are counted skips.
"""
from __future__ import annotations

from pathlib import Path

from data_prep.common import (fingerprint_if_needed, finish, mark_done, PrepError, require_dir, require_file,
                              run_preparer)

SPLIT_IDS = {"1": "train", "2": "dev", "3": "test"}


def prepare(data_folder, save_folder, seed: int = 0, fractions=(0.1, 0.01), hours=(), split_file=None,
            force: bool = False) -> dict:
    data_folder = require_dir(data_folder, "VoxCeleb1")
    wav_dir = require_dir(data_folder / "wav", "VoxCeleb1 audio (expected <data_folder>/wav)")
    split_file = require_file(split_file or data_folder / "iden_split.txt", "VoxCeleb1 identification split")
    save_folder = Path(save_folder)
    fp = fingerprint_if_needed(save_folder, force, corpus="voxceleb1", data_folder=data_folder.resolve(),
                               split_file=str(Path(split_file).resolve()), seed=seed, fractions=list(fractions),
                               hours=list(hours))
    if fp is None:
        return {}
    failures, splits = [], {"train": [], "dev": [], "test": []}
    for n, line in enumerate(split_file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or parts[0] not in SPLIT_IDS:
            failures.append(("", f"{split_file}:{n}", f"expected '<1|2|3> <spk>/<video>/<n>.wav', got {line!r}"))
            continue
        rel = parts[1]
        spk = rel.split("/")[0]
        splits[SPLIT_IDS[parts[0]]].append(dict(ID=rel.rsplit(".", 1)[0].replace("/", "_"), wav=str((wav_dir / rel).resolve()),
                                                spk_id=spk, label=spk))
    if not any(splits.values()):
        raise PrepError(f"{split_file}: no entries")
    kept = finish(save_folder, splits, fractions=fractions, hours=hours, seed=seed, stratify="label", failures=failures,
                  what="voxceleb1")
    mark_done(save_folder, fp)
    return kept


def main(argv=None) -> None:
    run_preparer(prepare, __doc__.splitlines()[0], argv, options=[("--split_file", dict(default=None))])


if __name__ == "__main__":
    main()
