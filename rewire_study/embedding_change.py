"""What rewiring changed in an encoder, seen on held-out audio: alignment and uniformity (Wang and Isola,
2020) of pooled utterance embeddings, with twin views of the held-out clips as the positive pairs.

Pooled embedding: the mean over frames of the mean over hidden states (every layer weighted alike, as the
downstream featurizer starts). Twin view: the same clip with one zeroed span (rewire_lib.views.pairs.TwinView,
seeded per clip), so every encoder sees the same pairs.
"""
from __future__ import annotations

from typing import List, Sequence

import torch

from rewire_lib.analysis.embedding_metrics import alignment, uniformity

MASK_FRACTION = 0.2


def pooled_embeddings(encoder, wavs: Sequence[torch.Tensor], batch_size: int = 8) -> torch.Tensor:
    """[N, D] mean over frames of the mean over hidden states, for each waveform (padded batches, masked)."""
    from speechbrain.utils.data_utils import batch_pad_right

    from rewire_lib.models.featurizer import masked_mean

    out_rows: List[torch.Tensor] = []
    encoder.eval()
    with torch.no_grad():
        for start in range(0, len(wavs), batch_size):
            batch, lens = batch_pad_right(list(wavs[start:start + batch_size]))  # zeros, relative lengths
            out = encoder(batch, lens)
            mean_layers = out.hidden_states.float().mean(dim=0)  # [B, T, D]
            out_rows.append(masked_mean(mean_layers, out.frame_mask.bool()))
    return torch.cat(out_rows)


def twin_pairs(wavs: Sequence[torch.Tensor], ids: Sequence[str], seed: int = 0) -> List[torch.Tensor]:
    """The twin positive of each clip (a zeroed span), seeded by (seed, clip ID)."""
    from rewire_lib.views.pairs import TwinView, pair_generator

    view = TwinView(mask_fraction=MASK_FRACTION, num_spans=1)
    return [view(w, generator=pair_generator(seed, 0, uid))[1] for w, uid in zip(wavs, ids)]


def load_clips(rows: Sequence[dict], min_samples: int) -> tuple:
    """(waveforms at 16 kHz, IDs) of the rows long enough for the encoder; unreadable ones raise (they were
    read by the isotropy measurement of the same manifest already)."""
    from rewire_lib.data.audio import load_audio

    wavs, ids = [], []
    for r in rows:
        w = load_audio(r["wav"], target_sr=16000).reshape(-1).float()
        if w.numel() >= min_samples:
            wavs.append(w)
            ids.append(str(r["ID"]))
    return wavs, ids


def measures(anchors: torch.Tensor, positives: torch.Tensor, n_clips: int) -> dict:
    """Alignment, uniformity and the isotropy of the pooled held-out embeddings (IsoScore, average cosine)."""
    from rewire_lib.analysis.isotropy import average_cosine, isoscore

    return {"alignment": alignment(anchors, positives), "uniformity": uniformity(anchors),
            "isoscore": isoscore(anchors), "avg_cosine": average_cosine(anchors), "n_clips": n_clips,
            "positive_pairs": f"twin views (one zeroed span of {MASK_FRACTION:g} of the clip)",
            "pooling": "mean over frames of the mean over hidden states"}


def alignment_uniformity(encoder_dir: str, rows: Sequence[dict], seed: int = 0,
                         fit_rows: Sequence[dict] = (), transforms: Sequence[str] = (),
                         shrinkage: float = 0.1) -> dict:
    """{"model": measures of the encoder on held-out clips, and per transform in `transforms` ("centre",
    "whiten"): the same measures after rewire_lib.analysis.whitening.FeatureWhitener fit on the pooled embeddings of
    `fit_rows` (training clips, never the held-out ones)}."""
    from rewire_lib.analysis.whitening import FeatureWhitener
    from rewire_lib.models.encoder import SpeechEncoder

    encoder = SpeechEncoder.from_pretrained(encoder_dir)
    wavs, ids = load_clips(rows, int(encoder.min_samples()))
    if len(wavs) < 2:
        raise ValueError(f"alignment/uniformity need at least 2 clips long enough for the encoder, got {len(wavs)}")
    anchors = pooled_embeddings(encoder, wavs)
    positives = pooled_embeddings(encoder, twin_pairs(wavs, ids, seed))
    out = {"model": measures(anchors, positives, len(wavs))}
    if transforms and fit_rows:
        fit_wavs, _ = load_clips(fit_rows, int(encoder.min_samples()))
        fit = pooled_embeddings(encoder, fit_wavs)
        for mode in transforms:
            w = FeatureWhitener(mode=mode, shrinkage=shrinkage).fit([fit])
            out[mode] = {**measures(w.transform(anchors), w.transform(positives), len(wavs)),
                         "fit_clips": len(fit_wavs), "shrinkage": shrinkage}
    return out
