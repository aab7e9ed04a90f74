"""Positive pairs for rewiring: twin (masked copy), neutral (TTS of the transcript), mixed.

Views work on one 16 kHz waveform (a 1-D float tensor); batching is left to the Brain::

    view(wav, text, generator, half=None) -> (anchor, positive)

- `TwinView(mask_fraction=0.2, num_spans=1)`: anchor = the waveform (not copied), positive = a copy
  in which `num_spans` contiguous spans of `int(mask_fraction * len)` samples each are set to zero.
  Each span starts uniformly in [0, len - span] (for 20% spans: in the first 80%). With several
  spans the starts are drawn independently, so spans MAY OVERLAP (then fewer samples are zeroed).
- `NeutralView(tts_cache)`: anchor = the waveform, positive = the TTS rendering of its transcript
  (`rewire_lib.views.tts.TTSCache`). With `half` = 0 / 1 (the utterance was halved by `LengthRules`),
  the matching half of the rendering is used: `tts[:m // 2]` / `tts[m // 2:]`.
  A text without a rendering raises `MissingPositive` (the builder handles it, see below).
- `MixedView(twin, neutral, p_neutral=0.5)`: draws u ~ U[0, 1) from the generator; neutral if
  u < p_neutral, else twin. If neutral is drawn but the text has no rendering, twin is used
  (counted in `fallbacks`).

`LengthRules(max_samples=180000, split_samples=90000, half="alternate")` are the authors' rules:
an utterance with more than `max_samples` samples is skipped; one with more than `split_samples`
is cut in half (`wav[:n // 2]` / `wav[n // 2:]`) and one half kept. Which half:

- "alternate" (default): half = (epoch + int(sha1(utt_id)[:8], 16)) % 2. Across utterances about half
  keep their first half, and each utterance alternates halves from one epoch to the next; it does
  not depend on iteration order or on the number of data-loader workers.
- "random": a fair coin from the pair's generator (reproducible, order-free).
- "counter": the authors' literal rule, a counter that alternates first/second over the halved
  utterances in iteration order. Depends on order and on workers (each DataLoader worker holds its
  own counter): only for a faithful single-process replay.

`PairBuilder(view, rules=None, seed=0)` ties them together and owns the seeding:
`builder(wav, text, utt_id)` returns `(anchor, positive)` or None for a skipped utterance (too long,
or no rendering for a neutral pair with `on_missing="skip"`; both counted in `builder.stats` and
logged). The generator of a pair is `torch.Generator().manual_seed(pair_seed(seed, epoch, utt_id))`
with `pair_seed` = the first 8 bytes of sha1("{seed}|{epoch}|{utt_id}") (63 bits): the pair of
utterance i in epoch e is the same whatever the worker count, order or batch, and differs across
epochs and utterances. The Brain calls `builder.set_epoch(epoch)` at the start of each epoch (before
the DataLoader's iterator, hence its workers, is created: non-persistent workers copy the builder
then). The draws from one generator are, in order: the half (only for "random"), the mixed coin,
the span starts.

For dataset filtering ahead of time (so that batches never hold a skipped item), use
`builder.keep_duration(seconds)` / `builder.keep_samples(n)` and `builder.has_positive(text)`
with `DynamicItemDataset.filtered_sorted(key_test=...)`; `pair_pipeline(builder)` gives a dynamic item.
`make_pair_builder(view="twin"|"neutral"|"mixed", ...)` builds it all from YAML-style arguments.
"""
from __future__ import annotations

import hashlib
import logging
from collections import Counter
from typing import Optional, Tuple

import torch

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
Pair = Tuple[torch.Tensor, torch.Tensor]


class MissingPositive(RuntimeError):
    """The neutral positive of an utterance is unavailable (its text yields no TTS audio)."""


def pair_seed(seed: int, epoch: int, utt_id: str) -> int:
    """Seed of the generator for utterance `utt_id` in `epoch` (63-bit, from sha1; see module doc)."""
    digest = hashlib.sha1(f"{int(seed)}|{int(epoch)}|{utt_id}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def pair_generator(seed: int, epoch: int, utt_id: str) -> torch.Generator:
    return torch.Generator().manual_seed(pair_seed(seed, epoch, utt_id))


def _id_parity(utt_id: str) -> int:
    return int(hashlib.sha1(str(utt_id).encode("utf-8")).hexdigest()[:8], 16)


def _check_wav(wav: torch.Tensor) -> torch.Tensor:
    if not isinstance(wav, torch.Tensor):
        wav = torch.as_tensor(wav, dtype=torch.float32)
    if wav.dim() != 1:
        raise ValueError(f"expected a 1-D waveform [samples], got shape {tuple(wav.shape)}")
    return wav


def take_half(x: torch.Tensor, half: Optional[int]) -> torch.Tensor:
    """None: all of x; 0: x[:n // 2]; 1: x[n // 2:]."""
    if half is None:
        return x
    n = x.shape[-1]
    if half == 0:
        return x[..., : n // 2]
    if half == 1:
        return x[..., n // 2:]
    raise ValueError(f"half must be None, 0 or 1, got {half!r}")


class TwinView:
    """Anchor: the waveform; positive: a copy with `num_spans` zeroed spans of `mask_fraction` each."""

    name = "twin"

    def __init__(self, mask_fraction: float = 0.2, num_spans: int = 1):
        if not 0.0 <= float(mask_fraction) <= 1.0:
            raise ValueError(f"mask_fraction must be in [0, 1], got {mask_fraction}")
        if int(num_spans) < 0:
            raise ValueError(f"num_spans must be >= 0, got {num_spans}")
        self.mask_fraction = float(mask_fraction)
        self.num_spans = int(num_spans)

    def span_length(self, num_samples: int) -> int:
        return int(self.mask_fraction * num_samples)

    def spans(self, num_samples: int, generator: torch.Generator):
        """[(start, end)] of the zeroed spans; each start uniform in [0, num_samples - span]."""
        span = self.span_length(num_samples)
        if span <= 0 or self.num_spans == 0:
            return []
        starts = torch.randint(0, num_samples - span + 1, (self.num_spans,), generator=generator)
        return [(int(s), int(s) + span) for s in starts]

    def __call__(self, wav: torch.Tensor, text: Optional[str] = None,
                 generator: Optional[torch.Generator] = None, half: Optional[int] = None) -> Pair:
        wav = _check_wav(wav)
        positive = wav.clone()
        for start, end in self.spans(wav.shape[0], generator):
            positive[start:end] = 0.0
        return wav, positive


class NeutralView:
    """Anchor: the waveform; positive: the TTS rendering of `text` (the matching half if halved)."""

    name = "neutral"

    def __init__(self, tts_cache):
        self.tts_cache = tts_cache

    def positive(self, text: Optional[str], half: Optional[int] = None) -> torch.Tensor:
        tts = self.tts_cache.get(text) if text is not None else None
        if tts is None:
            raise MissingPositive(f"no TTS audio for text {str(text)[:80]!r}")
        tts = take_half(tts, half)
        if tts.numel() == 0:
            raise MissingPositive(f"TTS audio too short to halve for text {str(text)[:80]!r}")
        return tts

    def __call__(self, wav: torch.Tensor, text: Optional[str] = None,
                 generator: Optional[torch.Generator] = None, half: Optional[int] = None) -> Pair:
        wav = _check_wav(wav)
        return wav, self.positive(text, half)


class MixedView:
    """Neutral with probability `p_neutral` (coin from the generator), else twin; twin when the
    neutral positive is missing (counted in `fallbacks`)."""

    name = "mixed"

    def __init__(self, twin: TwinView, neutral: NeutralView, p_neutral: float = 0.5):
        if not 0.0 <= float(p_neutral) <= 1.0:
            raise ValueError(f"p_neutral must be in [0, 1], got {p_neutral}")
        self.twin = twin
        self.neutral = neutral
        self.p_neutral = float(p_neutral)
        self.counts = Counter()  # "twin", "neutral", "fallback"

    @property
    def fallbacks(self) -> int:
        return self.counts["fallback"]

    def choose(self, generator: Optional[torch.Generator]) -> str:
        u = float(torch.rand((), generator=generator))
        return "neutral" if u < self.p_neutral else "twin"

    def __call__(self, wav: torch.Tensor, text: Optional[str] = None,
                 generator: Optional[torch.Generator] = None, half: Optional[int] = None) -> Pair:
        if self.choose(generator) == "neutral":
            try:
                pair = self.neutral(wav, text, generator, half)
                self.counts["neutral"] += 1
                return pair
            except MissingPositive as exc:
                self.counts["fallback"] += 1
                log.warning("mixed view: %s; using a twin pair instead", exc)
        self.counts["twin"] += 1
        return self.twin(wav, text, generator, half)


class LengthRules:
    """The authors' length rules (see the module docstring): skip > max_samples, halve > split_samples."""

    HALF_MODES = ("alternate", "random", "counter")

    def __init__(self, max_samples: Optional[int] = 180000, split_samples: Optional[int] = 90000,
                 half: str = "alternate"):
        if half not in self.HALF_MODES:
            raise ValueError(f"half must be one of {self.HALF_MODES}, got {half!r}")
        self.max_samples = None if max_samples is None else int(max_samples)
        self.split_samples = None if split_samples is None else int(split_samples)
        self.half_mode = half
        self._counter = 0

    def keep_samples(self, num_samples: int) -> bool:
        return self.max_samples is None or int(num_samples) <= self.max_samples

    def keep_duration(self, seconds: float, sample_rate: int = SAMPLE_RATE) -> bool:
        """For `filtered_sorted(key_test={"duration": rules.keep_duration})` (duration in seconds)."""
        return self.keep_samples(int(round(float(seconds) * sample_rate)))

    def needs_split(self, num_samples: int) -> bool:
        return self.split_samples is not None and int(num_samples) > self.split_samples

    def choose_half(self, num_samples: int, utt_id: str, epoch: int,
                    generator: Optional[torch.Generator] = None) -> Optional[int]:
        """None (keep all), 0 (first half) or 1 (second half) for an utterance of `num_samples`."""
        if not self.needs_split(num_samples):
            return None
        if self.half_mode == "alternate":
            return (int(epoch) + _id_parity(utt_id)) % 2
        if self.half_mode == "random":
            return int(torch.randint(0, 2, (), generator=generator))
        half = self._counter % 2
        self._counter += 1
        return half


class PairBuilder:
    """Seeded pair maker for one utterance at a time (see the module docstring).

    on_missing (no TTS rendering for a neutral-only view): "skip" (return None, counted),
    "twin" (use a twin pair with `fallback_twin`), or "error" (raise `MissingPositive`).
    """

    def __init__(self, view, rules: Optional[LengthRules] = None, seed: int = 0, on_missing: str = "skip",
                 fallback_twin: Optional[TwinView] = None):
        if on_missing not in ("skip", "twin", "error"):
            raise ValueError(f"on_missing must be 'skip', 'twin' or 'error', got {on_missing!r}")
        self.view = view
        self.rules = rules
        self.seed = int(seed)
        self.epoch = 0
        self.on_missing = on_missing
        self.fallback_twin = fallback_twin or TwinView()
        self.stats = Counter()  # pairs, halved, skipped_long, skipped_no_tts, fallback_twin

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def generator(self, utt_id: str) -> torch.Generator:
        return pair_generator(self.seed, self.epoch, utt_id)

    # --- ahead-of-time filters -------------------------------------------------------------
    def keep_samples(self, num_samples: int) -> bool:
        return self.rules is None or self.rules.keep_samples(num_samples)

    def keep_duration(self, seconds: float) -> bool:
        return self.rules is None or self.rules.keep_duration(seconds)

    def has_positive(self, text: Optional[str]) -> bool:
        """False when a neutral-only view with on_missing="skip"/"error" has no rendering for `text`
        (renders it if needed). Always True for twin and mixed views."""
        if not isinstance(self.view, NeutralView) or self.on_missing == "twin":
            return True
        return text is not None and self.view.tts_cache.get(text) is not None

    # --- per item ----------------------------------------------------------------------------
    def __call__(self, wav: torch.Tensor, text: Optional[str], utt_id: str) -> Optional[Pair]:
        wav = _check_wav(wav)
        n = wav.shape[0]
        if self.rules is not None and not self.rules.keep_samples(n):
            self.stats["skipped_long"] += 1
            log.debug("pairs: skipping %s (%d samples > %d)", utt_id, n, self.rules.max_samples)
            return None
        gen = self.generator(utt_id)
        half = None
        if self.rules is not None:
            half = self.rules.choose_half(n, utt_id, self.epoch, gen)
            if half is not None:
                self.stats["halved"] += 1
                wav = take_half(wav, half)
        try:
            pair = self.view(wav, text, gen, half)  # a MixedView falls back on twin by itself
        except MissingPositive as exc:
            if self.on_missing == "twin":
                self.stats["fallback_twin"] += 1
                log.warning("pairs: %s (%s); using a twin pair instead", exc, utt_id)
                pair = self.fallback_twin(wav, text, gen, half)
            elif self.on_missing == "skip":
                self.stats["skipped_no_tts"] += 1
                log.warning("pairs: skipping %s: %s", utt_id, exc)
                return None
            else:
                raise MissingPositive(f"utterance {utt_id}: {exc}") from exc
        self.stats["pairs"] += 1
        return pair


def pair_pipeline(builder: PairBuilder, wav_key: str = "sig", text_key: str = "wrd", id_key: str = "id",
                  provides: Tuple[str, str] = ("view_a", "view_b")):
    """A SpeechBrain dynamic item: takes (wav_key, text_key, id_key), provides the two views
    (None, None for a skipped utterance: filter the dataset first, see the module docstring)."""
    from speechbrain.utils.data_pipeline import provides as sb_provides
    from speechbrain.utils.data_pipeline import takes as sb_takes

    @sb_takes(wav_key, text_key, id_key)
    @sb_provides(*provides)
    def _pipeline(wav, text, utt_id):
        pair = builder(wav, text, utt_id)
        if pair is None:
            yield None
            yield None
        else:
            yield pair[0]
            yield pair[1]

    return _pipeline


def make_pair_builder(view: str = "twin", *, seed: int = 0, mask_fraction: float = 0.2, num_spans: int = 1,
                      p_neutral: float = 0.5, tts_cache=None, tts_backend: str = "espeak",
                      tts_settings: Optional[dict] = None, tts_cache_dir=None, length_rules: bool = False,
                      max_samples: Optional[int] = 180000, split_samples: Optional[int] = 90000,
                      half: str = "alternate", on_missing: str = "skip") -> PairBuilder:
    """Builder from YAML-style options. view: "twin", "neutral" or "mixed". For neutral/mixed a
    `tts_cache` may be given, else one is made from `tts_backend` (+ `tts_settings`) under
    `tts_cache_dir` (default `<repo>/cache/tts`). `length_rules=True` applies the authors' rules
    (on in the paper preset) with `max_samples`, `split_samples` and `half`."""
    view = str(view).lower()
    if view not in ("twin", "neutral", "mixed"):
        raise ValueError(f"unknown pair view {view!r}; expected 'twin', 'neutral' or 'mixed'")
    twin = TwinView(mask_fraction=mask_fraction, num_spans=num_spans)
    if view == "twin":
        chosen = twin
    else:
        if tts_cache is None:
            from rewire_lib.views.tts import TTSCache, make_backend

            tts_cache = TTSCache(tts_cache_dir, make_backend(tts_backend, **(tts_settings or {})))
        neutral = NeutralView(tts_cache)
        chosen = neutral if view == "neutral" else MixedView(twin, neutral, p_neutral=p_neutral)
    rules = LengthRules(max_samples, split_samples, half=half) if length_rules else None
    return PairBuilder(chosen, rules=rules, seed=seed, on_missing=on_missing, fallback_twin=twin)
