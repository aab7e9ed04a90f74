"""Alignment and uniformity of embeddings (Wang and Isola, 2020), to see what rewiring did to an encoder.

Contrastive rewiring pulls two views of one utterance together (alignment) and spreads different utterances
over the unit sphere (uniformity). Both are computed on L2-normalised embeddings, as in the paper:

- `alignment(x, y, alpha=2)` = mean_i ||f(x_i) - f(y_i)||^alpha over positive pairs (rows of x and y):
  0 when both views map to the same point, at most 2^alpha; lower is better.
- `uniformity(x, t=2)` = log mean_{i<j} exp(-t ||f(x_i) - f(x_j)||^2) over all distinct pairs: 0 when
  every embedding is the same point, more negative the more evenly they cover the sphere; lower is better.

Inputs are [N, D] tensors or arrays (e.g. mean-pooled utterance embeddings); results are Python floats.
"""
from __future__ import annotations

import math

import numpy as np
import torch


class EmbeddingMetricError(ValueError):
    """Bad input to alignment / uniformity: wrong shape, too few rows, or non-finite values."""


def _unit_rows(x, name: str, min_rows: int = 1) -> torch.Tensor:
    """float64 [N, D] with L2-normalised rows, or EmbeddingMetricError naming `name`."""
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(np.asarray(x))
    if x.dim() != 2 or x.shape[0] < min_rows or x.shape[1] < 1:
        raise EmbeddingMetricError(f"{name} must be an [N, D] matrix with N >= {min_rows}, got shape {tuple(x.shape)}")
    x = x.detach().to("cpu", torch.float64)
    if not torch.isfinite(x).all():
        raise EmbeddingMetricError(f"{name} contains NaN or infinite values")
    norms = x.norm(dim=1, keepdim=True)
    if (norms == 0).any():
        raise EmbeddingMetricError(f"{name} has {int((norms == 0).sum())} all-zero row(s): no direction to normalise")
    return x / norms


def alignment(x, y, alpha: float = 2.0) -> float:
    """Mean ||f(x_i) - f(y_i)||^alpha over positive pairs, f = L2 normalisation (Wang and Isola, 2020)."""
    fx, fy = _unit_rows(x, "x"), _unit_rows(y, "y")
    if fx.shape != fy.shape:
        raise EmbeddingMetricError(f"x {tuple(fx.shape)} and y {tuple(fy.shape)} must pair row by row")
    if alpha <= 0:
        raise EmbeddingMetricError(f"alpha must be > 0, got {alpha}")
    return float((fx - fy).norm(dim=1).pow(alpha).mean())


def uniformity(x, t: float = 2.0) -> float:
    """log of the mean Gaussian potential exp(-t ||f(x_i) - f(x_j)||^2) over distinct pairs i < j.

    Computed as logsumexp - log(pairs), so a large t on a well spread set does not underflow to log(0).
    """
    fx = _unit_rows(x, "x", min_rows=2)
    if t <= 0:
        raise EmbeddingMetricError(f"t must be > 0, got {t}")
    sq = torch.pdist(fx, p=2).pow(2)
    return float(torch.logsumexp(-t * sq, dim=0) - math.log(sq.numel()))
