"""Centring and PCA whitening of frozen encoder features: the "isotropy for free" control.

Rewiring makes an encoder's space more isotropic by training it. A linear transform fitted on the training
split does the same at no cost, so the study runs the base encoder's features centred and whitened as one
more encoder row: rewiring has to beat it to be worth its training.

`FeatureWhitener(mode="centre" | "whiten")`, fitted by streaming over batches (`update(x, mask)` then
`finalize()`, or `fit(batches)`): running mean and scatter in float64, merged batch by batch (Chan et al.),
so it never holds all frames. Features are [..., D] (frames or pooled vectors); with `per_layer=True` the
first dimension is the layer and every layer gets its own statistics ([L, ..., D], as the encoder's stacked
hidden states). `transform(x)` keeps the shape and dtype. `state_dict()` is a plain dict of tensors and
numbers (torch.save-able); `FeatureWhitener.from_state_dict(d)` restores it, fitted or part-way through.

Whitening: with the covariance's eigenvalues lam and eigenvectors V (after optional shrinkage towards
mean(lam) I), x -> V diag(1 / sqrt(lam + eps * max(lam))) V^T (x - mean) ("ZCA": PCA whitening rotated back,
so each layer keeps its own axes and a weighted sum of layers stays meaningful; `zca=False` leaves the
output in principal-component order). Directions the training data does not span (D > N, rank deficiency:
lam <= rank_tol * max(lam)) are projected out rather than blown up by 1 / sqrt(eps). `eps` only guards the
arithmetic (kept directions are whitened to within 1 %); `shrinkage` is the statistical regulariser, worth
setting when there are not many more training vectors than dimensions.
"""
from __future__ import annotations

from typing import Iterable, Optional

import torch

MODES = ("centre", "whiten")
STATE_VERSION = 1


class WhiteningError(ValueError):
    """Bad input to the whitener: wrong shape, non-finite features, unfitted use, or a bad setting."""


class FeatureWhitener:
    """Per-layer centring or PCA whitening fitted on training features, streamed batch by batch."""

    def __init__(self, mode: str = "whiten", per_layer: bool = False, eps: float = 1e-9, shrinkage: float = 0.0,
                 rank_tol: float = 1e-7, zca: bool = True):
        if mode not in MODES:
            raise WhiteningError(f"mode must be one of {MODES}, got '{mode}'")
        if eps < 0 or not 0.0 <= shrinkage <= 1.0 or rank_tol < 0:
            raise WhiteningError(f"need eps >= 0, 0 <= shrinkage <= 1, rank_tol >= 0; got eps={eps}, "
                                 f"shrinkage={shrinkage}, rank_tol={rank_tol}")
        self.mode, self.per_layer, self.zca = mode, bool(per_layer), bool(zca)
        self.eps, self.shrinkage, self.rank_tol = float(eps), float(shrinkage), float(rank_tol)
        self.count = 0  # vectors seen (per layer: every layer sees the same frames)
        self._mean: Optional[torch.Tensor] = None  # [G, D] float64 running mean
        self._scatter: Optional[torch.Tensor] = None  # [G, D, D] float64 sum of centred outer products
        self.mean: Optional[torch.Tensor] = None  # [G, D] fitted mean
        self.matrix: Optional[torch.Tensor] = None  # [G, D, D] whitening map, y = (x - mean) @ matrix
        self.eigenvalues: Optional[torch.Tensor] = None  # [G, D] covariance spectrum, descending
        self.rank: Optional[torch.Tensor] = None  # [G] directions kept

    # --------------------------------------------------------------------------------------- shapes
    def _groups(self, x: torch.Tensor, mask: Optional[torch.Tensor], what: str) -> torch.Tensor:
        """x as [G, N, D] (G = layers or 1), rows where `mask` is False removed."""
        if not isinstance(x, torch.Tensor):
            x = torch.as_tensor(x)
        if x.dim() < (2 if self.per_layer else 1):
            layout = "[L, ..., D] (layer axis first)" if self.per_layer else "[..., D]"
            raise WhiteningError(f"{what}: features must be {layout}, got shape {tuple(x.shape)}")
        g = x if self.per_layer else x.unsqueeze(0)
        lead = g.shape[1:-1]
        g = g.reshape(g.shape[0], -1, g.shape[-1])
        if mask is not None:
            mask = torch.as_tensor(mask, device=x.device).bool()
            if tuple(mask.shape) != tuple(lead):
                raise WhiteningError(f"{what}: mask shape {tuple(mask.shape)} must equal the features' shape "
                                     f"without {'the layer axis and ' * self.per_layer}D, {tuple(lead)}")
            g = g[:, mask.reshape(-1)]
        return g

    # ------------------------------------------------------------------------------------------ fit
    def update(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> "FeatureWhitener":
        """Add a batch of training features ([..., D], or [L, ..., D] per layer); `mask` marks valid frames."""
        if self.mean is not None:
            raise WhiteningError("update() after finalize(): make a new FeatureWhitener to fit again")
        g = self._groups(x, mask, "update").detach().to("cpu", torch.float64)
        n = g.shape[1]
        if n == 0:
            return self
        if not torch.isfinite(g).all():
            raise WhiteningError("update: features contain NaN or infinite values")
        if self._mean is not None and tuple(g.shape[::2]) != tuple(self._mean.shape):
            raise WhiteningError(f"update: {g.shape[0]} layer(s) of dim {g.shape[-1]}, earlier batches had "
                                 f"{self._mean.shape[0]} of dim {self._mean.shape[1]}")
        batch_mean = g.mean(dim=1)
        centred = g - batch_mean[:, None]
        batch_scatter = centred.transpose(1, 2) @ centred if self.mode == "whiten" else None
        if self._mean is None:
            self._mean, self._scatter, self.count = batch_mean, batch_scatter, n
            return self
        total = self.count + n
        delta = batch_mean - self._mean
        self._mean = self._mean + delta * (n / total)
        if self.mode == "whiten":  # Chan et al. pairwise merge of scatter matrices
            self._scatter = (self._scatter + batch_scatter
                             + delta[:, :, None] * delta[:, None, :] * (self.count * n / total))
        self.count = total
        return self

    def finalize(self) -> "FeatureWhitener":
        """Turn the running statistics into the fitted mean and map; needs >= 2 vectors."""
        if self.mean is not None:
            return self
        if self._mean is None or self.count < 2:
            raise WhiteningError(f"finalize: need at least 2 training vectors, got {self.count}")
        groups, dim = self._mean.shape
        self.mean = self._mean.clone()
        if self.mode == "centre":  # no map: transform only subtracts the mean
            self.rank = torch.full((groups,), dim)
        else:
            cov = self._scatter / (self.count - 1)
            lam, vec = torch.linalg.eigh(cov)  # ascending
            lam, vec = lam.flip(-1).clamp_min(0.0), vec.flip(-1)
            self.eigenvalues = lam.clone()
            top = lam[:, :1]
            kept = lam > self.rank_tol * top
            shrunk = (1.0 - self.shrinkage) * lam + self.shrinkage * lam.mean(dim=-1, keepdim=True)
            scale = torch.where(kept, (shrunk + self.eps * top).rsqrt(), torch.zeros_like(lam))
            self.matrix = vec * scale[:, None, :]  # columns: principal directions, scaled
            if self.zca:
                self.matrix = self.matrix @ vec.transpose(1, 2)
            self.rank = kept.sum(dim=-1)
        self._scatter = None
        return self

    def fit(self, batches: Iterable) -> "FeatureWhitener":
        """update() on every batch (a tensor, or a (features, mask) pair), then finalize()."""
        for batch in batches:
            if isinstance(batch, (tuple, list)):
                self.update(*batch)
            else:
                self.update(batch)
        return self.finalize()

    # -------------------------------------------------------------------------------------- transform
    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """Centred / whitened features, same shape and dtype as x ([..., D], or [L, ..., D] per layer)."""
        if self.mean is None:
            raise WhiteningError("transform before the whitener was fitted: call fit() or update() + finalize()")
        if not isinstance(x, torch.Tensor):
            x = torch.as_tensor(x)
        groups, dim = self.mean.shape
        if x.shape[-1] != dim or (self.per_layer and (x.dim() < 2 or x.shape[0] != groups)):
            want = f"[{groups}, ..., {dim}]" if self.per_layer else f"[..., {dim}]"
            raise WhiteningError(f"transform: features of shape {tuple(x.shape)}, fitted on {want}")
        work = torch.float64 if x.dtype == torch.float64 else torch.float32
        g = (x if self.per_layer else x.unsqueeze(0)).to(work)
        lead = g.shape[1:-1]
        g = g.reshape(groups, -1, dim)
        mean = self.mean.to(x.device, work)[:, None, :]
        out = g - mean
        if self.mode == "whiten":
            out = out @ self.matrix.to(x.device, work)
        out = out.reshape(groups, *lead, dim).to(x.dtype)
        return out if self.per_layer else out[0]

    __call__ = transform

    # ------------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """Settings and statistics as a torch.save-able dict (fitted, or the running sums part-way)."""
        state = {"version": STATE_VERSION, "mode": self.mode, "per_layer": self.per_layer, "eps": self.eps,
                 "shrinkage": self.shrinkage, "rank_tol": self.rank_tol, "zca": self.zca, "count": self.count}
        if self.mean is not None:
            state.update(mean=self.mean, matrix=self.matrix, eigenvalues=self.eigenvalues, rank=self.rank)
        else:
            state.update(running_mean=self._mean, running_scatter=self._scatter)
        return state

    @classmethod
    def from_state_dict(cls, state: dict) -> "FeatureWhitener":
        if state.get("version") != STATE_VERSION:
            raise WhiteningError(f"whitener state version {state.get('version')!r}, expected {STATE_VERSION}")
        try:
            w = cls(mode=state["mode"], per_layer=state["per_layer"], eps=state["eps"],
                    shrinkage=state["shrinkage"], rank_tol=state["rank_tol"], zca=state["zca"])
            w.count = int(state["count"])
            if "mean" in state:
                w.mean, w.matrix = state["mean"], state["matrix"]
                w.eigenvalues, w.rank = state["eigenvalues"], state["rank"]
            else:
                w._mean, w._scatter = state["running_mean"], state["running_scatter"]
        except KeyError as err:
            raise WhiteningError(f"whitener state has no '{err.args[0]}' entry") from None
        return w
