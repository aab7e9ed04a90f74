"""Tiny random speech encoders of each supported family, for tests and smoke runs (seconds on a CPU)."""
from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import (Data2VecAudioConfig, Data2VecAudioModel, HubertConfig, HubertModel,
                          Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model, WavLMConfig, WavLMModel)

_FAMILIES = {
    "wav2vec2": (Wav2Vec2Config, Wav2Vec2Model),
    "hubert": (HubertConfig, HubertModel),
    "wavlm": (WavLMConfig, WavLMModel),
    "data2vec-audio": (Data2VecAudioConfig, Data2VecAudioModel),
}

# 7 convolutions with the real models' strides (320x down-sampling, 20 ms frames) but 16 channels.
TINY_SETTINGS = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
    conv_dim=(16,) * 7, conv_stride=(5, 2, 2, 2, 2, 2, 2), conv_kernel=(10, 3, 3, 3, 3, 2, 2),
    num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
    feat_extract_norm="layer", do_stable_layer_norm=True,
    mask_time_prob=0.0, layerdrop=0.0,
)


def make_tiny_encoder(folder: str | os.PathLike, model_type: str = "wav2vec2", seed: int = 0, **overrides) -> Path:
    """Write a tiny randomly initialised encoder (weights + configs) to `folder` and return it."""
    if model_type not in _FAMILIES:
        raise ValueError(f"Unknown model_type '{model_type}'; choose from {sorted(_FAMILIES)}")
    config_cls, model_cls = _FAMILIES[model_type]
    settings = dict(TINY_SETTINGS)
    if model_type == "data2vec-audio":  # data2vec-audio has no stable-layer-norm switch
        settings.pop("do_stable_layer_norm")
        settings["conv_pos_kernel_size"] = 5
        settings["num_conv_pos_embeddings"] = 5
    settings.update(overrides)
    torch.manual_seed(seed)
    model = model_cls(config_cls(**settings))
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True).save_pretrained(folder)
    return folder


# ---------------------------------------------------------------------------------------------------------
# Stock configurations: the library's own defaults (what the hub checkpoints ship), shrunk only in size.

# family -> (config class, model class, config values that differ from the class default, feature extractor)
# The feature-extractor settings are those of the hub's preprocessor_config.json of the family's reference
# checkpoint: they decide whether the encoder sees an attention mask (group-norm base models: no mask, so
# padding is fed as zeros, exactly what these models were trained with) and whether audio is normalised.
STOCK_SPECS = {
    # facebook/wav2vec2-base: group-norm CNN, post-LN Transformer, no attention mask
    "wav2vec2-base": (Wav2Vec2Config, Wav2Vec2Model, {},
                      dict(do_normalize=True, return_attention_mask=False)),
    # facebook/wav2vec2-large-lv60 (the paper's encoder): layer-norm CNN with bias, stable (pre-)LN, attention mask
    "wav2vec2-large-lv60": (Wav2Vec2Config, Wav2Vec2Model,
                            dict(feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True),
                            dict(do_normalize=True, return_attention_mask=True)),
    # facebook/hubert-base-ls960: group-norm CNN, no attention mask
    "hubert": (HubertConfig, HubertModel, {}, dict(do_normalize=True, return_attention_mask=False)),
    # microsoft/wavlm-base-plus: group-norm CNN, gated relative position buckets, attention mask, no normalisation
    "wavlm": (WavLMConfig, WavLMModel, {}, dict(do_normalize=False, return_attention_mask=True)),
    # facebook/data2vec-audio-base: layer-norm CNN, a stack of positional convolutions, attention mask
    "data2vec-audio": (Data2VecAudioConfig, Data2VecAudioModel, {},
                       dict(do_normalize=True, return_attention_mask=True)),
}
STOCK_FAMILIES = tuple(STOCK_SPECS)

# Only depth and width shrink. Everything else (LayerDrop aside, see below) stays the library default:
# SpecAugment time masking (p 0.05, span 10), dropouts 0.1, the stock CNN kernels/strides (320x, 20 ms
# frames), positional-convolution kernels, WavLM's 320 relative-position buckets.
STOCK_SHRINK = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64,
                    conv_dim=(16,) * 7)
# full-size shapes, for benchmarks (the stock base and large widths)
STOCK_SIZES = {
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                 conv_dim=(512,) * 7),
    "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                  conv_dim=(512,) * 7),
}


def stock_config(family: str, layerdrop: float | None = 0.5, size: str | None = None, **overrides):
    """The library default config of `family` (with the reference checkpoint's differences), shrunk
    (`size=None`) or at full base/large size. `layerdrop=None` keeps the stock 0.1; the default 0.5
    makes a training step that does not survive skipped layers fail for certain (tests)."""
    if family not in STOCK_SPECS:
        raise ValueError(f"Unknown stock family '{family}'; choose from {list(STOCK_FAMILIES)}")
    config_cls, _, differences, _ = STOCK_SPECS[family]
    settings = dict(STOCK_SHRINK if size is None else STOCK_SIZES[size])
    settings.update(differences)
    if layerdrop is not None:
        settings["layerdrop"] = layerdrop
    settings.update(overrides)
    return config_cls(**settings)


def stock_feature_extractor(family: str) -> Wav2Vec2FeatureExtractor:
    """The feature extractor the family's reference hub checkpoint ships."""
    return Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0,
                                    **STOCK_SPECS[family][3])


def make_stock_encoder(folder: str | os.PathLike, family: str, seed: int = 0, layerdrop: float | None = 0.5,
                       size: str | None = None, **overrides) -> Path:
    """Write a random encoder built from `family`'s stock config (see `stock_config`) plus the hub's
    feature-extractor settings to `folder` with save_pretrained; returns the folder."""
    config = stock_config(family, layerdrop=layerdrop, size=size, **overrides)
    torch.manual_seed(seed)
    model = STOCK_SPECS[family][1](config)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    stock_feature_extractor(family).save_pretrained(folder)
    return folder
