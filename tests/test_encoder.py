import numpy as np
import pytest
import torch
from transformers import AutoModel, Wav2Vec2FeatureExtractor

from rewire_lib.models.encoder import EncoderLoadError, SpeechEncoder
from rewire_lib.models.featurizer import WeightedLayerSum, masked_mean
from rewire_lib.models.tiny import make_tiny_encoder


@pytest.mark.parametrize("model_type", ["wav2vec2", "hubert", "wavlm", "data2vec-audio"])
def test_each_family_round_trips_through_save_pretrained(tmp_path, model_type):
    src = make_tiny_encoder(tmp_path / "src", model_type, seed=1)
    enc = SpeechEncoder.from_pretrained(src).eval()
    assert enc.model.config.model_type == model_type
    wavs = torch.randn(2, 8000)
    lens = torch.tensor([1.0, 0.5])
    out = enc(wavs, lens)
    assert out.hidden_states.shape == (enc.num_layers, 2, 24, enc.hidden_size)
    assert out.frame_mask.sum(1).tolist() == [24, 12]
    enc.save_pretrained(tmp_path / "copy")
    again = SpeechEncoder.from_pretrained(tmp_path / "copy").eval()
    assert torch.equal(again(wavs, lens).hidden_states, out.hidden_states)
    assert AutoModel.from_pretrained(tmp_path / "copy").config.model_type == model_type


def test_padding_does_not_change_valid_frames_or_pooled_embedding(tiny_encoder_dir):
    enc = SpeechEncoder.from_pretrained(tiny_encoder_dir).eval()
    torch.manual_seed(0)
    short, long = torch.randn(6000), torch.randn(12000)
    batch = torch.zeros(2, 12000)
    batch[0, :6000] = short
    batch[1] = long
    padded = enc(batch, torch.tensor([0.5, 1.0]))
    alone = enc(short[None], torch.tensor([1.0]))
    frames = int(alone.frame_mask.sum())
    assert torch.allclose(padded.hidden_states[:, 0, :frames], alone.hidden_states[:, 0], atol=1e-4)
    pooled_padded = masked_mean(padded.hidden_states[-1], padded.frame_mask)[0]
    pooled_alone = masked_mean(alone.hidden_states[-1], alone.frame_mask)[0]
    assert torch.allclose(pooled_padded, pooled_alone, atol=1e-4)


def test_input_preparation_matches_the_hf_feature_extractor(tiny_encoder_dir):
    enc = SpeechEncoder.from_pretrained(tiny_encoder_dir)
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=5000).astype(np.float32) * 3 + 1, rng.normal(size=3000).astype(np.float32)
    ref = Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True)(
        [a, b], sampling_rate=16000, padding=True, return_tensors="pt")
    batch = torch.zeros(2, 5000)
    batch[0], batch[1, :3000] = torch.from_numpy(a), torch.from_numpy(b)
    inputs, mask = enc.prepare_inputs(batch, torch.tensor([5000, 3000]))
    assert torch.allclose(inputs, ref["input_values"], atol=1e-3)
    assert torch.equal(mask, ref["attention_mask"].long())


def test_too_short_audio_is_a_clear_error(tiny_encoder_dir):
    enc = SpeechEncoder.from_pretrained(tiny_encoder_dir)
    with pytest.raises(ValueError, match="receptive field"):
        enc(torch.randn(1, 100))


def test_missing_or_wrong_encoder_is_a_clear_error(tmp_path):
    with pytest.raises(EncoderLoadError, match="does not exist"):
        SpeechEncoder.from_pretrained(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EncoderLoadError, match="no config.json"):
        SpeechEncoder.from_pretrained(tmp_path / "empty")
    from transformers import BertConfig, BertModel
    BertModel(BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
                         intermediate_size=8)).save_pretrained(tmp_path / "bert")
    with pytest.raises(EncoderLoadError, match="not a speech encoder"):
        SpeechEncoder.from_pretrained(tmp_path / "bert")


def test_weighted_layer_sum_starts_as_mean_and_fixed_layer_selects():
    hidden = torch.randn(3, 2, 5, 4)
    assert torch.allclose(WeightedLayerSum(3)(hidden), hidden.mean(0), atol=1e-6)
    assert torch.equal(WeightedLayerSum(3, layer=1)(hidden), hidden[1])
    with pytest.raises(ValueError, match="out of range"):
        WeightedLayerSum(3, layer=3)


def test_masked_mean_ignores_padding():
    x = torch.tensor([[[1.0], [3.0], [100.0]]])
    assert masked_mean(x, torch.tensor([[True, True, False]])).item() == 2.0


def test_short_batches_train_with_the_models_own_time_masking(tmp_path):
    """HF refuses a padded batch with fewer frames than mask_time_length; the wrapper pads it instead."""
    folder = make_tiny_encoder(tmp_path / "masking", "hubert", mask_time_prob=0.5, mask_time_length=10)
    enc = SpeechEncoder.from_pretrained(folder).train()
    assert enc.masking_min_samples() == enc.min_samples(10)
    out = enc(torch.randn(2, 2560), torch.tensor([1.0, 0.6]))  # 0.16 s: 7 frames < 10
    assert out.frame_mask.sum(1).tolist() == [7, 4]
    assert out.hidden_states.shape[2] >= 10 and torch.isfinite(out.hidden_states).all()
    assert SpeechEncoder.from_pretrained(folder).eval().masking_min_samples() == 0


def test_layer_hooks_live_only_during_a_forward_and_copies_record_their_own_layers(tiny_encoder_dir):
    """The per-layer outputs (LayerDrop-safe hidden states) come from hooks registered for one forward:
    none stays behind (gradient-checkpointing recomputation records nothing), and a deep copy works alone."""
    import copy

    enc = SpeechEncoder.from_pretrained(tiny_encoder_dir).eval()
    wavs = torch.randn(1, 8000)
    with torch.no_grad():
        reference = enc(wavs).hidden_states
    assert all(not layer._forward_hooks for layer in enc.model.encoder.layers)
    twin = copy.deepcopy(enc)
    for p in twin.parameters():
        torch.nn.init.normal_(p)
    with torch.no_grad():
        assert not torch.allclose(twin(wavs).hidden_states[1:], reference[1:])
        assert torch.equal(enc(wavs).hidden_states, reference)


def test_freeze_cnn_and_encoder_overrides(tiny_encoder_dir):
    enc = SpeechEncoder.from_pretrained(tiny_encoder_dir, freeze_cnn=True, layerdrop=0.3, apply_spec_augment=False)
    assert not any(p.requires_grad for p in enc.model.feature_extractor.parameters())
    assert all(p.requires_grad for p in enc.model.encoder.parameters())
    assert enc.model.config.layerdrop == 0.3 and enc.model.config.apply_spec_augment is False
