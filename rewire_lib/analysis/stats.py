"""Statistics for comparing encoders: paired bootstrap intervals, verdicts, censored steps-to-target.

The study compares a rewired encoder with its base on the same test utterances and the same seeds, so every
comparison here is paired. See `docs/statistics.md` for the reasoning and references.

- `paired_bootstrap_diff(base, other, ...)`: difference other - base of a corpus-level metric (accuracy, or a
  ratio such as WER = sum(errors) / sum(reference words)) with a percentile interval from a two-way bootstrap
  that resamples seeds and test utterances with replacement, the same draws for both encoders.
- `paired_bootstrap_diff_nested(base, other, ...)`: the same for cross-validation folds, where each fold has
  its own test utterances: folds resampled, then utterances within each drawn fold.
- `verdict(result)`: "better" / "worse" / "no detectable difference" from the interval alone.
- `steps_to_target(...)`: first evaluated step whose dev metric reaches a target, or None (censored).
- `censored_median(times, censored_at)`: Kaplan-Meier median of steps-to-target with a 95 % interval
  (Brookmeyer-Crowley, log-log Greenwood band); runs that never reach the target are censored, never dropped.
- `speedup(...)`: ratio of two censored medians with a bootstrap interval over runs.
- `best_checkpoint(rows, ...)`: best dev row by metric, exact ties broken by the lower dev loss.
"""
from __future__ import annotations

import logging
import math
import warnings
from dataclasses import asdict, dataclass
from typing import List, Mapping, Optional, Sequence, Tuple

import numpy as np
from scipy import stats as scipy_stats

logger = logging.getLogger(__name__)

BETTER = "better"
WORSE = "worse"
NO_DIFFERENCE = "no detectable difference"
_CHUNK = 500  # bootstrap replicates computed at once (bounds memory at CHUNK x n_utts floats)
_HALF_TOL = 1e-12  # S(t) <= 0.5 + tol counts as "half reached": KM products such as 0.75 * 2/3 are not exact


class StatsError(ValueError):
    """Bad input to a statistic: wrong shape, non-finite values, or an impossible setting."""


# ------------------------------------------------------------------------------------------ paired bootstrap
@dataclass(frozen=True)
class BootstrapDiff:
    """Difference other - base of a corpus-level metric, in metric units (scale 100: points / percent)."""

    diff: float  # point estimate on the observed data (all seeds, all utterances)
    ci_low: float
    ci_high: float
    base: float  # the base encoder's metric on the observed data
    other: float
    n_utts: int
    n_seeds: int
    n_boot: int
    ci: float  # coverage, e.g. 0.95
    higher_is_better: bool
    method: str

    def as_dict(self) -> dict:
        return asdict(self)


def _as_scores(x, name: str) -> np.ndarray:
    """float64 [n_seeds, n_utts] array (a 1-D input is one seed), finite, or StatsError naming `name`."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] < 1:
        raise StatsError(f"{name} must be per-utterance scores shaped [n_seeds, n_utts], got shape {a.shape}")
    if not np.isfinite(a).all():
        raise StatsError(f"{name} contains NaN or infinite values")
    return a


def _as_denominator(den, name: str, shape: Tuple[int, int]) -> np.ndarray:
    """Reference lengths broadcast to `shape`: given per utterance [n_utts] or per seed and utterance."""
    d = _as_scores(den, name)
    try:
        d = np.broadcast_to(d, shape)
    except ValueError:
        raise StatsError(f"{name} has shape {d.shape}; expected [n_utts] or [n_seeds, n_utts] = {shape}") from None
    if (d <= 0).any():
        raise StatsError(f"{name} must be > 0 for every utterance (reference length in words/phonemes); "
                         f"{int((d <= 0).sum())} entries are <= 0")
    return d


def _resample_counts(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """[size, n] counts of how often each of n items is drawn in `size` resamples of n with replacement."""
    return rng.multinomial(n, np.full(n, 1.0 / n), size=size).astype(np.float64)


def _drawn_sum(seed_counts: np.ndarray, x: np.ndarray, utt_counts: np.ndarray) -> np.ndarray:
    """Per replicate, the sum of x over the drawn (seed, utterance) cells: seed_counts^T x utt_counts."""
    return ((seed_counts @ x) * utt_counts).sum(axis=1)


def paired_bootstrap_diff(base, other, n_boot: int = 10_000, seed: int = 0, ci: float = 0.95,
                          higher_is_better: bool = True, base_den=None, other_den=None,
                          scale: float = 100.0) -> BootstrapDiff:
    """Paired two-way bootstrap interval for other - base of a corpus-level metric.

    base, other: per-utterance scores [n_seeds, n_utts] (a 1-D array is one seed); row s of both comes from
    the same seed (same head initialisation and data order), column u from the same test utterance.
    - Mean metric (accuracy): scores are 0/1 correctness; metric = scale * mean.
    - Ratio metric (WER, PER): scores are per-utterance error counts and `base_den`/`other_den` the reference
      lengths ([n_utts] or [n_seeds, n_utts]; `other_den` defaults to `base_den`); metric = scale *
      sum(errors) / sum(lengths), recomputed on every replicate (a corpus WER, not a mean of utterance WERs).
    Each replicate draws seeds with replacement and, independently, utterances with replacement (Owen's
    pigeonhole bootstrap for a crossed seeds x utterances design) and applies the same draw to both encoders,
    so utterance difficulty and seed luck cancel in the difference. Interval: percentile, coverage `ci`.
    """
    b = _as_scores(base, "base")
    o = _as_scores(other, "other")
    if b.shape != o.shape:
        raise StatsError(f"base {b.shape} and other {o.shape} must have the same [n_seeds, n_utts] shape: the "
                         "comparison is paired by seed and test utterance")
    if not 0.0 < ci < 1.0:
        raise StatsError(f"ci must be in (0, 1), got {ci}")
    if n_boot < 1:
        raise StatsError(f"n_boot must be >= 1, got {n_boot}")
    if other_den is not None and base_den is None:
        raise StatsError("other_den given without base_den: give base_den (and other_den if it differs)")
    n_seeds, n_utts = b.shape
    ratio = base_den is not None
    if ratio:
        bd = _as_denominator(base_den, "base_den", b.shape)
        od = _as_denominator(base_den if other_den is None else other_den, "other_den", b.shape)
    else:
        bd = od = np.ones_like(b)

    point_b, point_o = scale * b.sum() / bd.sum(), scale * o.sum() / od.sum()
    rng = np.random.default_rng(seed)
    diffs = np.empty(n_boot)
    for start in range(0, n_boot, _CHUNK):
        size = min(_CHUNK, n_boot - start)
        cs = _resample_counts(rng, n_seeds, size)  # [size, n_seeds]
        cu = _resample_counts(rng, n_utts, size)  # [size, n_utts]
        rb = scale * _drawn_sum(cs, b, cu) / _drawn_sum(cs, bd, cu)
        ro = scale * _drawn_sum(cs, o, cu) / _drawn_sum(cs, od, cu)
        diffs[start:start + size] = ro - rb
    design = ("paired two-way bootstrap: seeds and test utterances resampled with replacement, the same draws "
              "for both encoders (Owen 2007 pigeonhole bootstrap)")
    return _bootstrap_result(diffs, point_b, point_o, ci, ratio, design, n_utts, n_seeds, higher_is_better)


def _bootstrap_result(diffs: np.ndarray, point_b: float, point_o: float, ci: float, ratio: bool, design: str,
                      n_utts: int, n_seeds: int, higher_is_better: bool) -> BootstrapDiff:
    """The percentile interval of the replicates `diffs` around the observed difference, with its method."""
    alpha = (1.0 - ci) / 2.0
    low, high = np.quantile(diffs, [alpha, 1.0 - alpha])
    kind = ("ratio metric sum(errors)/sum(reference lengths) recomputed per replicate" if ratio
            else "mean metric")
    method = f"{design}; {kind}; {len(diffs)} replicates, {100 * ci:g}% percentile interval"
    return BootstrapDiff(diff=float(point_o - point_b), ci_low=float(low), ci_high=float(high),
                         base=float(point_b), other=float(point_o), n_utts=int(n_utts), n_seeds=int(n_seeds),
                         n_boot=len(diffs), ci=float(ci), higher_is_better=bool(higher_is_better), method=method)


def paired_bootstrap_diff_nested(base, other, n_boot: int = 10_000, seed: int = 0, ci: float = 0.95,
                                 higher_is_better: bool = True, base_den=None, other_den=None,
                                 scale: float = 100.0) -> BootstrapDiff:
    """Paired bootstrap interval for other - base when each run has its OWN test utterances (cross-validation
    folds: fold k's test set is one held-out speaker), so seeds and utterances are nested, not crossed.

    base, other: one 1-D array of per-utterance scores per fold (lengths may differ between folds; both
    encoders' arrays of a fold are aligned utterance by utterance); base_den/other_den likewise (ratio
    metrics), as in `paired_bootstrap_diff`. Each replicate is a two-stage (cluster) bootstrap: folds drawn
    with replacement, then for every drawn copy of a fold its utterances drawn with replacement (a fold drawn
    m times gets m*n independent draws: one multinomial), the same draws for both encoders.
    """
    b = [_as_scores(x, f"base fold {i}")[0] for i, x in enumerate(base)]
    o = [_as_scores(x, f"other fold {i}")[0] for i, x in enumerate(other)]
    if not b or len(b) != len(o) or any(x.shape != y.shape for x, y in zip(b, o)):
        raise StatsError("base and other need the same folds, each with the same utterances: got fold sizes "
                         f"{[len(x) for x in b]} and {[len(y) for y in o]}")
    if not 0.0 < ci < 1.0 or n_boot < 1:
        raise StatsError(f"ci must be in (0, 1) and n_boot >= 1, got {ci} and {n_boot}")
    if other_den is not None and base_den is None:
        raise StatsError("other_den given without base_den: give base_den (and other_den if it differs)")
    ratio = base_den is not None

    def dens(den, name):
        if den is None:
            return [np.ones_like(x) for x in b]
        return [_as_denominator(d, f"{name} fold {i}", (1, len(x)))[0] for i, (d, x) in enumerate(zip(den, b))]

    bd = dens(base_den, "base_den")
    od = bd if other_den is None else dens(other_den, "other_den")
    n_folds = len(b)
    point_b = scale * sum(x.sum() for x in b) / sum(d.sum() for d in bd)
    point_o = scale * sum(x.sum() for x in o) / sum(d.sum() for d in od)
    rng = np.random.default_rng(seed)
    diffs = np.empty(n_boot)
    for start in range(0, n_boot, _CHUNK):
        size = min(_CHUNK, n_boot - start)
        fold_counts = rng.multinomial(n_folds, np.full(n_folds, 1.0 / n_folds), size=size)  # [size, n_folds]
        sums = np.zeros((4, size))  # base, base_den, other, other_den
        for f in range(n_folds):
            n = len(b[f])
            counts = rng.multinomial(fold_counts[:, f] * n, np.full(n, 1.0 / n)).astype(np.float64)  # [size, n]
            sums += np.stack([counts @ b[f], counts @ bd[f], counts @ o[f], counts @ od[f]])
        diffs[start:start + size] = scale * (sums[2] / sums[3] - sums[0] / sums[1])
    design = ("paired two-stage bootstrap for cross-validation folds: folds resampled with replacement, then each "
              "drawn fold's own test utterances, the same draws for both encoders (Davison and Hinkley 1997, "
              "sec. 3.8)")
    return _bootstrap_result(diffs, point_b, point_o, ci, ratio, design, sum(len(x) for x in b), n_folds,
                             higher_is_better)


def mean_std(values: Sequence[Optional[float]]) -> Tuple[Optional[float], Optional[float]]:
    """Mean and sample standard deviation (ddof=1; 0 for one value) of the finite values, (None, None) for none."""
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not vals:
        return None, None
    return float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0


def verdict(result: BootstrapDiff, higher_is_better: Optional[bool] = None) -> str:
    """"better" / "worse" only when the whole interval lies strictly on one side of 0; else no difference.

    `higher_is_better` defaults to the one stored in the result (False for WER/PER). An interval touching 0,
    and an exact tie (diff 0, interval [0, 0]), are "no detectable difference".
    """
    hib = result.higher_is_better if higher_is_better is None else higher_is_better
    good_low, good_high = (result.ci_low, result.ci_high) if hib else (-result.ci_high, -result.ci_low)
    if good_low > 0.0:
        return BETTER
    if good_high < 0.0:
        return WORSE
    return NO_DIFFERENCE


# -------------------------------------------------------------------------------- censored steps-to-target
def steps_to_target(curve_steps: Sequence[float], curve_values: Sequence[float], target: float,
                    higher_is_better: bool = True) -> Optional[float]:
    """First step whose value reaches `target` (>= if higher is better, else <=), or None if none does.

    None means censored at the curve's last step: the run was watched that long and did not get there.
    Steps must be increasing; NaN values (a diverged evaluation) never reach the target.
    """
    steps = np.asarray(curve_steps, dtype=np.float64).reshape(-1)
    values = np.asarray(curve_values, dtype=np.float64).reshape(-1)
    if steps.shape != values.shape:
        raise StatsError(f"curve_steps ({steps.size}) and curve_values ({values.size}) differ in length")
    if steps.size and (not np.isfinite(steps).all() or (np.diff(steps) <= 0).any()):
        raise StatsError("curve_steps must be finite and strictly increasing")
    with np.errstate(invalid="ignore"):
        hit = values >= target if higher_is_better else values <= target
    idx = np.flatnonzero(hit)
    return float(steps[idx[0]]) if idx.size else None


@dataclass(frozen=True)
class CensoredMedian:
    """Kaplan-Meier median steps-to-target over runs; None / inf where the curve never gets to one half."""

    median: Optional[float]  # None: fewer than half the runs are known to reach the target
    ci_low: float  # math.inf when even the interval's bound is beyond the observed steps
    ci_high: float
    n_reached: int
    n_censored: int
    n_runs: int
    method: str

    def as_dict(self) -> dict:
        return asdict(self)


CENSORED_MEDIAN_METHOD = ("Kaplan-Meier median (first step with S(t) <= 0.5); 95% interval by inverting the "
                          "pointwise log-log Greenwood band of the KM curve (Brookmeyer & Crowley 1982)")


def _observations(times: Sequence[Optional[float]], censored_at) -> Tuple[np.ndarray, np.ndarray]:
    """(observed step, reached?) per run; a None time is a run censored at its `censored_at` step."""
    times = list(times)
    if not times:
        raise StatsError("censored_median needs at least one run")
    if np.ndim(censored_at) == 0:
        limits = [censored_at] * len(times)
    else:
        limits = list(censored_at)
        if len(limits) != len(times):
            raise StatsError(f"censored_at has {len(limits)} entries for {len(times)} runs")
    obs, reached = np.empty(len(times)), np.zeros(len(times), dtype=bool)
    for i, (t, c) in enumerate(zip(times, limits)):
        if t is None:
            if c is None or not np.isfinite(c):
                raise StatsError(f"run {i} never reached the target but has no finite censored_at step")
            obs[i] = float(c)
        else:
            if not np.isfinite(t):
                raise StatsError(f"run {i}: steps-to-target {t} is not finite (use None for never reached)")
            obs[i], reached[i] = float(t), True
    if (obs < 0).any():
        raise StatsError("steps must be >= 0")
    return obs, reached


def _km_curve(obs: np.ndarray, reached: np.ndarray):
    """scipy's Kaplan-Meier survival function of steps-to-target (None when no run reached it)."""
    if not reached.any():
        return None
    data = scipy_stats.CensoredData(uncensored=obs[reached], right=obs[~reached])
    return scipy_stats.ecdf(data).sf


def _first_at_or_below_half(steps: np.ndarray, surv: np.ndarray) -> float:
    hit = np.flatnonzero(surv <= 0.5 + _HALF_TOL)
    return float(steps[hit[0]]) if hit.size else math.inf


def _km_median(obs: np.ndarray, reached: np.ndarray) -> Optional[float]:
    """Kaplan-Meier median by the product-limit formula directly, for the bootstrap's thousands of calls
    (scipy.stats.ecdf, used for the reported curve and band, costs ~0.4 ms a call); tests check they agree.
    Runs censored at an event time stay at risk at that time, as in scipy."""
    surv = 1.0
    for t in np.unique(obs[reached]):
        at_risk = np.count_nonzero(obs >= t)
        surv *= 1.0 - np.count_nonzero(reached & (obs == t)) / at_risk
        if surv <= 0.5 + _HALF_TOL:
            return float(t)
    return None


def censored_median(times: Sequence[Optional[float]], censored_at, ci: float = 0.95) -> CensoredMedian:
    """Median steps-to-target over runs, runs that never reached the target counted as censored.

    times: per run the step it reached the target, or None; censored_at: the last evaluated step of each run
    (one number for all, or one per run), used for the None entries. The Kaplan-Meier curve S(t) is the
    share of runs not yet at the target after t steps; the median is the first step with S(t) <= 0.5, None
    if the curve stays above one half (too many runs censored). The interval holds the steps where the
    pointwise confidence band of S crosses one half: its low end is where the band's lower edge first gets
    to 0.5, its high end where the upper edge does (math.inf: not within the observed steps).
    """
    obs, reached = _observations(times, censored_at)
    n_reached = int(reached.sum())
    common = dict(n_reached=n_reached, n_censored=int(len(obs) - n_reached), n_runs=int(len(obs)),
                  method=CENSORED_MEDIAN_METHOD.replace("95%", f"{100 * ci:g}%"))
    sf = _km_curve(obs, reached)
    if sf is None:
        return CensoredMedian(median=None, ci_low=math.inf, ci_high=math.inf, **common)
    steps, surv = sf.quantiles, sf.probabilities
    with warnings.catch_warnings(), np.errstate(all="ignore"):  # the band is undefined where S is 0 or 1
        warnings.simplefilter("ignore", RuntimeWarning)  # ... and equal to S there, filled in below
        band = sf.confidence_interval(confidence_level=ci, method="log-log")
    low_edge = np.where(np.isnan(band.low.probabilities), surv, band.low.probabilities)
    high_edge = np.where(np.isnan(band.high.probabilities), surv, band.high.probabilities)
    median = _first_at_or_below_half(steps, surv)
    return CensoredMedian(median=None if math.isinf(median) else median,
                          ci_low=_first_at_or_below_half(steps, low_edge),
                          ci_high=_first_at_or_below_half(steps, high_edge), **common)


@dataclass(frozen=True)
class Speedup:
    """base median / other median of steps-to-target: > 1 means `other` gets to the target in fewer steps."""

    ratio: Optional[float]  # None when either median is undefined (not reached by half the runs)
    ci_low: Optional[float]
    ci_high: Optional[float]
    base_median: Optional[float]
    other_median: Optional[float]
    n_boot: int
    n_undefined: int  # replicates where neither median was reached; left out of the interval, counted here
    method: str

    def as_dict(self) -> dict:
        return asdict(self)


def _ratio(base_median: Optional[float], other_median: Optional[float]) -> float:
    """base / other with the censored cases: only other reaches -> inf, only base -> 0, neither -> NaN."""
    if base_median is None and other_median is None:
        return math.nan
    if base_median is None:
        return math.inf
    if other_median is None:
        return 0.0
    if other_median == 0.0:
        return 1.0 if base_median == 0.0 else math.inf
    return base_median / other_median


def speedup(base_times: Sequence[Optional[float]], base_censored_at, other_times: Sequence[Optional[float]],
            other_censored_at, n_boot: int = 2000, seed: int = 0, ci: float = 0.95,
            paired: bool = True) -> Speedup:
    """Speed-up of `other` over `base` in steps-to-target: ratio of Kaplan-Meier medians, bootstrap interval.

    Replicates resample runs with replacement (`paired`: the same seed indices for both encoders, which
    needs as many runs for both; else each encoder's runs independently) and recompute both KM medians.
    A replicate where only `other` reaches half counts as an infinite speed-up, only `base` as 0, neither
    as undefined (counted in `n_undefined`, left out). The point ratio is None when either observed median
    is None: the runs do not say how long the slower encoder takes.
    """
    bo, br = _observations(base_times, base_censored_at)
    oo, orr = _observations(other_times, other_censored_at)
    if paired and len(bo) != len(oo):
        raise StatsError(f"paired speed-up needs as many base runs ({len(bo)}) as other runs ({len(oo)})")
    if n_boot < 1 or not 0.0 < ci < 1.0:
        raise StatsError(f"need n_boot >= 1 and 0 < ci < 1, got n_boot={n_boot}, ci={ci}")
    base_median, other_median = _km_median(bo, br), _km_median(oo, orr)
    ratio = None if base_median is None or other_median is None else _ratio(base_median, other_median)
    rng = np.random.default_rng(seed)
    reps = np.empty(n_boot)
    for k in range(n_boot):
        ib = rng.integers(0, len(bo), len(bo))
        io = ib if paired else rng.integers(0, len(oo), len(oo))
        reps[k] = _ratio(_km_median(bo[ib], br[ib]), _km_median(oo[io], orr[io]))
    defined = reps[~np.isnan(reps)]
    n_undefined = int(n_boot - defined.size)
    if n_undefined:
        logger.info("speed-up bootstrap: %d of %d replicates had neither median reached; left out", n_undefined,
                    n_boot)
    low = high = None
    if ratio is not None and defined.size:
        alpha = (1.0 - ci) / 2.0  # inverted_cdf: no interpolation, so an infinite replicate stays inf
        low, high = (float(v) for v in np.quantile(defined, [alpha, 1.0 - alpha], method="inverted_cdf"))
    method = (f"ratio of Kaplan-Meier medians of steps-to-target (base / other); {100 * ci:g}% percentile "
              f"interval from {n_boot} bootstrap resamples of runs ({'paired by seed' if paired else 'unpaired'})")
    return Speedup(ratio=ratio, ci_low=low, ci_high=high, base_median=base_median, other_median=other_median,
                   n_boot=int(n_boot), n_undefined=n_undefined, method=method)


# ---------------------------------------------------------------------------------------------- checkpoints
def best_checkpoint(rows: Sequence[Mapping], metric_key: str, loss_key: str, higher_is_better: bool = True,
                    metric_tol: float = 0.0) -> Mapping:
    """The dev row with the best `metric_key`; among rows within `metric_tol` of the best, the lowest loss.

    Early in CTC training every checkpoint has 100 % WER: the first one is not the best, the one whose dev
    loss fell furthest is. A NaN loss ranks last; if metric and loss both tie, the earliest row wins.
    """
    if not rows:
        raise StatsError("best_checkpoint: no dev rows to choose from")
    metrics: List[float] = []
    losses: List[float] = []
    for i, row in enumerate(rows):
        for key in (metric_key, loss_key):
            if key not in row:
                raise StatsError(f"best_checkpoint: dev row {i} has no '{key}' (keys: {sorted(row)})")
        m, loss = float(row[metric_key]), float(row[loss_key])
        if not math.isfinite(m):
            raise StatsError(f"best_checkpoint: dev row {i} has a non-finite '{metric_key}' ({row[metric_key]})")
        metrics.append(m if higher_is_better else -m)
        losses.append(loss if math.isfinite(loss) else math.inf)
    best = max(metrics)
    tied = [i for i, m in enumerate(metrics) if m >= best - metric_tol]
    return rows[min(tied, key=lambda i: (losses[i], i))]
