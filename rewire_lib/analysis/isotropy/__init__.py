"""Isotropy of an encoder's representation space, per layer, at frame or utterance level.

Measures (see `docs/method.md`, "Isotropy measures"); each takes an (n, d) matrix W whose rows are vectors:

- `isotropy_iw(W)`: I(W) of Mu and Viswanath (2018), as used by Mirror-BERT. Z(c) = sum_i exp(c . w_i) for
  both signs of every eigenvector c of W^T W; I(W) = min Z / max Z, in [0, 1] (1 = isotropic). Computed in log
  space. **Defaults: `center=False, normalize=False`** (the raw definition used by the paper and Mirror-BERT);
  a common mean drives the raw I(W) to 0, so the command also reports a centred I(W) beside it.
- `average_cosine(W)`: mean cosine similarity of random distinct pairs of rows (Ethayarajh, 2019); near 0 is
  isotropic, near 1 a narrow cone. With `groups`, only pairs from different groups (utterances) are used.
- `isoscore(W)`: IsoScore (Rudman et al., 2022), in [0, 1], with its intermediate quantities.
- `top_pc_share(W, k=1)`: share of the total variance carried by the top-k principal components
  (**default k=1**; 1/d when isotropic, near 1 when one direction dominates).

Streaming: `ReservoirSampler` keeps a uniform, seeded sample of at most `capacity` vectors from a stream of any
length (Algorithm R), so memory is bounded by capacity x layers x dim x 4 bytes whatever the dataset size
(default cap `DEFAULT_MAX_VECTORS` = 20,000 vectors per layer, i.e. about 60 MB per layer at d=768).
`measure_encoder(...)` runs an encoder over a manifest and returns one result row per (level, layer).

Command line: `python -m rewire_lib.analysis.isotropy --help` (`cli.py` of this package, started by its
`__main__.py`; the measures here never import the command line, so the two form no circle).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Union

import numpy as np
import torch

logger = logging.getLogger(__name__)

DEFAULT_MAX_VECTORS = 20_000
DEFAULT_PAIRS = 10_000
DEFAULT_TOP_K = 1
LEVELS = ("frame", "utterance")


class IsotropyError(ValueError):
    """Bad input to an isotropy measure or to the measurement of an encoder."""


# ----------------------------------------------------------------------------------------------- measures
def _as_matrix(W, name: str = "W", min_rows: int = 1) -> torch.Tensor:
    """float64 (n, d) tensor with finite values and at least `min_rows` rows, or IsotropyError."""
    if not isinstance(W, torch.Tensor):
        W = torch.as_tensor(np.asarray(W))
    if W.dim() != 2:
        raise IsotropyError(f"{name} must be a 2-D (n, d) matrix of row vectors, got shape {tuple(W.shape)}")
    if W.shape[0] < min_rows or W.shape[1] < 1:
        raise IsotropyError(f"{name} needs at least {min_rows} rows and 1 column, got shape {tuple(W.shape)}")
    W = W.detach().to("cpu", torch.float64)
    if not torch.isfinite(W).all():
        raise IsotropyError(f"{name} contains NaN or infinite values")
    return W


def preprocess(W, center: bool = False, normalize: bool = False) -> torch.Tensor:
    """float64 copy of W, centred (mean row subtracted) and then rows L2-normalised, as asked.

    Centring comes first, so that normalised rows are unit vectors around the origin of the centred cloud.
    """
    W = _as_matrix(W)
    if center:
        W = W - W.mean(dim=0, keepdim=True)
    if normalize:
        W = W / W.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return W


def isotropy_iw(W, center: bool = False, normalize: bool = False) -> float:
    """I(W) = min_c Z(c) / max_c Z(c), Z(c) = sum_i exp(c . w_i), c over +/- the eigenvectors of W^T W.

    W: (n, d) rows. `center` subtracts the mean row first; `normalize` then L2-normalises the rows
    (I(W) is not scale-invariant). Defaults False/False: the raw measure of Mu and Viswanath / Mirror-BERT.
    Note: with unit rows |c . w| <= 1, so I(W) >= exp(-2) ~= 0.135 even for a tight cone; the normalised
    scale is compressed to [0.135, 1].
    log Z(c) = logsumexp_i(c . w_i), so norms in the hundreds or thousands do not overflow; the ratio is
    exp(min log Z - max log Z), a float in [0, 1]. Z(c) != Z(-c), so both signs of each eigenvector count.
    """
    W = preprocess(W, center=center, normalize=normalize)
    # W^T W is symmetric: eigh is exact-symmetric, real and stable where a general eig is not.
    _, C = torch.linalg.eigh(W.T @ W)
    S = W @ C  # S[i, j] = c_j . w_i
    log_z = torch.cat([torch.logsumexp(S, dim=0), torch.logsumexp(-S, dim=0)])
    value = math.exp(float(log_z.min() - log_z.max()))
    return min(1.0, max(0.0, value))


def average_cosine(W, pairs: Optional[int] = DEFAULT_PAIRS, seed: int = 0, groups=None) -> float:
    """Mean cosine similarity of `pairs` random pairs of distinct rows of W (drawn with replacement).

    `groups`: optional length-n labels (e.g. utterance index); only pairs from different groups are drawn,
    so that neighbouring frames of one utterance do not inflate the value. `pairs=None` gives the exact mean
    over all such pairs, computed in O(n d) from sums of unit vectors. Returns a float in [-1, 1].
    """
    W = _as_matrix(W, min_rows=2)
    U = W / W.norm(dim=1, keepdim=True).clamp_min(1e-12)
    n = U.shape[0]
    g = None
    if groups is not None:
        g = torch.as_tensor(np.asarray(groups)).reshape(-1)
        if g.numel() != n:
            raise IsotropyError(f"groups has {g.numel()} labels for {n} rows")
        _, g = torch.unique(g, return_inverse=True)
        if int(g.max()) == 0:
            raise IsotropyError("average_cosine: every row is in the same group, no cross-group pair exists")
    if pairs is None:
        total = U.sum(dim=0)
        if g is None:
            num = total.dot(total) - (U * U).sum()
            count = n * (n - 1)
        else:
            per_group = torch.zeros(int(g.max()) + 1, U.shape[1], dtype=U.dtype).index_add_(0, g, U)
            sizes = torch.bincount(g).to(U.dtype)
            num = total.dot(total) - (per_group * per_group).sum()
            count = float(n * n - (sizes * sizes).sum())
        return float(num / count)
    if pairs < 1:
        raise IsotropyError(f"pairs must be >= 1 or None, got {pairs}")
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, size=pairs)
    j = (i + rng.integers(1, n, size=pairs)) % n  # uniform over the other n-1 rows
    if g is not None:
        gn = g.numpy()
        bad = np.flatnonzero(gn[i] == gn[j])
        for _ in range(1000):  # rejection sampling; the all-one-group case was refused above
            if bad.size == 0:
                break
            i[bad] = rng.integers(0, n, size=bad.size)
            j[bad] = (i[bad] + rng.integers(1, n, size=bad.size)) % n
            bad = bad[gn[i[bad]] == gn[j[bad]]]
        if bad.size:
            raise IsotropyError("average_cosine: could not draw enough cross-group pairs (one group dominates)")
    ii, jj = torch.from_numpy(i), torch.from_numpy(j)
    return float((U[ii] * U[jj]).sum(dim=1).mean())


def _covariance_eigenvalues(W: torch.Tensor) -> torch.Tensor:
    """Variances along the principal components of W (descending), i.e. eigenvalues of its covariance."""
    Wc = W - W.mean(dim=0, keepdim=True)
    cov = Wc.T @ Wc / max(W.shape[0] - 1, 1)
    return torch.linalg.eigvalsh(cov).clamp_min(0.0).flip(0)


@dataclass
class IsoScoreResult:
    """IsoScore and its steps (Rudman et al., 2022)."""

    score: float  # iota(X) in [0, 1]: 1 isotropic, 0 all variance in one dimension
    defect: float  # delta(X) in [0, 1]: distance of the normalised variance vector from the all-ones vector
    fraction_dims: float  # phi(X) in [1/d, 1]: fraction of dimensions used
    dims_used: float  # d * phi(X)


def isoscore_details(W, normalize: bool = False) -> IsoScoreResult:
    """IsoScore, step by step (Rudman et al., 2022, Algorithm 1).

    1. PCA-reorient the (centred) point cloud; 2. take the variance vector of its principal components;
    3. scale it to norm sqrt(d); 4. isotropy defect delta = ||v - 1|| / sqrt(2 (d - sqrt d));
    5. fraction of dimensions used phi = (d - delta^2 (d - sqrt d))^2 / d^2; 6. iota = (d phi - 1) / (d - 1).
    Steps 1-2 are the eigenvalues of the covariance matrix (variance along each principal axis).
    """
    W = preprocess(W, center=False, normalize=normalize)
    if W.shape[0] < 2:
        raise IsotropyError("IsoScore needs at least 2 rows")
    d = W.shape[1]
    var = _covariance_eigenvalues(W)
    norm = float(var.norm())
    if norm <= 0.0:
        raise IsotropyError("IsoScore is undefined for a point cloud with zero variance (all rows equal)")
    if d == 1:
        return IsoScoreResult(score=1.0, defect=0.0, fraction_dims=1.0, dims_used=1.0)
    v = var * (math.sqrt(d) / norm)
    defect = float((v - 1.0).norm()) / math.sqrt(2.0 * (d - math.sqrt(d)))
    defect = min(1.0, max(0.0, defect))
    phi = (d - defect**2 * (d - math.sqrt(d))) ** 2 / d**2
    score = (d * phi - 1.0) / (d - 1.0)
    return IsoScoreResult(score=min(1.0, max(0.0, score)), defect=defect, fraction_dims=phi, dims_used=d * phi)


def isoscore(W, normalize: bool = False) -> float:
    """IsoScore (Rudman et al., 2022) of the rows of W, in [0, 1]; see `isoscore_details`."""
    return isoscore_details(W, normalize=normalize).score


def top_pc_share(W, k: int = DEFAULT_TOP_K, normalize: bool = False) -> float:
    """Share of the total variance in the top-k principal components of W (centred), in [0, 1].

    Default k=1 (the dominant "rogue" direction); an isotropic cloud gives k/d.
    """
    W = preprocess(W, center=False, normalize=normalize)
    if k < 1:
        raise IsotropyError(f"top-k must be >= 1, got {k}")
    var = _covariance_eigenvalues(W)
    total = float(var.sum())
    if total <= 0.0:
        raise IsotropyError("top-PC share is undefined for a point cloud with zero variance")
    return float(var[:k].sum()) / total


def all_measures(W, center: bool = False, normalize: bool = False, pairs: Optional[int] = DEFAULT_PAIRS,
                 seed: int = 0, groups=None, top_k: int = DEFAULT_TOP_K) -> Dict[str, float]:
    """Every measure for one matrix, as the columns of the command's CSV.

    `iw` follows `center`/`normalize`; `iw_centred` is always centred (same `normalize`), so the raw and the
    centred I(W) can be read side by side. `avg_cosine` uses the raw rows (cosine ignores scale) and pairs
    rows from different `groups`. IsoScore and top-PC share centre by construction and follow `normalize`.
    """
    W = _as_matrix(W, min_rows=2)
    iso = isoscore_details(W, normalize=normalize)
    return {
        "iw": isotropy_iw(W, center=center, normalize=normalize),
        "iw_centred": isotropy_iw(W, center=True, normalize=normalize),
        "avg_cosine": average_cosine(W, pairs=pairs, seed=seed, groups=groups),
        "isoscore": iso.score,
        "isoscore_dims_used": iso.dims_used,
        "top_pc_share": top_pc_share(W, k=min(top_k, W.shape[1]), normalize=normalize),
    }


# ---------------------------------------------------------------------------------------------- streaming
class ReservoirSampler:
    """Uniform random sample of at most `capacity` items from a stream of unknown length (Algorithm R).

    Items are the rows of tensors passed to `add(x, groups)`: x is (m, ...) (for an encoder, (m, layers, d),
    so that every layer keeps the same frames). Memory is capacity x prod(x.shape[1:]) floats, whatever the
    stream length. Seeded; the sample depends only on the seed and the order of the items, not on how the
    stream is cut into batches (one uniform draw per item after the buffer is full, from one generator).

    Written by hand because neither torch nor numpy offers a streaming reservoir; vectorised per batch.
    """

    def __init__(self, capacity: int = DEFAULT_MAX_VECTORS, seed: int = 0, dtype=torch.float32):
        if capacity < 1:
            raise IsotropyError(f"reservoir capacity (max vectors) must be >= 1, got {capacity}")
        self.capacity = int(capacity)
        self.dtype = dtype
        self.seen = 0  # items offered so far
        self._rng = np.random.default_rng(seed)
        self._buf: Optional[torch.Tensor] = None
        self._groups = np.zeros(self.capacity, dtype=np.int64)

    def add(self, x: torch.Tensor, groups=None) -> None:
        x = x.detach()
        m = x.shape[0]
        if m == 0:
            return
        g = np.zeros(m, dtype=np.int64) if groups is None else np.asarray(groups, dtype=np.int64).reshape(-1)
        if g.size != m:
            raise IsotropyError(f"{g.size} group labels for {m} items")
        if self._buf is None:
            self._buf = torch.empty((self.capacity, *x.shape[1:]), dtype=self.dtype)
        elif tuple(x.shape[1:]) != tuple(self._buf.shape[1:]):
            raise IsotropyError(f"item shape {tuple(x.shape[1:])} differs from earlier {tuple(self._buf.shape[1:])}")
        x = x.to("cpu", self.dtype)
        # Fill phase: the first `capacity` items are kept as they come.
        n_fill = min(max(self.capacity - self.seen, 0), m)
        if n_fill:
            self._buf[self.seen:self.seen + n_fill] = x[:n_fill]
            self._groups[self.seen:self.seen + n_fill] = g[:n_fill]
        rest = m - n_fill
        if rest:
            # Item number t (0-based) replaces slot j ~ U{0..t} when j < capacity.
            t = np.arange(self.seen + n_fill, self.seen + m, dtype=np.float64)
            j = np.floor(self._rng.random(rest) * (t + 1)).astype(np.int64)
            hit = np.flatnonzero(j < self.capacity)
            if hit.size:
                # Several items of this batch may hit one slot: the last one wins, as in the sequential loop.
                slots_rev = j[hit][::-1]
                _, first_rev = np.unique(slots_rev, return_index=True)
                keep = hit[::-1][first_rev]
                src = torch.from_numpy(keep + n_fill)
                self._buf[torch.from_numpy(j[keep])] = x[src]
                self._groups[j[keep]] = g[keep + n_fill]
        self.seen += m

    def __len__(self) -> int:
        return min(self.seen, self.capacity)

    @property
    def samples(self) -> torch.Tensor:
        """The kept items, (min(seen, capacity), ...)."""
        if self._buf is None:
            raise IsotropyError("the reservoir is empty: no vector was collected")
        return self._buf[: len(self)]

    @property
    def groups(self) -> np.ndarray:
        return self._groups[: len(self)].copy()


# ----------------------------------------------------------------------------------------------- encoders
ManifestRows = Union[str, Path, Sequence[dict]]


def _read_rows(manifest: ManifestRows, data_root: Optional[str] = None) -> List[dict]:
    """Manifest rows (dicts with ID and wav), from a CSV path or given rows; clear errors on bad input."""
    if isinstance(manifest, (str, Path)):
        path = Path(manifest)
        if not path.is_file():
            raise IsotropyError(f"manifest {path} does not exist")
        if not path.read_bytes().strip():
            raise IsotropyError(f"manifest {path} is empty (no header, no rows): nothing to measure")
        try:
            from rewire_lib.data.manifest import ManifestError, read_manifest
        except ImportError:  # fallback where the shared reader is absent
            read_manifest = None
        if read_manifest is not None:
            try:
                rows = list(read_manifest(path, data_root=data_root))
            except ManifestError as e:
                raise IsotropyError(f"bad manifest: {e}") from e
        else:
            import csv
            with open(path, newline="") as f:
                reader = csv.DictReader(f)
                missing = {"ID", "duration", "wav"} - set(reader.fieldnames or [])
                if reader.fieldnames and missing:
                    raise IsotropyError(f"manifest {path}: missing column(s) {sorted(missing)}; need ID,duration,wav")
                rows = list(reader)
        where = f"manifest {path}"
    else:
        rows, where = list(manifest), "manifest rows"
    if not rows:
        raise IsotropyError(f"{where} has no rows (an empty manifest): nothing to measure")
    out = []
    for k, row in enumerate(rows):
        if "wav" not in row or not row["wav"]:
            raise IsotropyError(f"{where}, row {k + 1}: no 'wav' value")
        row = dict(row)
        row.setdefault("ID", str(k))
        wav = str(row["wav"])
        if "$data_root" in wav:
            if data_root is None:
                raise IsotropyError(f"{where}, row {k + 1} ({row['ID']}): wav uses $data_root but no data_root given")
            wav = wav.replace("$data_root", str(data_root))
        row["wav"] = wav
        out.append(row)
    return out


def _duration(row: dict) -> float:
    try:
        return float(row.get("duration", 0.0))
    except (TypeError, ValueError):
        return 0.0


def load_encoder(source, **options):
    """A `SpeechEncoder` from a hub id or a local folder (an encoder object is returned as is).

    A missing folder or a non-encoder raises the loader's own `EncoderLoadError` (it names the source and
    what was expected); any other loading failure is wrapped in an IsotropyError naming the source.
    """
    if not isinstance(source, (str, Path)):
        return source
    from rewire_lib.models.encoder import EncoderLoadError, SpeechEncoder

    try:
        return SpeechEncoder.from_pretrained(source, **options)
    except EncoderLoadError:
        raise
    except Exception as e:  # noqa: BLE001 - any other loader failure becomes one clear message
        raise IsotropyError(f"cannot load encoder {str(source)!r}: {type(e).__name__}: {e}") from e


def resolve_layers(layers: Optional[Iterable[int]], num_layers: int, encoder_name: str = "encoder") -> List[int]:
    """Layer indices to measure (all by default); an index outside 0..num_layers-1 is a clear error."""
    if layers is None:
        return list(range(num_layers))
    out = []
    for layer in layers:
        layer = int(layer)
        if not 0 <= layer < num_layers:
            raise IsotropyError(f"layer {layer} is out of range for {encoder_name}: it has {num_layers} hidden "
                                f"states, valid layers are 0..{num_layers - 1}")
        if layer not in out:
            out.append(layer)
    if not out:
        raise IsotropyError("no layer selected")
    return out


def _check_levels(level: str) -> List[str]:
    if level == "both":
        return list(LEVELS)
    if level not in LEVELS:
        raise IsotropyError(f"level must be 'frame', 'utterance' or 'both', got {level!r}")
    return [level]


@torch.no_grad()
def collect_vectors(encoder, rows: Sequence[dict], levels: Sequence[str], layers: Sequence[int],
                    max_vectors: int = DEFAULT_MAX_VECTORS, seed: int = 0, batch_size: int = 8,
                    device: Union[str, torch.device] = "cpu", progress: bool = True) -> Dict[str, dict]:
    """Run the encoder over `rows` and keep a bounded, seeded sample per level: {level: {reservoir, ...}}.

    Utterances are batched sorted by duration (less padding), padded, with relative lengths. Frame level
    offers every valid frame (frame_mask) to the reservoir; utterance level the masked mean over frames.
    Unreadable audio files are skipped with a warning and counted.
    """
    from rewire_lib.data.audio import load_audio
    from rewire_lib.models.featurizer import masked_mean

    if batch_size < 1:
        raise IsotropyError(f"batch size must be >= 1, got {batch_size}")
    reservoirs = {lvl: ReservoirSampler(max_vectors, seed=seed) for lvl in levels}
    order = sorted(range(len(rows)), key=lambda k: _duration(rows[k]))
    encoder.eval()
    if hasattr(encoder, "to"):
        encoder.to(device)
    layer_idx = torch.as_tensor(list(layers), dtype=torch.long)
    min_samples = int(encoder.min_samples()) if hasattr(encoder, "min_samples") else 1
    skipped, used = [], 0
    try:
        from tqdm import tqdm
        bar = tqdm(total=len(order), desc="isotropy", unit="utt", disable=not progress)
    except ImportError:  # pragma: no cover
        bar = None
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        wavs, ids = [], []
        for k in idx:
            try:
                wav = load_audio(rows[k]["wav"], target_sr=16000)
                if wav.numel() < min_samples:
                    raise IsotropyError(f"{wav.numel()} samples, shorter than the encoder's receptive field "
                                        f"({min_samples} samples)")
            except Exception as e:  # noqa: BLE001 - AudioError, too short: log, count, go on
                logger.warning("skipping %s (%s): %s", rows[k].get("ID", k), rows[k]["wav"], e)
                skipped.append(str(rows[k].get("ID", k)))
                continue
            wavs.append(wav.reshape(-1).float())
            ids.append(k)
        if bar is not None:
            bar.update(len(idx))
        if not wavs:
            continue
        longest = max(w.numel() for w in wavs)
        batch = torch.zeros(len(wavs), longest)
        for b, w in enumerate(wavs):
            batch[b, : w.numel()] = w
        lens = torch.tensor([w.numel() / longest for w in wavs])
        out = encoder(batch.to(device), lens.to(device))
        hs = out.hidden_states.index_select(0, layer_idx.to(out.hidden_states.device))  # [L', B, T, D]
        mask = out.frame_mask.bool()
        utt = torch.as_tensor(ids, dtype=torch.long)
        if "frame" in reservoirs:
            b_idx, t_idx = mask.nonzero(as_tuple=True)  # valid frames, utterance by utterance
            frames = hs[:, b_idx, t_idx, :].permute(1, 0, 2)  # [N, L', D]
            reservoirs["frame"].add(frames.float().cpu(), groups=utt[b_idx.cpu()].numpy())
        if "utterance" in reservoirs:
            pooled = torch.stack([masked_mean(h, mask) for h in hs], dim=1)  # [B, L', D]
            reservoirs["utterance"].add(pooled.float().cpu(), groups=utt.numpy())
        used += len(wavs)
    if bar is not None:
        bar.close()
    if used == 0:
        raise IsotropyError(f"no utterance could be read ({len(skipped)} skipped): nothing to measure")
    return {lvl: {"reservoir": r, "n_utterances": used, "n_skipped": len(skipped), "skipped": skipped[:20]}
            for lvl, r in reservoirs.items()}


def measure_encoder(encoder, manifest: ManifestRows, level: str = "frame", max_vectors: int = DEFAULT_MAX_VECTORS,
                    seed: int = 0, layers: Optional[Iterable[int]] = None, batch_size: int = 8,
                    center: bool = False, normalize: bool = False, pairs: Optional[int] = DEFAULT_PAIRS,
                    top_k: int = DEFAULT_TOP_K, device: Union[str, torch.device] = "cpu",
                    data_root: Optional[str] = None, encoder_name: Optional[str] = None,
                    progress: bool = True) -> List[dict]:
    """Isotropy of `encoder` (a SpeechEncoder, hub id or folder) on a manifest (CSV path or row dicts).

    level: 'frame' (every valid frame), 'utterance' (mean-pooled) or 'both' (one pass, both levels).
    At most `max_vectors` vectors per layer and level are kept (uniform reservoir sample, seeded by `seed`).
    Returns one dict per (level, layer): encoder, layer, level, n_vectors, n_seen, dim, iw, iw_centred,
    avg_cosine, isoscore, isoscore_dims_used, top_pc_share, top_k, centred, normalised, max_vectors, seed,
    n_utterances, n_skipped.
    """
    levels = _check_levels(level)
    rows = _read_rows(manifest, data_root=data_root)
    name = encoder_name or (str(encoder) if isinstance(encoder, (str, Path)) else type(encoder).__name__)
    enc = load_encoder(encoder)
    num_layers = int(getattr(enc, "num_layers"))
    chosen = resolve_layers(layers, num_layers, name)
    collected = collect_vectors(enc, rows, levels, chosen, max_vectors=max_vectors, seed=seed,
                                batch_size=batch_size, device=device, progress=progress)
    results = []
    for lvl in levels:
        info = collected[lvl]
        res = info["reservoir"]
        samples, groups = res.samples, res.groups  # [n, L', D]
        if samples.shape[0] < 2:
            raise IsotropyError(f"{name}, {lvl} level: only {samples.shape[0]} vector(s) collected, need >= 2")
        if len(np.unique(groups)) < 2:
            groups = None  # a single utterance: pair its frames with each other
        if samples.shape[0] < samples.shape[-1]:
            logger.warning("%s, %s level: %d vectors for %d dimensions; isotropy estimates need far more "
                           "vectors than dimensions", name, lvl, samples.shape[0], samples.shape[-1])
        for pos, layer in enumerate(chosen):
            m = all_measures(samples[:, pos, :], center=center, normalize=normalize, pairs=pairs, seed=seed,
                             groups=groups, top_k=top_k)
            results.append({
                "encoder": name, "layer": layer, "level": lvl, "n_vectors": int(samples.shape[0]),
                "n_seen": int(res.seen), "dim": int(samples.shape[-1]), **m, "top_k": int(top_k),
                "centred": bool(center), "normalised": bool(normalize), "max_vectors": int(max_vectors),
                "seed": int(seed), "n_utterances": info["n_utterances"], "n_skipped": info["n_skipped"],
            })
    return results

