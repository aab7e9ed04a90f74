"""HuBERT-style masked prediction of cluster targets on top of `transformers.HubertModel`.

- Span masking of the CNN features, computed here (so the loss knows which frames were masked) and given to
  `HubertModel.forward(mask_time_indices=...)`, which puts its learned `masked_spec_embed` there.
- Prediction head as in HuBERT: a linear projection of the last layer, cosine similarity with one learned
  embedding per cluster, divided by a temperature (0.1), softmax over clusters.
- Loss: cross-entropy on masked frames, plus `unmasked_weight` x cross-entropy on unmasked frames.
Inputs are prepared exactly as downstream recipes prepare them (`SpeechEncoder.prepare_inputs`:
per-utterance normalisation, attention mask), so the encoder is pre-trained on what it will later see.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import HubertConfig, HubertModel

from rewire_lib.models.encoder import SpeechEncoder


def tiny_hubert_config(hidden_size: int = 256, num_layers: int = 6, num_heads: int = 4,
                       intermediate_size: int = 1024, conv_channels: int = 128, pos_conv_kernel: int = 64,
                       pos_conv_groups: int = 16, dropout: float = 0.1, **overrides) -> HubertConfig:
    """A small HubertConfig: standard 7-layer CNN (320x stride, 20 ms frames) with fewer channels,
    pre-LayerNorm Transformer ("stable layer norm", so attention masks handle padding)."""
    settings = dict(
        hidden_size=hidden_size, num_hidden_layers=num_layers, num_attention_heads=num_heads,
        intermediate_size=intermediate_size, hidden_act="gelu",
        conv_dim=(conv_channels,) * 7, conv_stride=(5, 2, 2, 2, 2, 2, 2), conv_kernel=(10, 3, 3, 3, 3, 2, 2),
        conv_bias=True, feat_extract_norm="layer", feat_extract_activation="gelu", do_stable_layer_norm=True,
        feat_proj_layer_norm=True, num_conv_pos_embeddings=pos_conv_kernel,
        num_conv_pos_embedding_groups=pos_conv_groups,
        hidden_dropout=dropout, attention_dropout=dropout, activation_dropout=0.0, feat_proj_dropout=0.0,
        final_dropout=0.0, layerdrop=0.0,
        # What downstream fine-tuning gets from the config (as in facebook/hubert-base-ls960):
        apply_spec_augment=True, mask_time_prob=0.05, mask_time_length=10, mask_feature_prob=0.0,
    )
    settings.update(overrides)
    return HubertConfig(**settings)


def span_mask(frame_lengths: torch.Tensor, num_frames: int, prob: float, span: int,
              generator: torch.Generator | None = None, min_spans: int = 1) -> torch.Tensor:
    """Boolean [B, T] mask: per utterance, round(prob * len / span) span starts (at least `min_spans`)
    drawn without replacement among valid frames, each masking `span` frames (clipped to the utterance);
    spans may overlap, as in wav2vec 2.0 / HuBERT, so the masked share is a little below `prob`."""
    batch = frame_lengths.shape[0]
    mask = torch.zeros(batch, num_frames, dtype=torch.bool)
    for b in range(batch):
        length = int(frame_lengths[b])
        if length <= 0:
            continue
        n = max(min_spans, int(prob * length / span + float(torch.rand(1, generator=generator))))
        starts_range = max(length - span + 1, 1)
        n = min(n, starts_range)
        starts = torch.randperm(starts_range, generator=generator)[:n]
        for s in starts.tolist():
            mask[b, s:min(s + span, length)] = True
    return mask


@dataclass
class PretrainOutput:
    loss: torch.Tensor
    loss_masked: torch.Tensor
    loss_unmasked: torch.Tensor
    acc_masked: torch.Tensor
    masked_frames: int


class HubertPretrainer(torch.nn.Module):
    """A HubertModel plus the masked-prediction head; `encoder` is what gets saved and committed."""

    def __init__(self, config: HubertConfig, num_clusters: int, proj_dim: int = 128, logit_temp: float = 0.1,
                 mask_prob: float = 0.65, mask_length: int = 10, unmasked_weight: float = 0.0):
        super().__init__()
        self.encoder = SpeechEncoder(HubertModel(config), do_normalize=True, use_attention_mask=True)
        self.final_proj = torch.nn.Linear(config.hidden_size, proj_dim)
        self.label_embs = torch.nn.Parameter(torch.empty(num_clusters, proj_dim).uniform_(-1, 1))
        self.num_clusters = num_clusters
        self.logit_temp = logit_temp
        self.mask_prob, self.mask_length = mask_prob, mask_length
        self.unmasked_weight = unmasked_weight

    @property
    def hubert(self) -> HubertModel:
        return self.encoder.model

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[..., D] -> [..., K] cosine similarities / temperature."""
        proj = torch.nn.functional.normalize(self.final_proj(hidden), dim=-1)
        embs = torch.nn.functional.normalize(self.label_embs, dim=-1)
        return proj @ embs.T / self.logit_temp

    def forward(self, wavs: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor,
                generator: torch.Generator | None = None) -> PretrainOutput:
        """wavs [B, S] padded; lengths [B] samples; labels [B, T] (-100 past each utterance)."""
        inputs, attention_mask = self.encoder.prepare_inputs(wavs, lengths)
        frame_lengths = self.encoder.frame_lengths(lengths).cpu()
        num_frames = int(self.encoder.frame_lengths(torch.tensor([wavs.shape[1]]))[0])
        if labels.shape[1] < num_frames:
            labels = torch.nn.functional.pad(labels, (0, num_frames - labels.shape[1]), value=-100)
        labels = labels[:, :num_frames]
        mask = span_mask(frame_lengths, num_frames, self.mask_prob, self.mask_length, generator).to(wavs.device)
        out = self.hubert(inputs, attention_mask=attention_mask, mask_time_indices=mask, return_dict=True)
        hidden = out.last_hidden_state  # [B, T, D]
        valid = labels >= 0
        masked, unmasked = mask & valid, ~mask & valid
        logits_m = self.logits(hidden[masked]).float()
        loss_m = torch.nn.functional.cross_entropy(logits_m, labels[masked])
        acc_m = (logits_m.argmax(-1) == labels[masked]).float().mean()
        if self.unmasked_weight > 0 and bool(unmasked.any()):
            loss_u = torch.nn.functional.cross_entropy(self.logits(hidden[unmasked]).float(), labels[unmasked])
        else:
            loss_u = torch.zeros((), device=wavs.device)
        loss = loss_m + self.unmasked_weight * loss_u
        return PretrainOutput(loss, loss_m.detach(), loss_u.detach(), acc_m.detach(), int(masked.sum()))
