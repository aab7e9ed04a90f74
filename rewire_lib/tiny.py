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
