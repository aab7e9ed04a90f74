"""A downstream run killed with SIGKILL mid-epoch and restarted with the same command resumes from its
last checkpoint and ends with the same curve and final metrics as an uninterrupted run (the rewiring
recipe has the same test in test_rewire_recipe.py)."""
import json
import signal
import subprocess
import sys

import pytest

from downstream_helpers import assert_loads_without_code, make_tiny_corpus, run_task
from kill_helpers import killed_at_step_script
from rewire_lib.files.logs import read_csv
from rewire_lib.files.paths import REPO_ROOT



@pytest.mark.parametrize("task", ["ks"])
def test_downstream_killed_mid_epoch_resumes_to_the_same_final_metrics(task, tmp_path, tiny_encoder_dir):
    corpus = make_tiny_corpus(tmp_path / "corpus")  # 24 training utterances: 6 steps an epoch

    def argv(out):
        return [str(REPO_ROOT / "recipes" / task / "hparams" / "baseline.yaml"), "--noprogressbar",
                "--encoder", str(tiny_encoder_dir), "--data_folder", str(corpus), "--output_folder", str(out),
                "--batch_size", "4", "--number_of_epochs", "2", "--eval_every_steps", "4"]

    straight = run_task(task, argv(tmp_path / "straight"))
    # killed at step 7 (epoch 2, 1 step in); its last checkpoint is from step 4 (mid-epoch 1)
    call = f"from downstream_helpers import run_task; run_task({task!r}, {argv(tmp_path / 'killed')!r})"
    code = killed_at_step_script("rewire_lib.downstream.brain.DownstreamBrain", call, kill_at=7,
                                 paths=[str(REPO_ROOT), str(REPO_ROOT / "tests")], threads=1)
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not (tmp_path / "killed" / "result.json").exists()
    assert [r["step"] for r in read_csv(tmp_path / "killed" / "curve.csv")] == ["4"]
    assert "rng.ckpt" in assert_loads_without_code(tmp_path / "killed" / "save")
    resumed = run_task(task, argv(tmp_path / "killed"))  # the same command again

    assert resumed["steps"] == straight["steps"] == 12
    for key in ("test_accuracy", "best_dev_accuracy", "best_dev_step", "test_loss"):
        assert resumed[key] == pytest.approx(straight[key], rel=1e-5, abs=1e-6), key
    assert resumed["layer_weights"] == pytest.approx(straight["layer_weights"], abs=1e-6)
    a, b = read_csv(tmp_path / "straight" / "curve.csv"), read_csv(tmp_path / "killed" / "curve.csv")
    assert [r["step"] for r in a] == [r["step"] for r in b] == ["4", "8", "12"]
    for ra, rb in zip(a, b):
        for col in ("train_loss", "dev_loss", "dev_accuracy"):
            assert float(ra[col]) == pytest.approx(float(rb[col]), rel=1e-5, abs=1e-6), (col, ra, rb)
    assert json.loads((tmp_path / "killed" / "result.json").read_text())["steps"] == 12
