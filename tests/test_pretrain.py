"""The committed pre-trained encoder loads offline and works; the pre-training recipe lowers its loss."""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rewire_lib.files.paths import default_encoder_dir  # noqa: E402

MODEL_DIR = default_encoder_dir()


# --------------------------------------------------------------------------------- the committed encoder
def test_committed_encoder_loads_offline_and_gives_documented_shapes(monkeypatch):
    if not (MODEL_DIR / "config.json").is_file():
        pytest.fail(f"{MODEL_DIR} has no model: the committed encoder is missing "
                    "(restore it from git, or remake it with recipes/pretrain/train.py, see its README)")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoFeatureExtractor, AutoModel, HubertModel

    weights = MODEL_DIR / "model.safetensors"
    assert weights.is_file() and weights.stat().st_size <= 25 * 1024 * 1024
    model = AutoModel.from_pretrained(MODEL_DIR).eval()
    assert isinstance(model, HubertModel)
    extractor = AutoFeatureExtractor.from_pretrained(MODEL_DIR)
    assert extractor.sampling_rate == 16000 and extractor.do_normalize and extractor.return_attention_mask

    # Documented in pretrained/tiny-hubert/README.md: 6 layers, hidden size 256, 20 ms frames.
    assert (model.config.num_hidden_layers, model.config.hidden_size) == (6, 256)
    wav = torch.randn(2, 16000) * 0.1
    mask = torch.ones(2, 16000, dtype=torch.long)
    mask[1, 8000:] = 0
    with torch.no_grad():
        out = model(wav, attention_mask=mask, output_hidden_states=True)
    assert out.last_hidden_state.shape == (2, 49, 256)
    assert len(out.hidden_states) == 7
    assert all(torch.isfinite(h).all() for h in out.hidden_states)

    from rewire_lib.models.encoder import SpeechEncoder

    encoder = SpeechEncoder.from_pretrained(MODEL_DIR).eval()
    with torch.no_grad():
        enc = encoder(wav, torch.tensor([1.0, 0.5]))
    assert enc.hidden_states.shape == (7, 2, 49, 256)
    assert enc.frame_mask.sum(1).tolist() == [49, 24]
    assert torch.isfinite(enc.hidden_states).all()


def test_model_card_has_the_required_sections():
    card = MODEL_DIR / "README.md"
    if not (MODEL_DIR / "config.json").is_file():
        pytest.fail(f"{MODEL_DIR} has no model: the committed encoder is missing")
    text = card.read_text()
    for needed in ("Architecture", "Data", "Objective", "Probe", "Isotropy", "recipes/pretrain/train.py"):
        assert needed in text, f"model card lacks '{needed}'"


# --------------------------------------------------------------------------------- library pieces
def test_kmeans_finds_separated_clusters():
    from rewire_lib.pretrain.kmeans import assign, kmeans

    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = torch.cat([c + 0.1 * torch.randn(200, 2, generator=g) for c in centres])
    cents, inertia = kmeans(x, 3, seed=0)
    labels = assign(x, cents)
    assert inertia < 0.05
    for i in range(3):  # each true cluster maps to one k-means cluster
        assert labels[i * 200:(i + 1) * 200].unique().numel() == 1


def test_mfcc_frames_match_the_encoder_frames():
    from transformers import HubertConfig, HubertModel

    from rewire_lib.pretrain.targets import MFCCFrames, encoder_frame_count

    model = HubertModel(HubertConfig(conv_dim=(4,) * 7, hidden_size=16, num_hidden_layers=1,
                                     num_attention_heads=1, intermediate_size=8, num_conv_pos_embedding_groups=4))
    mfcc = MFCCFrames()
    for n in (400, 719, 720, 2240, 16000, 23457):
        expected = int(model._get_feat_extract_output_lengths(torch.tensor(n)))
        assert encoder_frame_count(n) == expected == mfcc(torch.randn(n)).shape[0]
    assert mfcc(torch.randn(16000)).shape[1] == 39


def test_span_mask_stays_inside_each_utterance():
    from rewire_lib.pretrain.model import span_mask

    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([100, 40, 5])
    mask = span_mask(lengths, 100, prob=0.65, span=10, generator=g)
    assert not mask[1, 40:].any() and not mask[2, 5:].any()
    assert mask[2].any()  # at least one span even for a very short utterance
    share = mask[0].float().mean()
    assert 0.3 < share < 0.75


def test_pretrain_manifest_refuses_held_out_splits(tmp_path):
    from rewire_lib.pretrain.corpus import CorpusError, build_pretrain_manifest

    for name in ("test.csv", "dev.csv", "valid.csv"):
        (tmp_path / name).write_text("ID,duration,wav\n")
        with pytest.raises(CorpusError, match="held-out"):
            build_pretrain_manifest([tmp_path / name], tmp_path / "out.csv")


# --------------------------------------------------------------------------------- the recipe, end to end
def _tiny_corpus(folder: Path, n: int = 12):
    """Utterances of a few steady harmonic 'phones' in sequence: frames are predictable from context."""
    from rewire_lib.data.audio import write_audio

    rng = np.random.default_rng(0)
    rows = ["ID,duration,wav"]
    for i in range(n):
        segs = []
        for _ in range(rng.integers(3, 6)):
            f0 = rng.choice([110.0, 180.0, 260.0, 400.0])
            t = np.arange(int(16000 * rng.uniform(0.15, 0.3))) / 16000
            segs.append(sum(np.sin(2 * np.pi * f0 * h * t) / h for h in (1, 2, 3)) * 0.2)
        wav = np.concatenate(segs) + 0.005 * rng.standard_normal(sum(len(s) for s in segs))
        path = folder / "wavs" / f"u{i}.wav"
        write_audio(path, wav.astype(np.float32), 16000)
        rows.append(f"u{i},{len(wav) / 16000:.4f},{path}")
    (folder / "train.csv").write_text("\n".join(rows) + "\n")
    return folder / "train.csv"


@pytest.mark.timeout(300)
def test_recipe_few_steps_lower_the_loss_and_export(tmp_path):
    sys.path.insert(0, str(REPO / "recipes" / "pretrain"))
    import train  # recipes/pretrain/train.py

    manifest = _tiny_corpus(tmp_path / "corpus")
    out = tmp_path / "run"
    model = ("{hidden_size: 32, num_layers: 2, num_heads: 2, intermediate_size: 64, conv_channels: 32, "
             "pos_conv_kernel: 16, pos_conv_groups: 4, dropout: 0.0}")
    argv = [str(REPO / "recipes/pretrain/hparams/tiny_hubert.yaml"), "--output_folder", str(out),
            "--train_manifests", f"[{manifest}]", "--model", model, "--num_clusters", "8",
            "--batch_size", "4", "--max_frames", "40", "--number_of_steps", "40", "--steps_per_epoch", "20",
            "--warmup_steps", "4", "--lr", "0.003", "--log_every", "5", "--proj_dim", "16",
            "--mask_prob", "0.5", "--mask_length", "4", "--device", "cpu"]
    summary = train.main(argv)
    rows = train.read_log(out / "train_log.csv")
    losses = [float(r["loss_masked"]) for r in rows]
    assert summary["steps"] == 40 and len(losses) == 8
    assert all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-2:]) < losses[0] - 0.1, losses
    assert (out / "train_log.png").is_file() and json.loads((out / "summary.json").read_text())["steps"] == 40
    from transformers import AutoModel

    assert type(AutoModel.from_pretrained(out / "encoder")).__name__ == "HubertModel"

    # A second call finds the finished checkpoint and does not train again (resume).
    again = train.main(argv)
    assert again["steps"] == 40
