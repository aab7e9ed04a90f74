"""SUPERB-style downstream heads. Each takes the layer-weighted features x [B, T, D] and the
frame mask [B, T] (True on real frames) and never lets padded frames change a valid output."""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch

from rewire_lib.models.featurizer import masked_mean


class LinearCTCHead(torch.nn.Module):
    """PR: (optional projection +) linear layer to CTC log-probabilities [B, T, V]. `input_norm`: a LayerNorm
    on the features first (frozen encoders' hidden states are neither centred nor unit-scale)."""

    def __init__(self, input_dim: int, vocab_size: int, proj_dim: Optional[int] = None, input_norm: bool = False):
        super().__init__()
        layers = [torch.nn.LayerNorm(input_dim)] if input_norm else []
        if proj_dim:
            layers.append(torch.nn.Linear(input_dim, proj_dim))
            input_dim = proj_dim
        layers.append(torch.nn.Linear(input_dim, vocab_size))
        self.net = torch.nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.net(x), dim=-1)


class BiLSTMCTCHead(torch.nn.Module):
    """ASR: (LayerNorm,) projection, a stack of bidirectional LSTMs over the valid frames only (packed),
    linear, CTC log-probabilities [B, T, V]. `input_norm` normalises each frame's features before the
    projection: a frozen encoder's weighted layer sum has an arbitrary offset and scale per dimension,
    which slows the LSTM out of CTC's all-blank stage (recipes/README.md, ASR)."""

    def __init__(self, input_dim: int, vocab_size: int, proj_dim: int = 256, hidden_size: int = 256,
                 num_layers: int = 2, dropout: float = 0.0, input_norm: bool = False):
        super().__init__()
        proj = torch.nn.Linear(input_dim, proj_dim)
        self.proj = torch.nn.Sequential(torch.nn.LayerNorm(input_dim), proj) if input_norm else proj
        self.lstm = torch.nn.LSTM(proj_dim, hidden_size, num_layers=num_layers, bidirectional=True,
                                  batch_first=True, dropout=dropout if num_layers > 1 else 0.0)
        self.dropout = torch.nn.Dropout(dropout)
        self.out = torch.nn.Linear(2 * hidden_size, vocab_size)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        lengths = mask.sum(dim=1).clamp(min=1).cpu()
        packed = torch.nn.utils.rnn.pack_padded_sequence(self.proj(x), lengths, batch_first=True,
                                                         enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return torch.log_softmax(self.out(self.dropout(out)), dim=-1)


class PooledLinearHead(torch.nn.Module):
    """KS / SID / ER: mean over valid frames, then linear to class logits [B, C]."""

    pools_first = True  # the Brain may hand it pooled states (one frame an utterance): DownstreamBrain.pooled_states

    def __init__(self, input_dim: int, num_classes: int):
        super().__init__()
        self.out = torch.nn.Linear(input_dim, num_classes)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.out(masked_mean(x, mask))


class MultiSlotHead(torch.nn.Module):
    """IC: mean over valid frames, then one linear layer per slot: {slot: logits [B, C_slot]}."""

    pools_first = True

    def __init__(self, input_dim: int, slot_sizes: Dict[str, int]):
        super().__init__()
        self.slots: Sequence[str] = list(slot_sizes)
        self.out = torch.nn.ModuleDict({s: torch.nn.Linear(input_dim, n) for s, n in slot_sizes.items()})

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> Dict[str, torch.Tensor]:
        pooled = masked_mean(x, mask)
        return {s: self.out[s](pooled) for s in self.slots}


class ConvCTCHead(torch.nn.Module):
    """Connected words: (LayerNorm,) a 1-D convolution over `context` frames, ReLU, linear, CTC
    log-probabilities [B, T, V]. A frame-wise linear layer sees one 20 ms frame, too little to tell which word
    it is in; a BiLSTM sees the whole utterance but costs ~10x more per step on a CPU. `utterance_norm`
    subtracts each utterance's mean frame first (cepstral mean normalisation's idea: a per-speaker and
    per-channel offset is removed before the head sees the features)."""

    def __init__(self, input_dim: int, vocab_size: int, hidden_dim: int = 128, context: int = 9,
                 input_norm: bool = False, utterance_norm: bool = False, dropout: float = 0.0):
        super().__init__()
        if context < 1 or context % 2 == 0:
            raise ValueError(f"ConvCTCHead: context must be an odd number of frames >= 1, got {context}")
        self.norm = torch.nn.LayerNorm(input_dim) if input_norm else torch.nn.Identity()
        self.utterance_norm = utterance_norm
        self.conv = torch.nn.Conv1d(input_dim, hidden_dim, context, padding=context // 2)
        self.dropout = torch.nn.Dropout(dropout)
        self.out = torch.nn.Linear(hidden_dim, vocab_size)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask[..., None].to(x.dtype)
        if self.utterance_norm:
            x = x - masked_mean(x, mask)[:, None, :]
        x = self.norm(x) * m  # padded frames stay zero, so they never reach a valid frame's window
        h = torch.relu(frames_conv(x, self.conv)).transpose(1, 2)
        return torch.log_softmax(self.out(self.dropout(h)), dim=-1)


def frames_conv(x: torch.Tensor, conv: torch.nn.Conv1d) -> torch.Tensor:
    """`conv` (stride 1, zero padding of `conv.padding` frames, as ConvCTCHead builds it) over the frames of
    x [B, T, D], as [B, C_out, T]: the arithmetic of `conv(x.transpose(1, 2))`, equal up to float rounding, run as a
    2-D convolution over a [B, D, 1, T] view with the kernel viewed as [C_out, D, 1, K]. Why: on CPU, torch 2.14's
    1-D convolution is the slower kernel for these shapes (256 -> 128 channels over 9 frames, 1 thread): with it a
    study's PR training step took 72.8 ms against 49.6 and a dev pass 206 ms against 149 (`bench/sweep.py`,
    bench/README.md section 5). The parameters and their state-dict keys stay the Conv1d's."""
    out = torch.nn.functional.conv2d(x.transpose(1, 2).unsqueeze(2), conv.weight.unsqueeze(2), conv.bias,
                                     padding=(0, conv.padding[0]))
    return out.squeeze(2)
