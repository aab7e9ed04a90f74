"""Speech Commands v0.01 in the SUPERB 12-class keyword-spotting setting.

    python data_prep/speech_commands_v1.py --data_folder /corpora/speech_commands_v0.01 \
        --save_folder data/speech_commands_v1 [--test_folder /corpora/speech_commands_test_set_v0.01]

Input, as published: `<word>/<speaker>_nohash_<n>.wav` for 30 words, `_background_noise_/*.wav`,
`validation_list.txt` and `testing_list.txt` (paths relative to data_folder).
Classes: yes no up down left right on off stop go; every other word is `_unknown_`; `_silence_`
clips are one-second windows cut from `_background_noise_` (written to
`<save_folder>/silence/`, non-overlapping, assigned 80/10/10 to train/dev/test by a seeded shuffle).
Splits follow the lists: dev = validation_list, test = testing_list, train = the rest.
With `--test_folder` (the separately published test set with its own `_unknown_`/`_silence_`
folders, as SUPERB uses) test.csv comes from that folder instead.
Columns: ID,duration,wav,spk_id,sample_rate,channels,label,wrd.
"""
from __future__ import annotations

import random
from pathlib import Path

from data_prep.common import (fingerprint_if_needed, finish, mark_done, PrepError, require_dir, require_file,
                              run_preparer)

KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
SILENCE_RATIOS = (0.8, 0.1, 0.1)


def _row(path: Path, word: str, rel: str) -> dict:
    stem = path.name.split(".")[0]
    spk = stem.split("_nohash_")[0].split("_")[-1]
    label = word if word in KEYWORDS else "_unknown_"
    return dict(ID=f"{word}_{stem}", wav=str(path.resolve()), spk_id=spk, label=label, wrd=word, rel=rel)


def cut_silence(noise_dir: Path, out_dir: Path, seed: int, failures: list) -> dict:
    """One-second windows of the background-noise files, written as WAV, per split."""
    import numpy as np

    from rewire_lib.data.audio import AudioError, load_audio, write_audio

    clips = []
    for f in sorted(noise_dir.glob("*.wav")):
        try:
            wav = load_audio(f, 16000).numpy()
        except AudioError as exc:
            failures.append(("", str(f), exc.reason))
            continue
        for k in range(wav.size // 16000):
            path = out_dir / f"{f.stem}_{k:04d}.wav"
            if not path.exists():
                write_audio(path, wav[k * 16000:(k + 1) * 16000].astype(np.float32), 16000)
            clips.append(dict(ID=f"_silence__{f.stem}_{k:04d}", wav=str(path.resolve()), spk_id="none",
                              label="_silence_", wrd=""))
    order = list(range(len(clips)))
    random.Random(seed).shuffle(order)
    n = len(clips)
    n_dev, n_test = int(round(n * SILENCE_RATIOS[1])), int(round(n * SILENCE_RATIOS[2]))
    split = {}
    for rank, i in enumerate(order):
        split[i] = "dev" if rank < n_dev else "test" if rank < n_dev + n_test else "train"
    return {s: [c for i, c in enumerate(clips) if split[i] == s] for s in ("train", "dev", "test")}


def read_test_folder(folder: Path, failures: list) -> list:
    rows = []
    for d in sorted(p for p in folder.iterdir() if p.is_dir()):
        for f in sorted(d.glob("*.wav*")):
            if d.name in KEYWORDS:
                rows.append(_row(f, d.name, ""))
            elif d.name == "_unknown_":
                r = _row(f, f.name.split("_")[0], "")
                r["label"] = "_unknown_"
                rows.append(r)
            elif d.name == "_silence_":
                rows.append(dict(ID=f"_silence__test_{f.name.split('.')[0]}", wav=str(f.resolve()), spk_id="none",
                                 label="_silence_", wrd=""))
            else:
                failures.append(("", str(f), f"unknown label: folder {d.name!r}"))
    return rows


def prepare(data_folder, save_folder, seed: int = 0, fractions=(0.1, 0.01), hours=(), test_folder=None,
            force: bool = False) -> dict:
    data_folder = require_dir(data_folder, "Speech Commands v1")
    save_folder = Path(save_folder)
    fp = fingerprint_if_needed(save_folder, force, corpus="speech_commands_v1", data_folder=data_folder.resolve(),
                               seed=seed, fractions=list(fractions), hours=list(hours),
                               test_folder=str(Path(test_folder).resolve()) if test_folder else None)
    if fp is None:
        return {}
    lists = {}
    for name, fname in (("dev", "validation_list.txt"), ("test", "testing_list.txt")):
        lists[name] = {l.strip() for l in require_file(data_folder / fname, "Speech Commands list").read_text().splitlines() if l.strip()}
    noise_dir = require_dir(data_folder / "_background_noise_", "Speech Commands background noise")
    failures = []
    splits = {"train": [], "dev": [], "test": []}
    words = sorted(p.name for p in data_folder.iterdir() if p.is_dir() and not p.name.startswith("_"))
    if not words:
        raise PrepError(f"Speech Commands v1 {data_folder}: no word folders")
    found = set()
    for word in words:
        for f in sorted((data_folder / word).glob("*.wav")):
            rel = f"{word}/{f.name}"
            found.add(rel)
            split = "dev" if rel in lists["dev"] else "test" if rel in lists["test"] else "train"
            splits[split].append(_row(f, word, rel))
    for name, listed in lists.items():
        for rel in sorted(listed - found):
            failures.append(("", str(data_folder / rel), f"listed in {name} list but no audio file"))
    sil = cut_silence(noise_dir, save_folder / "silence", seed, failures)
    for s in splits:
        splits[s] += sil[s]
    if test_folder:
        splits["test"] = read_test_folder(require_dir(test_folder, "Speech Commands test folder"), failures)
    for rows in splits.values():
        for r in rows:
            r.pop("rel", None)
    kept = finish(save_folder, splits, fractions=fractions, hours=hours, seed=seed, stratify="label", failures=failures,
                  what="speech commands v1")
    mark_done(save_folder, fp)
    return kept


def main(argv=None) -> None:
    run_preparer(prepare, __doc__.splitlines()[0], argv, options=[("--test_folder", dict(default=None))])


if __name__ == "__main__":
    main()
