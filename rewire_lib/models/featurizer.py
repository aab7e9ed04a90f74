"""SUPERB-style layer featurizer and padding-aware pooling."""
from __future__ import annotations

import torch


class WeightedLayerSum(torch.nn.Module):
    """A softmax-weighted sum of an encoder's hidden states (weights start equal, i.e. the mean),
    or a fixed single layer when `layer` is given (then nothing is learned)."""

    def __init__(self, num_layers: int, layer: int | None = None, learnable: bool = True):
        super().__init__()
        if layer is not None and not -num_layers <= layer < num_layers:
            raise ValueError(f"layer={layer} is out of range for an encoder with {num_layers} hidden states "
                             f"(valid: 0..{num_layers - 1}, or negative from the top)")
        self.num_layers = num_layers
        self.layer = layer
        self.logits = torch.nn.Parameter(torch.zeros(num_layers), requires_grad=learnable and layer is None)

    def weights(self) -> torch.Tensor:
        if self.layer is not None:
            weights = torch.zeros(self.num_layers, device=self.logits.device)
            weights[self.layer] = 1.0
            return weights
        return torch.softmax(self.logits, dim=0)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """hidden_states: [L, B, T, D] -> [B, T, D]."""
        if hidden_states.shape[0] != self.num_layers:
            raise ValueError(f"Expected {self.num_layers} hidden states, got {hidden_states.shape[0]}")
        if self.layer is not None:
            return hidden_states[self.layer]
        weights = self.weights().to(hidden_states.dtype)
        return torch.einsum("l,lbtd->btd", weights, hidden_states)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over time of x [B, T, D] using only frames where mask [B, T] is True: padding never leaks in."""
    mask = mask.to(x.dtype).unsqueeze(-1)
    return (x * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
