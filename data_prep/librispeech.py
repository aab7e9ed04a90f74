"""LibriSpeech (train-clean-100, dev-clean, test-clean) for ASR (words) and phoneme recognition.

    python data_prep/librispeech.py --data_folder /corpora/LibriSpeech --save_folder data/librispeech

Input, as published: `<data_folder>/<split>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac`
with one `<speaker>-<chapter>.trans.txt` per chapter (`<utt-id> WORDS IN CAPITALS`).
Output: train.csv (train-clean-100), dev.csv (dev-clean), test.csv (test-clean) with
ID,duration,wav,spk_id,sample_rate,channels,wrd,phn. `phn` is eSpeak NG's en-us IPA
(`rewire_lib.espeak.phonemize_tokens`: offline, stress removed, no word boundaries),
`--no_phonemes` leaves it out. A transcript line without audio, or audio without a
transcript line, is a counted skip in skipped.csv.
"""
from __future__ import annotations

from pathlib import Path

from data_prep.common import (run_preparer, finish, fingerprint, is_done, log, mark_done,
                              require_dir)

SPLITS = {"train": ("train-clean-100",), "dev": ("dev-clean",), "test": ("test-clean",)}


def read_split(folder: Path, failures: list) -> list:
    rows = []
    listed = set()
    for trans in sorted(folder.glob("*/*/*.trans.txt")):
        for n, line in enumerate(trans.read_text(encoding="utf-8").splitlines(), 1):
            line = line.strip()
            if not line:
                continue
            uid, _, words = line.partition(" ")
            audio = trans.parent / f"{uid}.flac"
            listed.add(audio)
            if not words.strip():
                failures.append((uid, f"{trans}:{n}", "transcript line has no words"))
                continue
            if not audio.exists():
                failures.append((uid, f"{trans}:{n}", f"transcript line has no audio file ({audio.name})"))
                continue
            rows.append(dict(ID=uid, wav=str(audio.resolve()), spk_id=uid.split("-")[0], wrd=words.strip()))
    for audio in sorted(folder.glob("*/*/*.flac")):
        if audio not in listed:
            failures.append((audio.stem, str(audio), "audio file has no transcript line"))
    return rows


def prepare(data_folder, save_folder, seed: int = 0, fractions=(0.1, 0.01), hours=(), phonemes: bool = True,
            splits=None, force: bool = False) -> dict:
    data_folder = require_dir(data_folder, "LibriSpeech")
    splits = splits or SPLITS
    save_folder = Path(save_folder)
    fp = fingerprint(corpus="librispeech", data_folder=data_folder.resolve(), seed=seed, fractions=list(fractions),
                     hours=list(hours), phonemes=phonemes, splits=splits)
    if not force and is_done(save_folder, fp):
        log.info("%s: already prepared; skipping", save_folder)
        return {}
    failures, out = [], {}
    for name, parts in splits.items():
        out[name] = []
        for part in parts:
            out[name] += read_split(require_dir(data_folder / part, f"LibriSpeech {name} split"), failures)
    if phonemes:
        from rewire_lib.espeak import phonemize_tokens

        cache = {}
        for rows in out.values():
            for r in rows:
                toks = []
                for w in r["wrd"].lower().split():
                    if w not in cache:
                        cache[w] = phonemize_tokens(w, word_boundary=False)
                    toks += cache[w]
                r["phn"] = " ".join(toks)
    kept = finish(save_folder, out, fractions=fractions, hours=hours, seed=seed, failures=failures, what="librispeech")
    mark_done(save_folder, fp)
    return kept


def main(argv=None) -> None:
    run_preparer(prepare, __doc__.splitlines()[0], argv,
                 options=[("--no_phonemes", dict(action="store_false", dest="phonemes"))])


if __name__ == "__main__":
    main()
