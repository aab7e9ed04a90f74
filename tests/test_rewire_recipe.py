"""The rewiring recipe end to end on real FSDD speech with a tiny random encoder."""
import csv
import os
import signal
import subprocess
import sys

import pytest
import torch
from transformers import AutoModel

from rewire_lib.files.paths import REPO_ROOT
from rewire_lib.models.encoder import SpeechEncoder
from rewire_lib.rewiring.brain import RewireBrain
from tests.kill_helpers import killed_at_step_script
from tests.rewire_helpers import fsdd_manifest, load_train_module

HPARAMS = REPO_ROOT / "recipes" / "rewire" / "hparams"


def _losses(folder):
    with open(folder / "loss.csv") as f:
        return [(int(r["epoch"]), float(r["loss"])) for r in csv.DictReader(f)]


def _args(view, encoder, manifest, out, *extra):
    return [str(HPARAMS / f"{view}.yaml"), "--encoder", str(encoder), "--train_csv", str(manifest),
            "--output_folder", str(out), "--batch_size", "4", "--lr", "0.001", "--seed", "3",
            "--tts_cache_dir", str(out.parent / "tts"), *extra]


def _epoch_mean(losses, epoch):
    values = [v for e, v in losses if e == epoch]
    return sum(values) / len(values)


@pytest.mark.parametrize("view", ["twin", "neutral"])
def test_short_rewiring_run_lowers_the_loss_and_saves_a_loadable_encoder(tmp_path, tiny_encoder_dir, view):
    manifest = fsdd_manifest(tmp_path / "train.csv", takes=range(2))
    out = tmp_path / view
    recipe = load_train_module("rewire")
    folder = recipe.main(_args(view, tiny_encoder_dir, manifest, out, "--number_of_epochs", "3"))
    losses = _losses(out)
    assert len(losses) == 3 * 5  # 20 utterances, 4 pairs a step, 3 epochs
    assert _epoch_mean(losses, 3) < 0.8 * _epoch_mean(losses, 1)
    for name in ("loss.png", "layer_weights.png", "train_log.txt", "hyperparams.yaml"):
        assert (out / name).is_file(), name
    # the rewired encoder differs from where it started and loads with plain transformers
    assert AutoModel.from_pretrained(folder).config.model_type == "wav2vec2"
    before = SpeechEncoder.from_pretrained(tiny_encoder_dir).eval()
    after = SpeechEncoder.from_pretrained(folder).eval()
    wav = torch.randn(1, 16000)
    assert not torch.allclose(before(wav).hidden_states, after(wav).hidden_states)


def test_saved_encoder_reproduces_the_trained_outputs_exactly(tmp_path, tiny_encoder_dir):
    manifest = fsdd_manifest(tmp_path / "train.csv", takes=range(1))
    out = tmp_path / "twin"
    recipe = load_train_module("rewire")
    brains = []

    class KeepBrain(RewireBrain):
        def on_fit_start(self):
            brains.append(self)
            super().on_fit_start()

    folder = recipe.main(_args("twin", tiny_encoder_dir, manifest, out, "--number_of_epochs", "1"), KeepBrain)
    trained = brains[0].modules.encoder.eval()
    loaded = SpeechEncoder.from_pretrained(folder).eval()
    wavs, lens = torch.randn(2, 12000), torch.tensor([1.0, 0.7])
    with torch.no_grad():
        assert torch.equal(trained(wavs, lens).hidden_states, loaded(wavs, lens).hidden_states)




def test_run_killed_mid_epoch_resumes_and_ends_like_an_uninterrupted_run(tmp_path, tiny_encoder_dir):
    manifest = fsdd_manifest(tmp_path / "train.csv", takes=range(2))
    extra = ["--number_of_epochs", "2", "--ckpt_interval_steps", "2"]  # dropout on: RNG state is restored too
    recipe = load_train_module("rewire")
    straight = recipe.main(_args("twin", tiny_encoder_dir, manifest, tmp_path / "straight", *extra))

    args = _args("twin", tiny_encoder_dir, manifest, tmp_path / "killed", *extra)
    code = killed_at_step_script("rewire_lib.rewiring.brain.RewireBrain",
                                 f"from tests.rewire_helpers import load_train_module; "
                                 f"load_train_module('rewire').main({args!r})", kill_at=7, paths=[str(REPO_ROOT)])
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not (tmp_path / "killed" / "encoder").exists()
    resumed = recipe.main(args)  # the same command again

    one = AutoModel.from_pretrained(straight).state_dict()
    two = AutoModel.from_pretrained(resumed).state_dict()
    for name in one:
        assert torch.allclose(one[name], two[name], atol=1e-6), name
    steps = [r for r in csv.DictReader(open(tmp_path / "killed" / "loss.csv"))]
    assert [int(r["step"]) for r in steps] == list(range(1, 11))  # no step logged twice after the resume


@pytest.mark.parametrize("view,epochs", [("twin", 1), ("neutral", 7), ("mixed", 3)])
def test_paper_preset_has_the_authors_settings(tmp_path, tiny_encoder_dir, view, epochs):
    import shutil

    from rewire_lib.rewiring.brain import tts_cache_of
    from rewire_lib.training.recipe import load_recipe
    from rewire_lib.views.pairs import LengthRules

    if view != "twin" and shutil.which("text2wave") is None:
        pytest.skip("Festival's text2wave is not installed (apt-get install festival)")
    manifest = fsdd_manifest(tmp_path / "train.csv", takes=range(1))
    hparams, *_ = load_recipe([str(HPARAMS / "paper.yaml"), "--view", view, "--encoder", str(tiny_encoder_dir),
                               "--train_csv", str(manifest), "--output_folder", str(tmp_path / "out"),
                               "--tts_cache_dir", str(tmp_path / "tts")])
    assert hparams["number_of_epochs"] == epochs
    assert (hparams["lr"], hparams["weight_decay"], hparams["temperature"], hparams["batch_size"]) == (1e-6, 0.01, 0.04, 4)
    assert hparams["dropout"] is True and hparams["layer"] is None
    rules = hparams["pair_builder"].rules
    assert isinstance(rules, LengthRules) and (rules.max_samples, rules.split_samples) == (180000, 90000)
    cache = tts_cache_of(hparams["pair_builder"])
    assert (cache is None) == (view == "twin")
    if cache is not None:
        assert cache.backend.name == "festival"
    assert all(p.requires_grad for p in hparams["encoder_model"].parameters())  # CNN included


def test_unknown_or_mistyped_keys_are_clear_errors(tmp_path, tiny_encoder_dir):
    from rewire_lib.training.recipe import HparamsError, load_recipe

    schema = load_train_module("rewire").SCHEMA
    base = [str(HPARAMS / "twin.yaml"), "--encoder", str(tiny_encoder_dir), "--output_folder", str(tmp_path)]
    with pytest.raises(HparamsError, match="batchsize"):
        load_recipe(base + ["--batchsize", "4"], schema)
    with pytest.raises(HparamsError, match="'batch_size' must be int"):
        load_recipe(base + ["--batch_size", "four"], schema)


def test_a_batch_that_runs_out_of_memory_is_named_with_what_to_change(tmp_path, tiny_encoder_dir, monkeypatch):
    from rewire_lib.training.oom import BatchDoesNotFit

    def no_memory(self, wavs, wav_lens=None):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(SpeechEncoder, "forward", no_memory)
    manifest = fsdd_manifest(tmp_path / "train.csv", takes=range(1), digits=range(4))
    recipe = load_train_module("rewire")
    with pytest.raises(BatchDoesNotFit) as err:  # one batch of 4 pairs
        recipe.main(_args("twin", tiny_encoder_dir, manifest, tmp_path / "o", "--sorting", "ascending"))
    message = str(err.value)
    for needle in ("0_jackson_0/a (", "1_jackson_0/b (", " s)", "batch_size", "max_duration", "gradient_checkpointing",
                   "--precision", "Tried to allocate"):
        assert needle in message, needle


def test_bf16_autocast_trains_and_the_nonfinite_guard_still_skips(tmp_path, tiny_encoder_dir):
    """`--precision bf16` (SpeechBrain's run option): the encoder runs in bf16, the loss in float32, the
    weights change, and a NaN loss is still skipped and counted by NonFiniteGuard."""
    seen = {}

    class Bf16Brain(RewireBrain):
        def compute_forward(self, batch, stage):
            pooled = super().compute_forward(batch, stage)
            seen.setdefault("pooled", pooled.dtype)
            return pooled

        def compute_objectives(self, predictions, batch, stage):
            loss = super().compute_objectives(predictions, batch, stage)
            seen.setdefault("loss", loss.dtype)
            seen["calls"] = seen.get("calls", 0) + 1
            return loss * float("nan") if seen["calls"] == 2 else loss

    manifest = fsdd_manifest(tmp_path / "train.csv", takes=range(2), digits=range(8))
    out = tmp_path / "bf16"  # 16 utterances, 4 pairs a step: 4 batches
    folder = load_train_module("rewire").main(
        _args("twin", tiny_encoder_dir, manifest, out, "--precision", "bf16"), Bf16Brain)
    assert seen["pooled"] == torch.bfloat16 and seen["loss"] == torch.float32
    losses = _losses(out)
    assert len(losses) == 3  # 4 batches, the NaN one skipped
    before = AutoModel.from_pretrained(tiny_encoder_dir).state_dict()
    after = AutoModel.from_pretrained(folder).state_dict()
    assert after["feature_projection.projection.weight"].dtype == torch.float32
    assert not torch.equal(before["feature_projection.projection.weight"], after["feature_projection.projection.weight"])


def test_gradient_checkpointing_key_enables_it_and_gives_the_same_gradients(tiny_encoder_dir):
    wavs, lens = torch.randn(2, 8000), torch.tensor([1.0, 0.6])
    grads = []
    for checkpointing in (False, True):
        enc = SpeechEncoder.from_pretrained(tiny_encoder_dir, gradient_checkpointing=checkpointing).train()
        enc.model.config.hidden_dropout = 0.0
        assert enc.model.is_gradient_checkpointing == checkpointing
        torch.manual_seed(0)
        enc(wavs, lens).hidden_states.pow(2).mean().backward()
        grads.append(enc.model.encoder.layers[0].feed_forward.intermediate_dense.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


def test_tts_cache_follows_rewire_cache(tmp_path, tiny_encoder_dir, monkeypatch):
    """REWIRE_CACHE moves the TTS cache too (the YAML no longer hard-codes <repo>/cache/tts)."""
    from rewire_lib.rewiring.brain import tts_cache_of
    from rewire_lib.training.recipe import load_recipe

    monkeypatch.setenv("REWIRE_CACHE", str(tmp_path / "elsewhere"))
    hparams, *_ = load_recipe([str(HPARAMS / "neutral.yaml"), "--encoder", str(tiny_encoder_dir),
                               "--output_folder", str(tmp_path / "out")])
    assert tts_cache_of(hparams["pair_builder"]).folder.is_relative_to(tmp_path / "elsewhere" / "tts")
