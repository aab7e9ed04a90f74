"""Convergence speed-up, as the project measures it (shared/docs/tasks.md).

For one task, training fraction and seed: the baseline's target is the best dev metric it reaches
in its whole run; an encoder's "steps to target" is the first logged step at which its own dev
metric reaches that target (>= when higher is better, <= otherwise). The baseline's own steps are
the first step at which it reaches its best. Speed-up = baseline steps / encoder steps.
"Not reached" (None) is a result, never dropped.
"""
from __future__ import annotations

import math
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

Curve = Sequence[Tuple[int, float]]  # (step, dev metric), in any order


def _clean(curve: Curve) -> List[Tuple[int, float]]:
    pts = [(int(s), float(v)) for s, v in curve if v is not None and not math.isnan(float(v))]
    return sorted(pts)


def best_value(curve: Curve, higher_is_better: bool) -> Optional[float]:
    """The best dev metric of a curve (None for an empty or all-NaN curve)."""
    pts = _clean(curve)
    if not pts:
        return None
    vals = [v for _, v in pts]
    return max(vals) if higher_is_better else min(vals)


def steps_to_reach(curve: Curve, target: Optional[float], higher_is_better: bool, tol: float = 1e-9) -> Optional[int]:
    """First step whose dev metric reaches `target` (within `tol`), or None if it never does."""
    if target is None:
        return None
    for step, value in _clean(curve):
        if (value >= target - tol) if higher_is_better else (value <= target + tol):
            return step
    return None


def speedup(baseline_steps: Optional[int], encoder_steps: Optional[int]) -> Optional[float]:
    """baseline steps / encoder steps; None when either is missing or the encoder's steps are 0."""
    if baseline_steps is None or encoder_steps is None or encoder_steps <= 0:
        return None
    return baseline_steps / encoder_steps


def convergence_per_seed(baseline: Curve, curves: Dict[str, Curve], higher_is_better: bool) -> Dict[str, dict]:
    """For one task/fraction/seed: {encoder: {target, steps, baseline_steps, speedup}}.

    `curves` maps encoder names to their dev curves (the baseline may be among them: its steps are
    those to its own best and its speed-up is 1)."""
    target = best_value(baseline, higher_is_better)
    base_steps = steps_to_reach(baseline, target, higher_is_better)
    out = {}
    for name, curve in curves.items():
        steps = steps_to_reach(curve, target, higher_is_better)
        out[name] = {"target": target, "steps": steps, "baseline_steps": base_steps,
                     "speedup": speedup(base_steps, steps)}
    return out


def aggregate(per_seed: Iterable[dict]) -> dict:
    """Mean over seeds of steps and speed-up, counted over the seeds that reached the target.

    Returns {n_seeds, n_reached, steps_mean (None: not reached by any seed), speedup_mean, speedup_std}."""
    rows = list(per_seed)
    reached = [r for r in rows if r.get("steps") is not None]
    steps = [float(r["steps"]) for r in reached]
    ups = [float(r["speedup"]) for r in reached if r.get("speedup") is not None]
    return {
        "n_seeds": len(rows), "n_reached": len(reached),
        "steps_mean": sum(steps) / len(steps) if steps else None,
        "speedup_mean": sum(ups) / len(ups) if ups else None,
        "speedup_std": _std(ups) if ups else None,
    }


def _std(values: Sequence[float]) -> float:
    """Sample standard deviation (ddof=1); 0 for a single value."""
    if len(values) < 2:
        return 0.0
    m = sum(values) / len(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def mean_std(values: Sequence[float]) -> Tuple[Optional[float], Optional[float]]:
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not vals:
        return None, None
    return sum(vals) / len(vals), _std(vals)
