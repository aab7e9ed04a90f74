"""LibriSpeech for ASR (words), phoneme recognition and rewiring (read sentences with transcripts).

    python data_prep/librispeech.py --data_folder /corpora/LibriSpeech --save_folder data/librispeech
    python data_prep/librispeech.py --data_folder ../shared/data/librispeech_test_clean_short \
        --save_folder data/librispeech_short

Input, as published: `<data_folder>/<subset>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac`
with one `<speaker>-<chapter>.trans.txt` per chapter (`<utt-id> WORDS IN CAPITALS`); `data_folder`
may also be the folder that holds `LibriSpeech/` (as the download unpacks).
Output: train.csv, dev.csv and test.csv with ID,duration,wav,spk_id,sample_rate,channels,wrd,phn.
- With train-clean-100, dev-clean and test-clean present: one split each (SUPERB's protocol).
- With fewer subsets (the project's shipped test-clean short utterances, say): their utterances are
  split by speaker, 80/10/10 % of the speakers of each sex (SPEAKERS.TXT) to train/dev/test, so no
  speaker of dev or test is in train; the log and prepared.json say which speakers went where.
`phn` is eSpeak NG's en-us IPA (`rewire_lib.views.espeak.phonemize_tokens`: offline, stress removed, no
word boundaries), `--no_phonemes` leaves it out. A transcript line without audio, or audio without a
transcript line, is a counted skip in skipped.csv.
"""
from __future__ import annotations

from pathlib import Path

from data_prep.common import (fingerprint_if_needed, finish, group_split, log, mark_done, PrepError, require_dir,
                              run_preparer)

SPLITS = {"train": ("train-clean-100",), "dev": ("dev-clean",), "test": ("test-clean",)}
SUBSETS = ("train-clean-100", "train-clean-360", "train-other-500", "dev-clean", "dev-other", "test-clean",
           "test-other")
# Speakers of each sex to train/dev/test when the corpus has fewer subsets than SPLITS names.
SPEAKER_RATIOS = (0.8, 0.1, 0.1)


def corpus_root(data_folder: Path) -> Path:
    """The folder whose children are the subsets: `data_folder` or its `LibriSpeech/` (the download's layout)."""
    inner = data_folder / "LibriSpeech"
    if not any((data_folder / s).is_dir() for s in SUBSETS) and inner.is_dir():
        return inner
    return data_folder


def present_subsets(root: Path) -> list:
    found = [s for s in SUBSETS if (root / s).is_dir()]
    if not found:
        raise PrepError(f"LibriSpeech: no subset folder ({', '.join(SUBSETS)}) in {root}")
    return found


def speaker_sexes(root: Path) -> dict:
    """speaker id -> 'F'/'M' from SPEAKERS.TXT (`ID | SEX | SUBSET | MINUTES | NAME`); {} without it."""
    path = root / "SPEAKERS.TXT"
    if not path.is_file():
        return {}
    sexes = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        parts = [p.strip() for p in line.split("|")]
        if not line.startswith(";") and len(parts) >= 2 and parts[0].isdigit():
            sexes[parts[0]] = parts[1]
    return sexes


def split_by_speaker(rows: list, sexes: dict, seed: int) -> dict:
    """train/dev/test rows with disjoint speakers: SPEAKER_RATIOS of each sex's speakers (seeded), so that
    both sexes are in every split."""
    by_sex: dict = {}
    for spk in sorted({r["spk_id"] for r in rows}):
        by_sex.setdefault(sexes.get(spk, "?"), []).append(spk)
    where = {}
    for sex, speakers in sorted(by_sex.items()):
        where.update(group_split(speakers, SPEAKER_RATIOS, seed))
    out = {name: [r for r in rows if where[r["spk_id"]] == name] for name in ("train", "dev", "test")}
    for name, part in out.items():
        log.info("LibriSpeech speaker split: %s %d utterances, speakers %s", name, len(part),
                 " ".join(sorted({r["spk_id"] for r in part}, key=lambda s: (len(s), s))))
    return out


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
    data_folder = corpus_root(require_dir(data_folder, "LibriSpeech"))
    found = present_subsets(data_folder)
    by_speaker = splits is None and not all(p in found for parts in SPLITS.values() for p in parts)
    if by_speaker:
        splits = {"all": tuple(found)}
    splits = splits or SPLITS
    save_folder = Path(save_folder)
    fp = fingerprint_if_needed(save_folder, force, corpus="librispeech", data_folder=data_folder.resolve(), seed=seed,
                               fractions=list(fractions), hours=list(hours), phonemes=phonemes, splits=splits,
                               speaker_ratios=by_speaker and SPEAKER_RATIOS)
    if fp is None:
        return {}
    failures, out = [], {}
    for name, parts in splits.items():
        out[name] = []
        for part in parts:
            out[name] += read_split(require_dir(data_folder / part, f"LibriSpeech {name} split"), failures)
    if by_speaker:
        log.info("LibriSpeech: only %s in %s; splitting its speakers %s to train/dev/test", ", ".join(found),
                 data_folder, "/".join(f"{r:.0%}" for r in SPEAKER_RATIOS))
        out = split_by_speaker(out["all"], speaker_sexes(data_folder), seed)
    if phonemes:
        from rewire_lib.views.espeak import phonemize_tokens

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
    mark_done(save_folder, fp, subsets=found, speakers={k: sorted({r["spk_id"] for r in v}, key=lambda s: (len(s), s))
                                                        for k, v in kept.items()})
    return kept


def main(argv=None) -> None:
    run_preparer(prepare, __doc__.splitlines()[0], argv,
                 options=[("--no_phonemes", dict(action="store_false", dest="phonemes"))])


if __name__ == "__main__":
    main()
