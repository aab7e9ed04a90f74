#!/usr/bin/env python3
"""Intent classification (SUPERB IC). Run: `python train.py hparams/baseline.yaml [--key value ...]` (or hparams/rewired.yaml)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from rewire_lib.downstream import run_task  # noqa: E402

def main(argv=None) -> dict:
    """Train and test; returns what result.json holds (argv: `HPARAMS.yaml [--key value ...]`)."""
    return run_task("ic", argv)


if __name__ == "__main__":
    main()
