"""Running a torchrun job from a test."""
import shutil
import subprocess
from pathlib import Path
from typing import Iterable, List


def run_torchrun(command: List[str], cwd, env: dict, fresh: Iterable[Path] = (), timeout: int = 600):
    """`command` (torchrun ...) as a subprocess; once more if a worker died of SIGABRT.

    Seen twice on the 2-core machine (2026-11-29, full suite; a DDP fine-tuning job and a DDP rewiring job): a
    gloo worker aborted at teardown ("terminate called without an active exception", SIGABRT) with no Python
    error, and the rerun passed; on 2026-12-06 (full suite, DDP fine-tuning) it aborted twice in a row and passed
    alone. Up to two fresh attempts (the folders in `fresh` removed first); a deterministic failure fails every
    time, and any other failure is returned at once."""
    proc = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    for _ in range(2):
        if proc.returncode == 0 or "SIGABRT" not in proc.stderr:
            break
        for folder in fresh:
            shutil.rmtree(folder, ignore_errors=True)
        proc = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    return proc
