"""Every family built from its library default config (only depth and width shrunk, LayerDrop 0.5 so that
a step which does not survive a skipped layer fails for certain): the rewiring recipe with dropout on, the
isotropy command, and the wrapper's padding against the hub's own preprocessing."""
import csv
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file
from transformers import AutoFeatureExtractor, AutoModel

from rewire_lib.files.paths import REPO_ROOT
from rewire_lib.models.encoder import SpeechEncoder
from rewire_lib.models.tiny import STOCK_FAMILIES, make_stock_encoder, stock_feature_extractor
from rewire_lib.rewiring.model_card import read_front_matter
from tests.rewire_helpers import fsdd_manifest, load_train_module

HPARAMS = REPO_ROOT / "recipes" / "rewire" / "hparams"


@pytest.fixture(scope="module")
def stock_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("stock")
    return {family: make_stock_encoder(root / family, family, seed=0) for family in STOCK_FAMILIES}


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    """10 short FSDD clips (two speakers, five digits)."""
    return fsdd_manifest(tmp_path_factory.mktemp("stock_data") / "train.csv", speakers=("jackson", "george"),
                         takes=range(1), digits=range(5))


def _weights(folder):
    return load_file(str(folder / "model.safetensors"))


@pytest.mark.parametrize("family", STOCK_FAMILIES)
def test_rewiring_a_stock_config_runs_with_layerdrop_and_dropout_on(tmp_path, stock_dirs, manifest, family):
    out = tmp_path / "out"
    folder = load_train_module("rewire").main([
        str(HPARAMS / "twin.yaml"), "--encoder", str(stock_dirs[family]), "--train_csv", str(manifest),
        "--output_folder", str(out), "--batch_size", "2", "--number_of_epochs", "2", "--lr", "0.001",
        "--dropout", "True", "--encoder_layerdrop", "null", "--encoder_spec_augment", "null", "--noprogressbar"])
    with open(out / "loss.csv") as f:
        losses = [float(row["loss"]) for row in csv.DictReader(f)]
    assert len(losses) == 10  # 10 clips, 2 pairs a step, 2 epochs
    assert all(math.isfinite(v) for v in losses)
    config = json.loads((folder / "config.json").read_text())
    assert config["layerdrop"] == 0.5 and config["mask_time_prob"] == 0.05  # the stock values really ran
    before, after = _weights(stock_dirs[family]), _weights(folder)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) > len(before) // 2, f"only {len(changed)} of {len(before)} tensors changed"
    # a complete hub folder: model, the family's own feature extractor, a model card
    assert AutoModel.from_pretrained(folder).config.model_type == config["model_type"]
    extractor = AutoFeatureExtractor.from_pretrained(folder)
    assert extractor.return_attention_mask == stock_feature_extractor(family).return_attention_mask
    assert extractor.do_normalize == stock_feature_extractor(family).do_normalize
    card = (folder / "README.md").read_text()
    assert read_front_matter(card)["library_name"] == "transformers"
    assert "10 optimiser steps" in card


def test_the_recipe_default_turns_layerdrop_off(tmp_path, stock_dirs):
    from rewire_lib.training.recipe import load_recipe

    hparams, *_ = load_recipe([str(HPARAMS / "twin.yaml"), "--encoder", str(stock_dirs["hubert"]),
                               "--output_folder", str(tmp_path / "o")])
    assert hparams["encoder_layerdrop"] == 0.0
    assert hparams["encoder_model"].model.config.layerdrop == 0.0
    assert hparams["encoder_model"].model.config.mask_time_prob == 0.05  # masking stays as configured


@pytest.mark.parametrize("family", STOCK_FAMILIES)
def test_hidden_states_stay_aligned_with_layer_indices_when_layerdrop_skips_layers(tmp_path, family):
    """LayerDrop 1.0 skips every layer that may be skipped: each skipped layer is an identity map, so the
    stack keeps L+1 entries and repeats the state below it (the featurizer's weights stay on their layers)."""
    folder = make_stock_encoder(tmp_path / family, family, layerdrop=1.0, hidden_dropout=0.0, attention_dropout=0.0,
                                activation_dropout=0.0, feat_proj_dropout=0.0, mask_time_prob=0.0)
    encoder = SpeechEncoder.from_pretrained(folder).train()
    wavs = torch.randn(2, 8000)
    hidden = encoder(wavs).hidden_states
    assert hidden.shape[0] == encoder.num_layers == 4
    first_skippable = 2 if family == "wavlm" else 0  # WavLM always runs its first layer (it holds the position bias)
    for i in range(first_skippable + 1, 4):
        assert torch.equal(hidden[i], hidden[first_skippable]), i
    encoder.model.config.layerdrop = 0.0  # nothing skipped: train mode equals eval mode (all dropouts are 0)
    assert torch.allclose(encoder(wavs).hidden_states, encoder.eval()(wavs).hidden_states, atol=1e-5)


@pytest.mark.parametrize("family", STOCK_FAMILIES)
def test_time_masking_on_batches_shorter_than_its_span(stock_dirs, family):
    """HF's SpecAugment refuses a padded batch with fewer frames than mask_time_length (10); the wrapper pads
    such a batch (every family, data2vec-audio's config included, which has no apply_spec_augment key)."""
    encoder = SpeechEncoder.from_pretrained(stock_dirs[family]).train()
    encoder.model.config.mask_time_prob = 0.5
    for _ in range(3):
        out = encoder(torch.randn(2, 1200), torch.tensor([1.0, 0.5]))  # 3 frames and 1 frame
        assert out.frame_mask.sum(1).tolist() == [3, 1] and torch.isfinite(out.hidden_states).all()


def _clips(n=3):
    root = REPO_ROOT.parent / "shared" / "data" / "fsdd" / "recordings"
    return [torch.from_numpy(sf.read(str(root / f"{d}_theo_0.wav"), dtype="float32")[0]) for d in range(n)]


@pytest.mark.parametrize("family", STOCK_FAMILIES)
def test_padded_batch_matches_the_hub_preprocessing(stock_dirs, family):
    """Eval mode. The batch equals the hub's own recipe: each utterance normalised by the family's feature
    extractor, zero padding, an attention mask only where the extractor gives one (group-norm base models:
    none). For wav2vec2-large-lv60 (layer-norm CNN, mask) each utterance's valid frames also equal a run of it
    alone. Elsewhere padding changes the valid frames on the hub too: a group-norm CNN normalises over the
    padding, and data2vec-audio's five stacked positional convolutions carry it into the valid frames."""
    encoder = SpeechEncoder.from_pretrained(stock_dirs[family]).eval()
    clips = _clips()
    longest = max(len(c) for c in clips)
    wavs = torch.stack([torch.nn.functional.pad(c, (0, longest - len(c))) for c in clips])
    out = encoder(wavs, torch.tensor([len(c) / longest for c in clips]))
    extractor = stock_feature_extractor(family)
    assert encoder.use_attention_mask == extractor.return_attention_mask
    with torch.no_grad():
        single = [extractor(c.numpy(), sampling_rate=16000, return_tensors="np").input_values[0] for c in clips]
        padded = torch.from_numpy(np.stack([np.pad(s, (0, longest - len(s))) for s in single]))
        mask = torch.stack([torch.arange(longest) < len(c) for c in clips]).long()
        reference = encoder.model(padded, attention_mask=mask if extractor.return_attention_mask else None,
                                  output_hidden_states=True).hidden_states
        torch.testing.assert_close(out.hidden_states, torch.stack(reference), atol=1e-4, rtol=1e-4)
        if family == "wav2vec2-large-lv60":
            for i, clip in enumerate(clips):
                alone = encoder(clip[None]).hidden_states[:, 0]
                frames = int(out.frame_mask[i].sum())
                assert frames == alone.shape[1]
                torch.testing.assert_close(out.hidden_states[:, i, :frames], alone, atol=2e-4, rtol=1e-3)


def test_isotropy_command_on_every_stock_family(tmp_path, stock_dirs, manifest):
    cmd = [sys.executable, "-m", "rewire_lib.analysis.isotropy", "--manifest", str(manifest), "--level", "utterance",
           "--out", str(tmp_path / "iso"), "--max-vectors", "100", "--no-progress"]
    for family in STOCK_FAMILIES:
        cmd += ["--encoder", str(stock_dirs[family])]
    done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads((tmp_path / "iso" / "isotropy.json").read_text())["rows"]
    assert len(rows) == len(STOCK_FAMILIES) * 4  # 4 hidden states each
    assert {r["n_utterances"] for r in rows} == {10}
    assert all(0 <= r["iw"] <= 1 and math.isfinite(r["avg_cosine"]) for r in rows)
