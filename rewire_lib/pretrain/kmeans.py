"""k-means in torch: k-means++ seeding then Lloyd iterations, on CPU or GPU, seeded.

Written here instead of using scikit-learn (not a dependency of the project); a few thousand to a few
hundred thousand 39-dim MFCC frames cluster in seconds.
"""
from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)


def _sq_dist(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances [N, K] between rows of x [N, D] and c [K, D]."""
    return (x.pow(2).sum(1, keepdim=True) - 2.0 * x @ c.T + c.pow(2).sum(1)[None, :]).clamp_min_(0.0)


def assign(x: torch.Tensor, centroids: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
    """Index of the nearest centroid for each row of x, computed in chunks (bounded memory)."""
    out = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
    for start in range(0, x.shape[0], chunk):
        out[start:start + chunk] = _sq_dist(x[start:start + chunk], centroids).argmin(dim=1)
    return out


def kmeans_plus_plus(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding: each next centre drawn with probability proportional to squared distance."""
    n = x.shape[0]
    first = int(torch.randint(n, (1,), generator=generator))
    centroids = [x[first]]
    closest = _sq_dist(x, x[first:first + 1])[:, 0]
    for _ in range(1, k):
        total = float(closest.sum())
        if total <= 0.0:  # fewer distinct points than k: duplicate a random point
            idx = int(torch.randint(n, (1,), generator=generator))
        else:
            idx = int(torch.multinomial((closest / total).cpu(), 1, generator=generator))
        centroids.append(x[idx])
        closest = torch.minimum(closest, _sq_dist(x, x[idx:idx + 1])[:, 0])
    return torch.stack(centroids)


def kmeans(x: torch.Tensor, k: int, iters: int = 50, seed: int = 0, init_samples: int = 20000,
           tol: float = 1e-4) -> tuple[torch.Tensor, float]:
    """Cluster rows of x [N, D] into k groups. Returns (centroids [k, D], mean squared distance).

    Seeding uses at most `init_samples` random rows; Lloyd iterations use all rows and stop when the
    inertia improves by less than `tol` (relative). Empty clusters are re-seeded with the point
    farthest from its centre.
    """
    if x.dim() != 2:
        raise ValueError(f"kmeans expects an [N, D] matrix, got shape {tuple(x.shape)}")
    if x.shape[0] < k:
        raise ValueError(f"kmeans: {x.shape[0]} points cannot make {k} clusters")
    if not torch.isfinite(x).all():
        raise ValueError("kmeans: the features contain NaN or Inf")
    x = x.float()
    generator = torch.Generator().manual_seed(seed)
    pick = torch.randperm(x.shape[0], generator=generator)[:init_samples].to(x.device)
    centroids = kmeans_plus_plus(x[pick], k, generator)
    previous = float("inf")
    inertia = previous
    for it in range(iters):
        labels = assign(x, centroids)
        sums = torch.zeros_like(centroids).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=k).to(x.dtype)
        empty = counts == 0
        centroids = torch.where(empty[:, None], centroids, sums / counts.clamp_min(1.0)[:, None])
        dist = _sq_dist(x, centroids).gather(1, assign(x, centroids)[:, None])[:, 0]
        if empty.any():
            far = dist.topk(int(empty.sum())).indices
            centroids[empty] = x[far]
        inertia = float(dist.mean())
        if previous - inertia <= tol * max(previous, 1e-12):
            break
        previous = inertia
    logger.info("k-means: k=%d on %d points, %d iterations, inertia %.4f", k, x.shape[0], it + 1, inertia)
    return centroids, inertia
