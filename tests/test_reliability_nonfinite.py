"""Non-finite losses and gradients (rewire_lib.training.nonfinite.NonFiniteGuard) in the rewiring recipe and a
downstream recipe: a bad step is skipped and counted, good steps reset the count, and too many in a
row stop the run with TrainingDiverged while the last good checkpoint stays on disk, finite."""
import csv
import math

import pytest
import torch

from downstream_helpers import make_tiny_corpus
from rewire_lib.files.logs import read_csv
from rewire_lib.files.paths import REPO_ROOT
from rewire_lib.rewiring.brain import RewireBrain
from rewire_lib.training.nonfinite import TrainingDiverged
from tests.rewire_helpers import fsdd_manifest, load_train_module

HPARAMS = REPO_ROOT / "recipes" / "rewire" / "hparams"


def _rewire_args(encoder, manifest, out, *extra):
    return [str(HPARAMS / "twin.yaml"), "--encoder", str(encoder), "--train_csv", str(manifest),
            "--output_folder", str(out), "--batch_size", "4", "--lr", "0.001", "--seed", "3",
            "--tts_cache_dir", str(out.parent / "tts"), "--noprogressbar", *extra]


class _NaNGrad(torch.autograd.Function):
    """Identity forward, NaN gradient backward: a finite loss whose gradients are not."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


def _poison(cls, monkeypatch, is_bad, kind="loss"):
    """Make compute_objectives of `cls` give a NaN loss (or NaN gradients) for the training batches
    whose number (1, 2, ... in this run) `is_bad` accepts."""
    original = cls.compute_objectives
    seen = []

    def compute_objectives(self, predictions, batch, stage):
        loss = original(self, predictions, batch, stage)
        import speechbrain as sb
        if stage == sb.Stage.TRAIN:
            seen.append(self.optimizer_step)
            if is_bad(len(seen)):
                return loss * float("nan") if kind == "loss" else _NaNGrad.apply(loss)
        return loss

    monkeypatch.setattr(cls, "compute_objectives", compute_objectives)
    return seen


def _state_finite(module_state):
    return all(torch.isfinite(t).all() for t in module_state.values() if t.is_floating_point())


@pytest.mark.parametrize("kind", ["loss", "gradient"])
def test_rewiring_skips_and_counts_isolated_nonfinite_steps(tmp_path, tiny_encoder_dir, monkeypatch, capfd, kind):
    manifest = fsdd_manifest(tmp_path / "train.csv", takes=range(2))  # 20 utterances: 5 steps of 4 pairs
    brains = []

    class KeepBrain(RewireBrain):
        def on_fit_start(self):
            brains.append(self)
            super().on_fit_start()

    # the 2nd and 4th batches are bad: 3 good optimiser steps in the first epoch instead of 5
    _poison(KeepBrain, monkeypatch, lambda n: n in (2, 4), kind)
    out = tmp_path / "run"
    load_train_module("rewire").main(_rewire_args(tiny_encoder_dir, manifest, out, "--number_of_epochs", "1"),
                                     KeepBrain)
    brain = brains[0]
    assert brain.nonfinite_skipped == 2 and brain.nonfinite_in_a_row == 0
    assert brain.optimizer_step == 3
    rows = list(csv.DictReader(open(out / "loss.csv")))
    assert len(rows) == 3 and all(math.isfinite(float(r["loss"])) for r in rows)
    assert _state_finite(brain.modules.encoder.state_dict())
    logged = capfd.readouterr()
    assert (logged.out + logged.err).count(f"Non-finite {kind}") == 2  # SpeechBrain's handlers print the log


def test_rewiring_stops_after_too_many_in_a_row_and_keeps_last_good_checkpoint(tmp_path, tiny_encoder_dir,
                                                                                monkeypatch):
    manifest = fsdd_manifest(tmp_path / "train.csv", takes=range(2))
    # every batch from the 3rd on is bad: 2 good steps, then 3 bad in a row -> stop
    _poison(RewireBrain, monkeypatch, lambda n: n >= 3)
    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match=r"3 steps in a row had a non-finite loss.*optimiser step 2"
                                               r".*max_nonfinite_in_a_row = 3"):
        load_train_module("rewire").main(_rewire_args(tiny_encoder_dir, manifest, out, "--number_of_epochs", "2",
                                                      "--max_nonfinite_in_a_row", "3", "--ckpt_interval_steps", "1"))
    ckpts = sorted((out / "save").glob("CKPT+*"))
    assert ckpts, "the last good checkpoint must stay"
    latest = max(ckpts, key=lambda p: p.stat().st_mtime)
    assert "optimizer_step: 2\n" in (latest / "brain.ckpt").read_text()  # SpeechBrain writes it as YAML
    assert _state_finite(torch.load(latest / "encoder.ckpt"))
    assert not (out / "encoder").exists()  # no rewired encoder is written from a diverged run
    rows = list(csv.DictReader(open(out / "loss.csv")))
    assert [int(r["step"]) for r in rows] == [1, 2]


def test_fp16_grad_scaler_skips_count_once_the_scale_is_below_one(tmp_path, tiny_encoder_dir, monkeypatch):
    """fp16 (a GradScaler, here on the CPU with init_scale 4): overflow skips while the scale settles are the
    scaler's (not counted); once the scale is below 1 each skip counts, and NaN gradients stop the run."""
    manifest = fsdd_manifest(tmp_path / "train.csv", takes=range(2))  # 5 steps of 4 pairs
    brains = []

    class ScaledBrain(RewireBrain):
        def on_fit_start(self):
            super().on_fit_start()
            self.scaler = torch.GradScaler("cpu", init_scale=4.0)
            brains.append(self)

    _poison(ScaledBrain, monkeypatch, lambda n: n >= 1, kind="gradient")
    with pytest.raises(TrainingDiverged, match=r"2 steps in a row.*GradScaler skipped the step at scale 0.25"):
        load_train_module("rewire").main(_rewire_args(tiny_encoder_dir, manifest, tmp_path / "run",
                                                      "--max_nonfinite_in_a_row", "2"), ScaledBrain)
    brain = brains[0]  # scale 4 -> 2 -> 1 (not counted) -> 0.5 -> 0.25 (counted): 4 batches, no update applied
    assert brain.scaler.get_scale() == 0.25 and brain.nonfinite_skipped == 2 and brain.optimizer_step == 2
    assert _state_finite(brain.modules.encoder.state_dict())


def test_downstream_skips_nonfinite_steps_and_stops_when_diverged(tmp_path, tiny_encoder_dir, monkeypatch):
    corpus = make_tiny_corpus(tmp_path / "corpus")  # 24 training utterances: 6 batches of 4
    base = [str(REPO_ROOT / "recipes" / "ks" / "hparams" / "baseline.yaml"), "--noprogressbar",
            "--encoder", str(tiny_encoder_dir), "--data_folder", str(corpus), "--batch_size", "4",
            "--eval_every_steps", "2", "--max_nonfinite_in_a_row", "2"]
    ks = load_train_module("ks")
    seen = _poison(ks.KeywordSpottingBrain, monkeypatch, lambda n: n == 2)
    result = ks.main(base + ["--output_folder", str(tmp_path / "ok"), "--max_steps", "4"])
    assert result["steps"] == 4 and len(seen) == 5  # one batch skipped, one more drawn
    assert math.isfinite(result["test_accuracy"])
    for row in read_csv(tmp_path / "ok" / "curve.csv"):
        assert math.isfinite(float(row["train_loss"])), row

    monkeypatch.undo()
    _poison(ks.KeywordSpottingBrain, monkeypatch, lambda n: n >= 4)
    out = tmp_path / "diverged"
    with pytest.raises(TrainingDiverged, match=r"2 steps in a row.*optimiser step 3"):
        ks.main(base + ["--output_folder", str(out), "--max_steps", "10"])
    ckpts = list((out / "save").glob("CKPT+*"))
    assert ckpts and all(_state_finite(torch.load(c / "head.ckpt")) for c in ckpts)
    assert not (out / "result.json").exists()
