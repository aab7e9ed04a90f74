"""Build every default manifest (what run_all.sh needs), skipping work already done.

    python data_prep/prepare_all.py [--data_dir data] [--seed 0] [--scale 1.0] [--num_workers 2]

- `data/synth/`: the eSpeak NG corpus (asr, rewire, ks, ic, er, sid), `data_prep/synth.py`;
- `data/fsdd/{digits,speakers}/`: FSDD from `../shared/data/fsdd`;
- `data/fsdd/connected/`: connected digits (ASR/PR, real speech) joined from FSDD, `data_prep/fsdd_connected.py`
  (its pool sizes scaled by `--scale` too), with leave-one-speaker-out folds in `folds/fold1..fold6`;
- `data/speech_commands/`: the Speech Commands v0.02 test set split speaker-disjointly;
- `data/librispeech_short/`: the shipped LibriSpeech test-clean short utterances (read sentences with transcripts,
  the study's rewiring corpus), split by speaker into train (rewiring) and dev/test (held-out speakers),
  `data_prep/librispeech.py`.
Each preparer writes `prepared.json` with a fingerprint of its arguments and is skipped when it
matches (so a second call costs about a second); `--force` redoes everything.
"""
from __future__ import annotations

from pathlib import Path

from data_prep import fsdd, fsdd_connected, librispeech, speech_commands_test, synth
from data_prep.common import DEFAULT_FRACTIONS, setup_logging
from rewire_lib.files.paths import data_dir, shared_data_dir


CORPORA = ("synth", "fsdd", "fsdd_connected", "speech_commands", "librispeech_short")
# The shipped LibriSpeech subset, in its published layout under ../shared/data
LIBRISPEECH_SHORT = "librispeech_test_clean_short"


def prepare_all(data_root=None, seed: int = 0, scale: float = 1.0, num_workers: int = 2, fractions=DEFAULT_FRACTIONS,
                hours=(), force: bool = False, shared=None, corpora=CORPORA) -> None:
    """Every default corpus, or only those named in `corpora` (the study prepares what its tasks read)."""
    unknown = [c for c in corpora if c not in CORPORA]
    if unknown:
        raise ValueError(f"prepare_all: unknown corpora {unknown}; valid: {', '.join(CORPORA)}")
    data_root = Path(data_root or data_dir())
    shared = Path(shared or shared_data_dir())
    if "synth" in corpora:
        synth.generate(data_root / "synth", scale=scale, seed=seed, num_workers=num_workers, fractions=fractions,
                       hours=hours, force=force)
    if "fsdd" in corpora:
        fsdd.prepare(shared / "fsdd", data_root / "fsdd", seed=seed, fractions=fractions, hours=hours, force=force)
    if "fsdd_connected" in corpora:
        fsdd_connected.prepare(shared / "fsdd", data_root / "fsdd" / "connected", seed=seed, fractions=fractions,
                               hours=hours, force=force, **fsdd_connected.scaled_counts(scale))
    if "speech_commands" in corpora:
        speech_commands_test.prepare(shared / "speech_commands_v0.02_test", data_root / "speech_commands",
                                     seed=seed, fractions=fractions, hours=hours, force=force)
    if "librispeech_short" in corpora:
        librispeech.prepare(shared / LIBRISPEECH_SHORT, data_root / "librispeech_short", seed=seed, fractions=fractions,
                            hours=hours, force=force)


def main(argv=None) -> None:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data_dir", default=None, help="default: rewire_lib.files.paths.data_dir() (<repo>/data)")
    p.add_argument("--shared_dir", default=None, help="default: ../shared/data")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--num_workers", type=int, default=2)
    p.add_argument("--fraction", type=float, nargs="*", default=list(DEFAULT_FRACTIONS))
    p.add_argument("--hours", type=float, nargs="*", default=[])
    p.add_argument("--force", action="store_true")
    p.add_argument("--corpora", nargs="*", default=list(CORPORA), choices=CORPORA, help="default: all of them")
    a = p.parse_args(argv)
    setup_logging()
    prepare_all(a.data_dir, seed=a.seed, scale=a.scale, num_workers=a.num_workers, fractions=a.fraction,
                hours=a.hours, force=a.force, shared=a.shared_dir, corpora=a.corpora)


if __name__ == "__main__":
    main()
