"""Rewiring and the six downstream recipes under `torchrun --nproc_per_node=2` (CPU, gloo) follow the
same curve as one process with the same global batch. One torchrun launch runs every recipe in turn
(imports are paid once), the single-process references run here.

Per-process batch 2 on 2 processes vs batch 4 on one: the bucketed samplers hand each rank its slice
of the same global batches (BucketBatchSampler(ddp_shard=True)), rewiring gathers the embeddings of
every rank, and DDP averages the gradients, so the updates agree up to float summation order (and,
for the ASR BiLSTM head, padding to the local rather than the global longest utterance).
"""
import csv
import json
import os
import shutil
import sys

import pytest

from ddp_helpers import run_torchrun
from downstream_helpers import make_tiny_corpus
from downstream_helpers import run_task
from rewire_lib.files.paths import REPO_ROOT
from tests.rewire_helpers import fsdd_manifest, load_train_module

TASKS = ["ks", "sid", "er", "ic", "pr", "asr"]
METRIC = {"ks": "accuracy", "sid": "accuracy", "er": "accuracy", "ic": "accuracy", "pr": "per", "asr": "wer"}

DRIVER = """
import json, sys
sys.path.insert(0, {root!r}); sys.path.insert(0, {tests!r})
import torch; torch.set_num_threads(1)
from downstream_helpers import run_task
from tests.rewire_helpers import load_train_module
ddp = ["--distributed_backend", "gloo", "--device", "cpu"]
load_train_module("rewire").main({rewire!r} + ddp)
for task, argv in {downstream!r}.items():
    run_task(task, argv + ddp)
"""


def _rewire_argv(encoder, manifest, out, batch):
    return [str(REPO_ROOT / "recipes" / "rewire" / "hparams" / "twin.yaml"), "--encoder", str(encoder),
            "--train_csv", str(manifest), "--output_folder", str(out), "--batch_size", str(batch),
            "--lr", "0.001", "--seed", "3", "--dropout", "False", "--sorting", "bucket", "--noprogressbar",
            "--number_of_epochs", "2", "--tts_cache_dir", str(out.parent / "tts")]


def _downstream_argv(task, encoder, corpus, out, batch):
    return [str(REPO_ROOT / "recipes" / task / "hparams" / "baseline.yaml"), "--noprogressbar",
            "--encoder", str(encoder), "--data_folder", str(corpus), "--output_folder", str(out),
            "--batch_size", str(batch), "--eval_batch_size", "4", "--max_steps", "4", "--eval_every_steps", "2"]


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.skipif(shutil.which("torchrun") is None and not (REPO_ROOT / ".venv" / "bin" / "torchrun").exists(),
                    reason="torchrun not installed")
def test_two_processes_match_one_process_with_the_global_batch(tmp_path, tiny_encoder_dir):
    manifest = fsdd_manifest(tmp_path / "rewire.csv", takes=range(1), digits=range(8))  # 8 utterances
    corpus = make_tiny_corpus(tmp_path / "corpus")
    ddp, one = tmp_path / "ddp", tmp_path / "one"
    code = DRIVER.format(root=str(REPO_ROOT), tests=str(REPO_ROOT / "tests"),
                         rewire=_rewire_argv(tiny_encoder_dir, manifest, ddp / "rewire", 2),
                         downstream={t: _downstream_argv(t, tiny_encoder_dir, corpus, ddp / t, 2) for t in TASKS})
    (tmp_path / "driver.py").write_text(code)
    torchrun = shutil.which("torchrun") or str(REPO_ROOT / ".venv" / "bin" / "torchrun")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT))
    proc = run_torchrun([torchrun, "--standalone", "--nproc_per_node=2", str(tmp_path / "driver.py")], REPO_ROOT, env,
                        fresh=[ddp])  # again (twice at most) on a teardown SIGABRT
    assert proc.returncode == 0, proc.stderr[-4000:]

    # rewiring: the NT-Xent loss of every step (the global batch's loss, logged by rank 0)
    load_train_module("rewire").main(_rewire_argv(tiny_encoder_dir, manifest, one / "rewire", 4))
    a, b = _rows(one / "rewire" / "loss.csv"), _rows(ddp / "rewire" / "loss.csv")
    assert [r["step"] for r in a] == [r["step"] for r in b] == ["1", "2", "3", "4"]
    assert all(r["pairs"] == "4" for r in a + b)
    for ra, rb in zip(a, b):
        assert float(ra["loss"]) == pytest.approx(float(rb["loss"]), rel=1e-4, abs=1e-5), (ra, rb)

    # downstream: dev loss and metric at every evaluation, and the final test metric
    for task in TASKS:
        metric = METRIC[task]
        single = run_task(task, _downstream_argv(task, tiny_encoder_dir, corpus, one / task, 4))
        multi = json.loads((ddp / task / "result.json").read_text())
        a, b = _rows(one / task / "curve.csv"), _rows(ddp / task / "curve.csv")
        assert [r["step"] for r in a] == [r["step"] for r in b] == ["2", "4"], task
        tol = dict(rel=2e-3, abs=2e-3) if task == "asr" else dict(rel=1e-4, abs=1e-4)
        for ra, rb in zip(a, b):
            assert float(ra["dev_loss"]) == pytest.approx(float(rb["dev_loss"]), **tol), (task, ra, rb)
            assert float(ra[f"dev_{metric}"]) == pytest.approx(float(rb[f"dev_{metric}"]), abs=1e-6), (task, ra, rb)
        assert multi["steps"] == single["steps"] == 4
        assert multi["num_train"] == single["num_train"]
        assert multi[f"test_{metric}"] == pytest.approx(single[f"test_{metric}"], abs=1e-6), task
        assert multi["layer_weights"] == pytest.approx(single["layer_weights"], abs=1e-4), task
