"""Connected digits from FSDD (real speech): strings of 2-5 digits spoken by one speaker, for ASR and PR.

    python data_prep/fsdd_connected.py [--data_folder ../shared/data/fsdd] --save_folder data/fsdd/connected \
        [--utterances 1000 150 150] [--digits 2 5] [--gap 0.05 0.25] [--seed 0]

Each utterance is cut and joined from ONE speaker's isolated-digit recordings
(`<data_folder>/recordings/{digit}_{speaker}_{take}.wav`, 8 kHz): every recording is trimmed of
leading and trailing silence (10 ms frames below -30 dB of its loudest frame; 10 ms kept on each
side, 5 ms fades at the cuts) and the digits are joined with short silent gaps drawn from `--gap`
(seconds), with a gap's length of silence also before the first and after the last digit.
Speakers are split as `fsdd.py` splits them (the same seed gives the same 4 / 1 / 1 speakers), so
train, dev and test are speaker-disjoint. All choices (speaker, digits, takes, gaps) come from
(seed, split, utterance number): the same arguments give the same bytes.

Writes `<save_folder>/wav/<split>/<ID>.wav` (8 kHz mono 16-bit; recipes resample) and
`{train,dev,test}.csv` with ID,duration,wav,spk_id,sample_rate,channels,wrd,phn,sources:
`wrd` = the digit words ("three one four"), `phn` = their phonemes from a fixed ARPAbet lexicon
(`LEXICON`, no stress, no word-boundary token), `sources` = the recordings used, in order. Plus
nested `train_frac{F}.csv`, skipped.csv and prepared.json, as every preparer.
"""
from __future__ import annotations

import random
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

from data_prep.common import (run_preparer, PrepError, finish, fingerprint, group_split, is_done, log, mark_done,
                              require_dir)
from data_prep.fsdd import DIGITS, NAME
from rewire_lib.audio import AudioError, load_audio, write_audio
from rewire_lib.paths import shared_data_dir

VERSION = 1  # bump when the generator changes (part of the fingerprint)
SR = 8000
SPLITS = ("train", "dev", "test")
SPEAKER_RATIOS = (4 / 6, 1 / 6, 1 / 6)  # as data_prep/fsdd.py
LEXICON = {  # ARPAbet (CMUdict pronunciations, stress removed)
    "zero": "Z IH R OW", "one": "W AH N", "two": "T UW", "three": "TH R IY", "four": "F AO R",
    "five": "F AY V", "six": "S IH K S", "seven": "S EH V AH N", "eight": "EY T", "nine": "N AY N",
}
DEFAULT_UTTERANCES = (1000, 150, 150)  # train dev test
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


def scaled_counts(scale: float) -> list:
    """Utterances per split at `scale` (prepare_all's --scale): at least 2 each."""
    return [max(2, int(round(n * scale))) for n in DEFAULT_UTTERANCES]


def prepare(data_folder, save_folder, seed: int = 0, fractions=(0.1, 0.01), hours=(), force: bool = False,
            utterances: Sequence[int] = DEFAULT_UTTERANCES, digits: Sequence[int] = (2, 5),
            gap: Sequence[float] = (0.05, 0.25)) -> dict:
    data_folder = require_dir(data_folder, "FSDD")
    rec = require_dir(data_folder / "recordings", "FSDD recordings (expected <data_folder>/recordings)")
    save_folder = Path(save_folder)
    if len(utterances) != 3 or min(utterances) < 1:
        raise PrepError(f"--utterances: three counts >= 1 (train dev test) expected, got {list(utterances)}")
    if not 1 <= digits[0] <= digits[1]:
        raise PrepError(f"--digits: MIN MAX with 1 <= MIN <= MAX expected, got {list(digits)}")
    if not 0 <= gap[0] <= gap[1]:
        raise PrepError(f"--gap: MIN MAX seconds with 0 <= MIN <= MAX expected, got {list(gap)}")
    fp = fingerprint(corpus="fsdd_connected", version=VERSION, data_folder=data_folder.resolve(), seed=seed,
                     fractions=list(fractions), hours=list(hours), utterances=list(utterances), digits=list(digits),
                     gap=list(gap))
    if not force and is_done(save_folder, fp):
        log.info("%s: already prepared; skipping", save_folder)
        return {}
    failures: list = []
    index = index_recordings(rec, failures)
    if len(index) < 3:
        raise PrepError(f"FSDD {rec}: {len(index)} speaker(s) found; speaker-disjoint splits need at least 3")
    split_of = group_split(sorted(index), SPEAKER_RATIOS, seed)
    plan = {s: sorted(k for k, v in split_of.items() if v == s) for s in SPLITS}
    log.info("FSDD connected digits speaker split: %s", plan)
    splits: Dict[str, List[dict]] = {}
    for split, count in zip(SPLITS, utterances):
        rows = []
        for i in range(count):
            rng = random.Random(f"{seed}:{split}:{i}")  # str seeds hash the same in every process
            speaker = rng.choice(plan[split])
            try:
                wav, chosen, used = make_utterance(rng, speaker, index[speaker], digits, gap)
            except AudioError as err:
                failures.append(("", err.path, err.reason))
                continue
            words = [DIGITS[d] for d in chosen]
            uid = f"{split}_{i:05d}_{speaker}_{''.join(map(str, chosen))}"
            path = save_folder / "wav" / split / f"{uid}.wav"
            write_audio(path, wav, SR)
            rows.append(dict(ID=uid, wav=str(path.resolve()), spk_id=speaker, wrd=" ".join(words),
                             phn=" ".join(LEXICON[w] for w in words), sources=" ".join(p.stem for p in used)))
        splits[split] = rows
    _trimmed.cache_clear()
    kept = finish(save_folder, splits, fractions=fractions, hours=hours, seed=seed, failures=failures,
                  what="fsdd connected digits")
    mark_done(save_folder, fp, speaker_split=plan, lexicon=LEXICON)
    return kept


def main(argv=None) -> None:
    run_preparer(prepare, __doc__.splitlines()[0], argv, data_folder_default=str(shared_data_dir() / "fsdd"), options=[
        ("--utterances", dict(type=int, nargs=3, default=list(DEFAULT_UTTERANCES), metavar=("TRAIN", "DEV", "TEST"))),
        ("--digits", dict(type=int, nargs=2, default=[2, 5], metavar=("MIN", "MAX"), help="digits per utterance")),
        ("--gap", dict(type=float, nargs=2, default=[0.05, 0.25], metavar=("MIN", "MAX"),
                       help="seconds of silence between digits (and at both ends)")),
    ])


if __name__ == "__main__":
    main()
