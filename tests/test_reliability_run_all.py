"""run_all.sh with bad options: a clear one-line error (exit code 2 or 1), never a Python traceback,
and no study started. Each case stops before any stage does work (a few seconds each)."""
import subprocess

import pytest

from rewire_lib.files.paths import REPO_ROOT

CASES = {
    "unknown_task": (["--tasks", "ks,foo"], "--tasks: unknown task 'foo'; valid: pr, asr, ks, ic, sid, er"),
    "unknown_stage": (["--stages", "foo"], "--stages: unknown stage 'foo'; valid: data, tts, rewire, isotropy, downstream, report"),
    "missing_encoder": (["--encoders", "base=/nonexistent/enc"], "/nonexistent/enc: no model there"),
    "missing_data_folder": (["--data-folder", "ks=/nonexistent/ks", "--stages", "data"],
                            "/nonexistent/ks/train.csv does not exist"),
    "fraction_not_a_number": (["--fractions", "0.1,abc"], "--fractions: 'abc' is not a valid float"),
    "seed_not_an_integer": (["--seeds", "x"], "--seeds: 'x' is not a valid int"),
    "steps_not_an_integer": (["--max-steps", "ks=many"], "--max-steps: 'many' is not a valid int"),
    "missing_corpus_folder": (["--librispeech", "/nonexistent/ls", "--stages", "data"],
                              "--librispeech: /nonexistent/ls is not a folder"),
    "misspelt_task_key": (["--data-folder", "ks2=/x"], "--data-folder: unknown task 'ks2'; valid: pr, asr, ks, ic, sid, er"),
    "slurm_without_sbatch": (["--launcher", "slurm", "--stages", "rewire", "--views", "twin"],
                             "--launcher slurm: sbatch is not on this machine's PATH"),
}


def _run(args, tmp_path):
    return subprocess.run([str(REPO_ROOT / "run_all.sh"), *args, "--out", str(tmp_path / "out")], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)


def _check(proc, words):
    text = proc.stdout + proc.stderr
    assert proc.returncode in (1, 2), text[-2000:]
    assert words in text, text[-2000:]
    assert "Traceback (most recent call last)" not in text, text[-3000:]


@pytest.mark.parametrize("case", list(CASES))
def test_bad_option_is_a_clear_error(case, tmp_path):
    args, words = CASES[case]
    _check(_run(args, tmp_path), words)
