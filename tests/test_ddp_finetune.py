"""Fine-tuning under `torchrun --nproc_per_node=2` (CPU, gloo): the trainable encoder's gradients are
averaged across processes, so the final encoder and head equal those of one process with the global batch.

If a process updated its encoder from its own half of each batch (the encoder called outside the DDP
wrapper SpeechBrain puts around `modules`), rank 0's checkpoint would differ from the single-process
one by about the learning rate. Dropout and LayerDrop are off in the encoder so that both runs are
deterministic.
"""
import os
import shutil

import pytest
import torch

from ddp_helpers import run_torchrun
from downstream_helpers import make_tiny_corpus
from rewire_lib.files.paths import REPO_ROOT
from rewire_lib.models.encoder import SpeechEncoder
from rewire_lib.models.tiny import make_tiny_encoder
from tests.rewire_helpers import load_train_module
from tests.test_finetune import fast_env_log, ks_argv, latest_checkpoint  # noqa: F401 (autouse fixture)

TORCHRUN = shutil.which("torchrun") or str(REPO_ROOT / ".venv" / "bin" / "torchrun")
NO_DROPOUT = dict(hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0,
                  layerdrop=0.0, mask_time_prob=0.0)
FINETUNE = dict(freeze_encoder=False, freeze_cnn=True, encoder_lr=0.002, lr=0.01, encoder_warmup_steps=0,
                max_steps=4, eval_every_steps=2, eval_batch_size=4)
# Gets no gradient at all (softmax ignores a bias added to every key), so Adam turns rounding noise of
# order 1e-9 into updates of any size up to the learning rate: not comparable between the two runs.
NO_GRADIENT = ("attention.k_proj.bias",)

DRIVER = """
import sys, torch
import speechbrain.utils.logger
torch.set_num_threads(1)
speechbrain.utils.logger.get_environment_description = lambda: "(not recorded in tests)"  # pip freeze: slow
from tests.rewire_helpers import load_train_module
load_train_module("ks").main(sys.argv[1:] + ["--distributed_backend", "gloo"])
"""


def _state(out, name):
    return torch.load(latest_checkpoint(out) / f"{name}.ckpt", map_location="cpu")


@pytest.mark.skipif(not os.path.exists(TORCHRUN), reason="torchrun (part of torch) is not on PATH nor in .venv/bin")
def test_two_process_finetuning_equals_one_process_with_the_global_batch(tmp_path):
    encoder = make_tiny_encoder(tmp_path / "enc", "wav2vec2", seed=0, **NO_DROPOUT)
    corpus = make_tiny_corpus(tmp_path / "corpus")
    ddp, one = tmp_path / "ddp", tmp_path / "one"
    (tmp_path / "driver.py").write_text(DRIVER)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        [str(REPO_ROOT), str(REPO_ROOT / "tests"), os.environ.get("PYTHONPATH", "")]))
    command = [TORCHRUN, "--standalone", "--nproc_per_node=2", str(tmp_path / "driver.py"),
               *ks_argv(encoder, corpus, ddp, batch_size=2, **FINETUNE)]
    proc = run_torchrun(command, REPO_ROOT, env, fresh=[ddp])  # again (twice at most) on a teardown SIGABRT
    errors = [line for line in proc.stderr.splitlines() if "Error" in line and "ChildFailedError" not in line]
    assert proc.returncode == 0, "\n".join(errors[:6]) + "\n...\n" + proc.stderr[-2000:]

    single = load_train_module("ks").main(ks_argv(encoder, corpus, one, batch_size=4, **FINETUNE))
    assert single["steps"] == 4

    for name in ("encoder", "head", "featurizer"):
        a, b = _state(one, name), _state(ddp, name)
        assert set(a) == set(b), name
        for key in a:
            if key.endswith(NO_GRADIENT):
                continue
            assert torch.allclose(a[key], b[key], rtol=1e-4, atol=1e-5), \
                f"{name}.{key}: 2 processes differ from 1 by {(a[key] - b[key]).abs().max():.2e}"
    # the comparison means something only if the encoder did train
    start, trained = SpeechEncoder.from_pretrained(encoder).state_dict(), _state(one, "encoder")
    moved = [k for k in start if "layers." in k and not torch.equal(start[k], trained[k])]
    assert moved, "the encoder did not train: nothing to compare"
