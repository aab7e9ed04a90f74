"""Frozen-encoder feature cache: each utterance's stacked hidden states [L+1, T, D] are computed
once and reused in later epochs and evaluations.

Keys are content-addressed so that nothing stale is ever reused:
- the encoder's fingerprint (`encoder_fingerprint`): a hash of its class, config and every
  tensor of its state dict, plus the input preparation (normalisation, attention mask);
- the audio file: absolute path, size and modification time (ns);
- the sample rate and any other setting that changes the features (`settings`).

Storage: a dict in memory (default), or one `.pt` file per utterance under
`<cache_dir>/<encoder fingerprint[:16]>/<key[:2]>/<key>.pt` (a memory layer sits in front).
Disk writes are atomic (`rewire_lib.files.atomic`: a temporary sibling, then `os.replace`), so two processes
filling the same cache at once can only ever both write a complete, identical file; a file
that cannot be read (truncated by a crash, foreign format) is logged, counted and recomputed.
`dtype=torch.float16` halves memory and disk; features are returned in float32.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Dict, Optional

import torch

from rewire_lib.files.atomic import atomic_path

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1  # bump when what a cache entry holds changes


def encoder_fingerprint(encoder: torch.nn.Module) -> str:
    """sha1 of the encoder's class, config, input preparation and every state-dict tensor: what it computes, not
    where it was loaded from (the config's `_name_or_path`, which is the path as typed, is left out: the same
    encoder named `pretrained/x` or by its absolute path is one encoder, one cache and one run stamp)."""
    h = hashlib.sha1()
    model = getattr(encoder, "model", encoder)
    h.update(type(model).__name__.encode())
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_json_string"):
        settings = json.loads(config.to_json_string(use_diff=False))
        settings.pop("_name_or_path", None)
        h.update(json.dumps(settings, sort_keys=True).encode())
    for attr in ("do_normalize", "use_attention_mask"):
        h.update(f"{attr}={getattr(encoder, attr, None)}".encode())
    for name, tensor in sorted(encoder.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        if t.dtype == torch.bfloat16:
            t = t.float()
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def file_identity(path: str) -> str:
    """Absolute path, size and mtime of an audio file: changes whenever the file does."""
    p = Path(path).resolve()
    st = p.stat()
    return f"{p}|{st.st_size}|{st.st_mtime_ns}"


class FeatureCache:
    """Cache of per-utterance hidden states for one encoder and one feature setting."""

    def __init__(self, encoder_fp: str, mode: str = "memory", cache_dir: Optional[os.PathLike] = None,
                 dtype: torch.dtype = torch.float32, settings: Optional[dict] = None):
        if mode not in ("memory", "disk"):
            raise ValueError(f"feature cache mode must be 'memory' or 'disk', got {mode!r}")
        if mode == "disk" and cache_dir is None:
            raise ValueError("a disk feature cache needs cache_dir")
        self.encoder_fp = encoder_fp
        self.mode = mode
        self.dtype = dtype
        self.settings = json.dumps(dict(settings or {}, dtype=str(dtype), format=CACHE_FORMAT), sort_keys=True)
        self.folder = Path(cache_dir) / encoder_fp[:16] if mode == "disk" else None
        self._memory: Dict[str, torch.Tensor] = {}
        self._pooled: Dict[str, torch.Tensor] = {}  # key -> [L+1, D] float32 mean over frames (get_pooled)
        self._keys: Dict[str, str] = {}  # wav path -> key, for this cache's life (one run, a recipe's folds, a study group)
        self.hits = 0
        self.misses = 0
        self.pooled_hits = 0
        self.bad_files = 0

    # ------------------------------------------------------------------ keys
    def key(self, wav_path: str) -> str:
        """Cache key of one audio file under this encoder and setting. The file's identity (path, size, mtime) is
        read once per cache object: a run asks for every utterance once a step and a dev pass (measured: a
        keyword-spotting run's ~11k stat calls were 0.9 of its 7 s), and a file rewritten during a run is
        not one the run can use consistently anyway."""
        key = self._keys.get(wav_path)
        if key is None:
            text = f"{self.encoder_fp}\n{file_identity(wav_path)}\n{self.settings}"
            key = self._keys[wav_path] = hashlib.sha1(text.encode()).hexdigest()
        return key

    def _file(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.pt"

    # ------------------------------------------------------------------ get / put
    def get(self, key: str) -> Optional[torch.Tensor]:
        """The cached [L+1, T, D] float32 tensor, or None (counted as a miss)."""
        feats = self.get_stored(key)
        return None if feats is None else feats.float()

    def get_stored(self, key: str) -> Optional[torch.Tensor]:
        """The cached [L+1, T, D] tensor as stored (`dtype`, not a copy: do not modify it), or None (a miss).
        A batch is padded in the stored dtype and converted once, instead of one float32 copy per utterance."""
        feats = self._memory.get(key)
        if feats is None and self.mode == "disk":
            path = self._file(key)
            if path.is_file():
                try:
                    feats = torch.load(path, map_location="cpu", weights_only=True)
                    if not isinstance(feats, torch.Tensor) or feats.dim() != 3:
                        raise ValueError(f"expected a 3-d tensor, got {type(feats).__name__}")
                    self._memory[key] = feats
                except Exception as err:  # truncated or foreign file: recompute and overwrite
                    self.bad_files += 1
                    logger.warning("feature cache: unreadable entry %s (%s); recomputing", path, err)
                    feats = None
        if feats is None:
            self.misses += 1
            return None
        self.hits += 1
        return feats

    def get_pooled(self, key: str) -> Optional[torch.Tensor]:
        """The utterance's hidden states averaged over its frames, [L+1, D] float32, or None (not cached yet).
        Computed from the stored frames once (a frame read, counted) and kept beside them, so that every later
        run of the group reads L+1 x D numbers instead of the frames (`pooled_hits`)."""
        pooled = self._pooled.get(key)
        if pooled is not None:
            self.pooled_hits += 1
            return pooled
        feats = self.get_stored(key)
        if feats is None:
            return None
        pooled = self._pooled[key] = feats.float().mean(dim=1)
        return pooled

    def put(self, key: str, feats: torch.Tensor) -> None:
        """Store one utterance's [L+1, T, D] hidden states (padding already trimmed)."""
        if feats.dim() != 3:
            raise ValueError(f"feature cache stores [layers, frames, dim] tensors, got shape {tuple(feats.shape)}")
        stored = feats.detach().to("cpu", self.dtype).contiguous().clone()
        self._memory[key] = stored
        if self.mode == "disk":
            with atomic_path(self._file(key)) as tmp:  # a process-unique temporary sibling, then os.replace
                torch.save(stored, tmp)

    def __len__(self) -> int:
        return len(self._memory)

    def stats(self) -> dict:
        return dict(mode=self.mode, entries=len(self._memory), hits=self.hits, misses=self.misses,
                    pooled_hits=self.pooled_hits, bad_files=self.bad_files, dtype=str(self.dtype))


class FeatureCachePool:
    """FeatureCaches that several runs share, one per (encoder fingerprint, feature setting), owned by whoever
    makes those runs and handed to each run's Brain: the folds of one recipe run (`run_folds`) or a study's
    runs of one task and encoder all read the same utterances, and reloading them from the disk cache cost
    ~1-2 s a run. Memory: one set of features, which one run holds anyway; `clear` (or a new `group`) drops it."""

    def __init__(self):
        self._caches: Dict[tuple, FeatureCache] = {}
        self.group = None

    def get(self, key: tuple, make) -> FeatureCache:
        """The pool's cache for `key`, made with `make()` the first time it is asked for."""
        cache = self._caches.get(key)
        if cache is None:
            cache = self._caches[key] = make()
        return cache

    def keep_for(self, group) -> None:
        """Keep the caches while `group` (any comparable value) stays the same; a new group drops them first."""
        if group != self.group:
            self.clear()
        self.group = group

    def clear(self) -> None:
        """Drop every cache (their features are freed once no Brain holds them)."""
        self._caches.clear()
        self.group = None

    def __len__(self) -> int:
        return len(self._caches)

    def __getstate__(self) -> dict:
        """A pool sent to another process (a study worker) arrives empty: features are not worth pickling."""
        return {"_caches": {}, "group": None}
