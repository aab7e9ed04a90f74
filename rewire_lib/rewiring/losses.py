"""Contrastive loss of the rewiring stage."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def nt_xent(view_a: torch.Tensor, view_b: torch.Tensor, temperature: float = 0.04) -> torch.Tensor:
    """NT-Xent (SimCLR's normalised temperature-scaled cross entropy) over 2N embeddings.

    Row i of `view_a` and row i of `view_b` are a positive pair; each of the 2N embeddings has its
    twin as positive and the other 2N-2 as negatives. Written with torch ops because no kept
    library of ours (SpeechBrain, transformers) ships this loss.
    """
    if view_a.shape != view_b.shape or view_a.dim() != 2:
        raise ValueError(f"Expected two [N, D] tensors of equal shape, got {tuple(view_a.shape)} and {tuple(view_b.shape)}")
    n = view_a.shape[0]
    if n < 2:
        raise ValueError("NT-Xent needs at least 2 pairs in a batch (the other pairs are the negatives)")
    z = F.normalize(torch.cat([view_a, view_b], dim=0), dim=1)
    logits = z @ z.t() / temperature
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, targets)
