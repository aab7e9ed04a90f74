"""Frame features for the cluster targets, aligned with the encoder's frames (20 ms hop at 16 kHz).

The HuBERT/wav2vec 2.0 CNN has a 400-sample receptive field and a 320-sample stride, so frame i covers
samples [320 i, 320 i + 400). The MFCC here uses the same window (400) and hop (320) with no centring,
which gives one MFCC frame per encoder frame; `align` trims or repeats the last frame in the rare case
the two counts differ (other conv layouts).
"""
from __future__ import annotations

import logging
from typing import Callable, Sequence

import torch
import torchaudio

from rewire_lib.pretrain.kmeans import assign, kmeans

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
HOP = 320
WIN = 400


class MFCCFrames(torch.nn.Module):
    """13 MFCCs + deltas + delta-deltas (39 dims) per 20 ms frame: [samples] -> [frames, 39]."""

    def __init__(self, n_mfcc: int = 13, n_mels: int = 40, deltas: bool = True):
        super().__init__()
        self.mfcc = torchaudio.transforms.MFCC(
            sample_rate=SAMPLE_RATE, n_mfcc=n_mfcc,
            melkwargs=dict(n_fft=WIN, win_length=WIN, hop_length=HOP, n_mels=n_mels, center=False),
        )
        self.deltas = deltas

    @property
    def dim(self) -> int:
        return self.mfcc.n_mfcc * (3 if self.deltas else 1)

    @torch.no_grad()
    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        if wav.dim() != 1:
            raise ValueError(f"MFCCFrames expects one waveform [samples], got shape {tuple(wav.shape)}")
        if wav.numel() < WIN:
            wav = torch.nn.functional.pad(wav, (0, WIN - wav.numel()))
        feats = self.mfcc(wav.float())  # [n_mfcc, T]
        if self.deltas:
            d1 = torchaudio.functional.compute_deltas(feats)
            d2 = torchaudio.functional.compute_deltas(d1)
            feats = torch.cat([feats, d1, d2], dim=0)
        return feats.T.contiguous()


def align(frames: torch.Tensor, count: int) -> torch.Tensor:
    """Trim to `count` rows, or repeat the last row up to `count`."""
    if frames.shape[0] >= count:
        return frames[:count]
    pad = frames[-1:].expand(count - frames.shape[0], -1)
    return torch.cat([frames, pad], dim=0)


def encoder_frame_count(num_samples: int) -> int:
    """Frames of the standard 7-layer CNN (kernels 10,3,3,3,3,2,2; strides 5,2,2,2,2,2,2)."""
    length = num_samples
    for kernel, stride in zip((10, 3, 3, 3, 3, 2, 2), (5, 2, 2, 2, 2, 2, 2)):
        length = (length - kernel) // stride + 1
    return max(int(length), 0)


def cluster_targets(waves: Sequence[torch.Tensor], featurize: Callable[[torch.Tensor], torch.Tensor],
                    k: int, iters: int = 50, seed: int = 0, max_frames: int = 300000,
                    frame_count: Callable[[int], int] = encoder_frame_count, progress: bool = True) -> dict:
    """Features for every utterance, k-means over (at most `max_frames` of) them, labels for every frame.

    Features are standardised per dimension with statistics over all frames before clustering.
    Returns {"labels": list of LongTensor [frames_i], "centroids", "mean", "std", "inertia", "counts"}.
    """
    from tqdm import tqdm

    feats = []
    for wav in tqdm(waves, desc="target features", disable=not progress, leave=False):
        count = frame_count(int(wav.numel()))
        if count < 1:
            raise ValueError(f"An utterance of {wav.numel()} samples is shorter than one encoder frame")
        feats.append(align(featurize(wav), count))
    allf = torch.cat(feats)
    mean, std = allf.mean(0), allf.std(0).clamp_min(1e-5)
    generator = torch.Generator().manual_seed(seed)
    sample = allf if allf.shape[0] <= max_frames else allf[torch.randperm(allf.shape[0], generator=generator)[:max_frames]]
    centroids, inertia = kmeans((sample - mean) / std, k, iters=iters, seed=seed)
    labels = [assign((f - mean) / std, centroids) for f in feats]
    counts = torch.bincount(torch.cat(labels), minlength=k)
    used = int((counts > 0).sum())
    logger.info("targets: %d frames, %d of %d clusters used", allf.shape[0], used, k)
    return {"labels": labels, "centroids": centroids, "mean": mean, "std": std, "inertia": inertia,
            "counts": counts}


class EncoderLayerFrames:
    """Frames of one hidden layer of an encoder (HuBERT's second iteration): [samples] -> [frames, D]."""

    def __init__(self, encoder, layer: int, device: str = "cpu"):
        self.encoder = encoder.to(device).eval()
        self.layer = layer
        self.device = device

    @torch.no_grad()
    def __call__(self, wav: torch.Tensor) -> torch.Tensor:
        out = self.encoder(wav[None].to(self.device))
        return out.hidden_states[self.layer, 0].float().cpu()
