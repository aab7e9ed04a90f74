"""Connected digits from FSDD (real speech): strings of 2-5 digits spoken by one speaker, for ASR and PR.

    python data_prep/fsdd_connected.py [--data_folder ../shared/data/fsdd] --save_folder data/fsdd/connected \
        [--per_speaker 250] [--dev_utterances 150] [--digits 2 5] [--gap 0.05 0.25] [--seed 0]

Each utterance is cut and joined from ONE speaker's isolated-digit recordings
(`<data_folder>/recordings/{digit}_{speaker}_{take}.wav`, 8 kHz): every recording is trimmed of
leading and trailing silence (10 ms frames below -30 dB of its loudest frame; 10 ms kept on each
side, 5 ms fades at the cuts) and the digits are joined with short silent gaps drawn from `--gap`
(seconds), with a gap's length of silence also before the first and after the last digit.
Every speaker gets a pool of `--per_speaker` utterances; all choices (digits, takes, gaps) come from
(seed, speaker, utterance number): the same arguments give the same bytes.

Splits are speaker-disjoint, and every speaker is the test speaker of one fold:
- `{train,dev,test}.csv`: `fsdd.py`'s speaker split for the seed (4 train speakers, their whole pools;
  dev: the first `--dev_utterances` of the dev speaker's pool; test: the test speaker's whole pool).
- `folds/fold{k}/{train,dev,test}.csv`, k = 1..6 (leave one speaker out): fold k tests speaker k of
  a fixed rotation, develops on the next one and trains on the other four; fold1 is the split above.
  Six speakers, six accents (speakers.csv): one test speaker says little about the others, so the
  study's CTC tasks run every fold (`recipes/asr/train.py ... --folds_dir <save_folder>/folds` does too).

Writes `<save_folder>/wav/<speaker>/<ID>.wav` (8 kHz mono 16-bit; recipes resample) and manifests with
ID,duration,wav,spk_id,sample_rate,channels,wrd,phn,sources,source_wavs:
`wrd` = the digit words ("three one four"), `phn` = their phonemes from a fixed ARPAbet lexicon
(`LEXICON`, no stress, no word-boundary token), `sources` = the recordings used, in order (their stems),
`source_wavs` = the same recordings' paths, absolute like `wav`, joined by `|` (what
rewire_lib.data.leakage reads: a stem alone does not say which folder it came from). Plus
nested `train_frac{F}.csv`, skipped.csv and prepared.json (with the folds' speakers), as every preparer.
"""
from __future__ import annotations

import random
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

from data_prep.common import (fingerprint_if_needed, finish, group_split, log, mark_done, PrepError, require_dir,
                              run_preparer, validate_entries)
from data_prep.fsdd import DIGITS, NAME
from rewire_lib.data.audio import AudioError, load_audio, write_audio
from rewire_lib.data.leakage import SOURCE_SEP
from rewire_lib.files.paths import shared_data_dir

VERSION = 3  # bump when the generator changes (part of the fingerprint); 2: per-speaker pools and folds;
# 3: the `source_wavs` column (the leakage audit resolves an utterance's recordings from it)
SR = 8000
SPLITS = ("train", "dev", "test")
SPEAKER_RATIOS = (4 / 6, 1 / 6, 1 / 6)  # as data_prep/fsdd.py
LEXICON = {  # ARPAbet (CMUdict pronunciations, stress removed)
    "zero": "Z IH R OW", "one": "W AH N", "two": "T UW", "three": "TH R IY", "four": "F AO R",
    "five": "F AY V", "six": "S IH K S", "seven": "S EH V AH N", "eight": "EY T", "nine": "N AY N",
}
PER_SPEAKER = 250  # utterances in each speaker's pool (4 training speakers: 1000 training utterances)
DEV_UTTERANCES = 150  # of the dev speaker's pool: dev is evaluated many times a run, test once
FRAME = SR // 100  # 10 ms
TRIM_DB = -30.0
FADE = SR // 200  # 5 ms


def trim_silence(x: np.ndarray) -> np.ndarray:
    """`x` without leading/trailing frames quieter than TRIM_DB below its loudest 10 ms frame
    (one frame of margin kept), with short fades at both ends so the joins do not click."""
    n = len(x) // FRAME
    if n == 0:
        return x
    rms = np.sqrt((x[:n * FRAME].reshape(n, FRAME) ** 2).mean(axis=1) + 1e-12)
    loud = np.flatnonzero(rms >= rms.max() * 10 ** (TRIM_DB / 20))
    start, end = max(0, (loud[0] - 1) * FRAME), min(len(x), (loud[-1] + 2) * FRAME)
    y = x[start:end].astype(np.float32).copy()
    fade = min(FADE, len(y) // 2)
    if fade:
        ramp = np.linspace(0.0, 1.0, fade, dtype=np.float32)
        y[:fade] *= ramp
        y[-fade:] *= ramp[::-1]
    return y


def index_recordings(rec: Path, failures: list) -> Dict[str, Dict[int, List[Path]]]:
    """{speaker: {digit: [recordings sorted by take]}}; names that do not parse are failures."""
    index: Dict[str, Dict[int, List[Path]]] = {}
    for path in sorted(rec.iterdir()):
        if path.name.startswith(".") or path.is_dir():
            continue
        m = NAME.match(path.name)
        if not m or int(m.group(1)) > 9:
            failures.append(("", str(path), "file name is not {digit}_{speaker}_{take}.wav with a digit 0-9"))
            continue
        index.setdefault(m.group(2), {}).setdefault(int(m.group(1)), []).append(path)
    for digits in index.values():
        for takes in digits.values():
            takes.sort(key=lambda p: int(NAME.match(p.name).group(3)))
    return index


@lru_cache(maxsize=None)
def _trimmed(path: Path) -> np.ndarray:
    return trim_silence(load_audio(path, target_sr=SR).numpy())


def make_utterance(rng: random.Random, speaker: str, recordings: Dict[int, List[Path]], n_digits: Sequence[int],
                   gap: Sequence[float]):
    """(samples, digit list, recordings used) of one connected-digit utterance of `speaker`."""
    digits = [d for d in range(10) if recordings.get(d)]
    chosen = [rng.choice(digits) for _ in range(rng.randint(n_digits[0], n_digits[1]))]
    used, parts = [], []
    for d in chosen:
        path = rng.choice(recordings[d])
        parts.append(np.zeros(int(round(rng.uniform(*gap) * SR)), np.float32))
        parts.append(_trimmed(path))
        used.append(path)
    parts.append(np.zeros(int(round(rng.uniform(*gap) * SR)), np.float32))
    return np.concatenate(parts), chosen, used


def scaled_counts(scale: float) -> dict:
    """prepare()'s pool sizes at `scale` (prepare_all's --scale): at least 2 each."""
    return {"per_speaker": max(2, int(round(PER_SPEAKER * scale))),
            "dev_utterances": max(2, int(round(DEV_UTTERANCES * scale)))}


def fold_rotation(split_of: Dict[str, str]) -> List[str]:
    """The speakers in fold order: fold k tests rotation[k-1] and develops on rotation[k % n]. It starts with
    the default split's test then dev speaker (so fold1 is that split), then its training speakers."""
    by = {s: sorted(k for k, v in split_of.items() if v == s) for s in SPLITS}
    return by["test"] + by["dev"] + by["train"]


def fold_plan(rotation: Sequence[str], k: int) -> Dict[str, List[str]]:
    """{split: speakers} of fold k (1-based)."""
    n = len(rotation)
    test, dev = rotation[k - 1], rotation[k % n]
    return {"train": sorted(s for s in rotation if s not in (test, dev)), "dev": [dev], "test": [test]}


def speaker_pool(save_folder: Path, seed: int, speaker: str, recordings: Dict[int, List[Path]], count: int,
                 digits: Sequence[int], gap: Sequence[float], failures: list) -> List[dict]:
    """`count` connected-digit utterances of one speaker (wavs written), from (seed, speaker, number) alone."""
    rows = []
    for i in range(count):
        rng = random.Random(f"{seed}:{speaker}:{i}")  # str seeds hash the same in every process
        try:
            wav, chosen, used = make_utterance(rng, speaker, recordings, digits, gap)
        except AudioError as err:
            failures.append(("", err.path, err.reason))
            continue
        words = [DIGITS[d] for d in chosen]
        uid = f"{speaker}_{i:04d}_{''.join(map(str, chosen))}"
        path = save_folder / "wav" / speaker / f"{uid}.wav"
        write_audio(path, wav, SR)
        rows.append(dict(ID=uid, wav=str(path.resolve()), spk_id=speaker, wrd=" ".join(words),
                         phn=" ".join(LEXICON[w] for w in words), sources=" ".join(p.stem for p in used),
                         source_wavs=SOURCE_SEP.join(str(p.resolve()) for p in used)))
    return rows


def split_rows(pools: Dict[str, List[dict]], plan: Dict[str, List[str]], dev_utterances: int) -> Dict[str, List[dict]]:
    """A fold's manifests: the training speakers' whole pools, the first `dev_utterances` of the dev
    speaker's, the test speaker's whole pool."""
    return {"train": [r for s in plan["train"] for r in pools[s]],
            "dev": [r for s in plan["dev"] for r in pools[s]][:dev_utterances],
            "test": [r for s in plan["test"] for r in pools[s]]}


def prepare(data_folder, save_folder, seed: int = 0, fractions=(0.1, 0.01), hours=(), force: bool = False,
            per_speaker: int = PER_SPEAKER, dev_utterances: int = DEV_UTTERANCES, digits: Sequence[int] = (2, 5),
            gap: Sequence[float] = (0.05, 0.25)) -> dict:
    data_folder = require_dir(data_folder, "FSDD")
    rec = require_dir(data_folder / "recordings", "FSDD recordings (expected <data_folder>/recordings)")
    save_folder = Path(save_folder)
    if per_speaker < 1 or dev_utterances < 1:
        raise PrepError(f"--per_speaker and --dev_utterances: >= 1 expected, got {per_speaker} and {dev_utterances}")
    if not 1 <= digits[0] <= digits[1]:
        raise PrepError(f"--digits: MIN MAX with 1 <= MIN <= MAX expected, got {list(digits)}")
    if not 0 <= gap[0] <= gap[1]:
        raise PrepError(f"--gap: MIN MAX seconds with 0 <= MIN <= MAX expected, got {list(gap)}")
    fp = fingerprint_if_needed(save_folder, force, corpus="fsdd_connected", version=VERSION,
                               data_folder=data_folder.resolve(), seed=seed, fractions=list(fractions),
                               hours=list(hours), per_speaker=per_speaker, dev_utterances=dev_utterances,
                               digits=list(digits), gap=list(gap))
    if fp is None:
        return {}
    failures: list = []
    index = index_recordings(rec, failures)
    if len(index) < 3:
        raise PrepError(f"FSDD {rec}: {len(index)} speaker(s) found; speaker-disjoint splits need at least 3")
    rotation = fold_rotation(group_split(sorted(index), SPEAKER_RATIOS, seed))
    pools = {s: speaker_pool(save_folder, seed, s, index[s], per_speaker, digits, gap, failures) for s in rotation}
    _trimmed.cache_clear()
    good, bad = validate_entries([r for s in rotation for r in pools[s]], desc="checking connected digits")
    failures += bad  # once for every fold: each fold is a re-cut of the same pools
    valid = {r["ID"]: r for r in good}  # validation adds duration, sample_rate, channels
    pools = {s: [valid[r["ID"]] for r in rows if r["ID"] in valid] for s, rows in pools.items()}
    folds = {f"fold{k}": fold_plan(rotation, k) for k in range(1, len(rotation) + 1)}
    log.info("FSDD connected digits, speaker folds (fold1 is the default split): %s", folds)
    kept = finish(save_folder, split_rows(pools, folds["fold1"], dev_utterances), fractions=fractions, hours=hours,
                  seed=seed, failures=failures, validate=False, what="fsdd connected digits")
    for name, plan in folds.items():
        finish(save_folder / "folds" / name, split_rows(pools, plan, dev_utterances), fractions=fractions,
               hours=hours, seed=seed, validate=False, what=f"fsdd connected digits {name}")
    mark_done(save_folder, fp, speaker_split=folds["fold1"], folds=folds, lexicon=LEXICON)
    return kept


def main(argv=None) -> None:
    run_preparer(prepare, __doc__.splitlines()[0], argv, data_folder_default=str(shared_data_dir() / "fsdd"), options=[
        ("--per_speaker", dict(type=int, default=PER_SPEAKER, help="utterances made of each speaker")),
        ("--dev_utterances", dict(type=int, default=DEV_UTTERANCES, help="dev utterances (of the dev speaker's pool)")),
        ("--digits", dict(type=int, nargs=2, default=[2, 5], metavar=("MIN", "MAX"), help="digits per utterance")),
        ("--gap", dict(type=float, nargs=2, default=[0.05, 0.25], metavar=("MIN", "MAX"),
                       help="seconds of silence between digits (and at both ends)")),
    ])


if __name__ == "__main__":
    main()
