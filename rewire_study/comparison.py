"""Each encoder row against the base encoder in one task x setting cell, from the runs' own files.

- Final metric: the difference to base with a 95 % paired bootstrap interval over seeds and test utterances
  (rewire_lib.analysis.stats.paired_bootstrap_diff; for speaker folds, each with its own test set,
  paired_bootstrap_diff_nested) on every run's test_predictions.csv: per utterance errors and
  reference length; accuracy = correct / total, WER/PER = errors / reference words), and its verdict.
- Speed: steps until the dev metric first reaches the base's best dev metric (same seed); runs that never
  get there are censored at their last evaluated step, counted, and enter a Kaplan-Meier median with an
  interval (rewire_lib.analysis.stats.censored_median); speed-up = ratio of medians (rewire_lib.analysis.stats.speedup).
"""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from rewire_lib.analysis import stats

N_BOOT = 4000  # bootstrap replicates of the paired difference (seed 0)
N_BOOT_SPEEDUP = 1000
PREDICTIONS = "test_predictions.csv"
NO_FILE = "n/a: no per-utterance file"

Curve = Sequence[Tuple[int, float]]


def read_predictions(path: Path) -> Dict[str, Tuple[float, float]]:
    """{utterance ID: (errors, reference length)} of a run's test_predictions.csv."""
    out = {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"ID", "errors", "ref_len"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}: missing column(s) {sorted(missing)} (expected ID,errors,ref_len,...)")
        for i, row in enumerate(reader, 2):
            try:
                out[row["ID"]] = (float(row["errors"]), float(row["ref_len"]))
            except ValueError:
                raise ValueError(f"{path} line {i}: errors/ref_len must be numbers, got "
                                 f"{row['errors']!r}/{row['ref_len']!r}") from None
    return out


def paired_arrays(base: Dict[int, dict], other: Dict[int, dict]):
    """[n_seeds, n_utts] errors and lengths of both encoders over the seeds both have and the utterances every
    one of those runs has (the whole test set when nothing is missing); also the seeds and the dropped count."""
    seeds = sorted(set(base) & set(other))
    if not seeds:
        return None
    ids = set.intersection(*[set(base[s]) for s in seeds], *[set(other[s]) for s in seeds])
    union = set.union(*[set(base[s]) for s in seeds], *[set(other[s]) for s in seeds])
    ids = sorted(ids)
    if not ids:
        return None

    def mat(preds, k):
        return np.array([[preds[s][u][k] for u in ids] for s in seeds], dtype=np.float64)

    return {"b_err": mat(base, 0), "b_len": mat(base, 1), "o_err": mat(other, 0), "o_len": mat(other, 1),
            "seeds": seeds, "n_utts": len(ids), "dropped_utts": len(union) - len(ids)}


def fold_arrays(base: Dict[int, dict], other: Dict[int, dict]):
    """Per fold (run index) both encoders have, the errors and lengths of the utterances both runs of that fold
    have (each fold its own test set): lists of 1-D arrays; also the folds and the dropped count."""
    folds = sorted(set(base) & set(other))
    out = {"b_err": [], "b_len": [], "o_err": [], "o_len": [], "seeds": folds, "n_utts": 0, "dropped_utts": 0}
    for f in folds:
        ids = sorted(set(base[f]) & set(other[f]))
        out["dropped_utts"] += len(set(base[f]) | set(other[f])) - len(ids)
        if not ids:
            return None
        for key, preds, k in (("b_err", base, 0), ("b_len", base, 1), ("o_err", other, 0), ("o_len", other, 1)):
            out[key].append(np.array([preds[f][u][k] for u in ids], dtype=np.float64))
        out["n_utts"] += len(ids)
    return out if folds else None


def compare_final(base: Dict[int, dict], other: Dict[int, dict], higher_is_better: bool,
                  n_boot: int = N_BOOT, seed: int = 0, folds: bool = False) -> dict:
    """The paired bootstrap difference other - base in metric points, with its verdict; {"na": reason} when the
    runs lack per-utterance files or share no seed. `folds`: the runs are cross-validation folds, each with its
    own test utterances (rewire_lib.analysis.stats.paired_bootstrap_diff_nested); else seeds on one test set."""
    if folds:
        return _compare(fold_arrays(base, other), base, other, higher_is_better, n_boot, seed,
                        stats.paired_bootstrap_diff_nested, lambda a, b: [x - y for x, y in zip(a, b)])
    return _compare(paired_arrays(base, other), base, other, higher_is_better, n_boot, seed,
                    stats.paired_bootstrap_diff, lambda a, b: a - b)


def _compare(arrays, base, other, higher_is_better, n_boot, seed, bootstrap, minus) -> dict:
    if arrays is None:
        return {"na": NO_FILE if not (base and other) else "n/a: no seed or utterance in common"}
    if higher_is_better:  # accuracy = sum(correct) / sum(length): scores are the correct counts
        b, o = minus(arrays["b_len"], arrays["b_err"]), minus(arrays["o_len"], arrays["o_err"])
    else:  # error rate = sum(errors) / sum(reference length)
        b, o = arrays["b_err"], arrays["o_err"]
    res = bootstrap(b, o, n_boot=n_boot, seed=seed, higher_is_better=higher_is_better,
                    base_den=arrays["b_len"], other_den=arrays["o_len"])
    return {"diff": res.diff, "ci_low": res.ci_low, "ci_high": res.ci_high, "base": res.base, "other": res.other,
            "verdict": stats.verdict(res), "n_seeds": res.n_seeds, "n_utts": res.n_utts,
            "dropped_utts": arrays["dropped_utts"], "method": res.method}


def best_dev(curve: Curve, higher_is_better: bool) -> Optional[float]:
    vals = [v for _, v in curve if v is not None and not math.isnan(v)]
    if not vals:
        return None
    return max(vals) if higher_is_better else min(vals)


def time_to(curve: Curve, target: Optional[float], higher_is_better: bool) -> Tuple[Optional[float], Optional[float]]:
    """(steps to target or None, last evaluated step: where a run that never reached it is censored)."""
    pts = sorted(curve)
    if not pts or target is None:
        return None, (float(pts[-1][0]) if pts else None)
    t = stats.steps_to_target([p[0] for p in pts], [p[1] for p in pts], target, higher_is_better)
    return t, float(pts[-1][0])


def convergence(base_curves: Dict[int, Curve], curves: Dict[int, Curve], higher_is_better: bool,
                seed: int = 0, with_speedup: bool = True) -> Optional[dict]:
    """Steps to the base's best dev metric (per seed), censored median with interval, and speed-up over base."""
    seeds = sorted(s for s in set(base_curves) & set(curves) if best_dev(base_curves[s], higher_is_better) is not None
                   and curves[s])
    if not seeds:
        return None
    targets = {s: best_dev(base_curves[s], higher_is_better) for s in seeds}
    own = [time_to(curves[s], targets[s], higher_is_better) for s in seeds]
    base = [time_to(base_curves[s], targets[s], higher_is_better) for s in seeds]
    med = stats.censored_median([t for t, _ in own], [c for _, c in own])
    out = {"seeds": seeds, "targets": [targets[s] for s in seeds], "times": [t for t, _ in own],
           "censored_at": [c for _, c in own], "median": med.median, "ci_low": med.ci_low, "ci_high": med.ci_high,
           "n_reached": med.n_reached, "n_censored": med.n_censored, "n_runs": med.n_runs,
           "speedup": None, "speedup_low": None, "speedup_high": None}
    if with_speedup:
        sp = stats.speedup([t for t, _ in base], [c for _, c in base], [t for t, _ in own], [c for _, c in own],
                           n_boot=N_BOOT_SPEEDUP, seed=seed, paired=True)
        out.update(speedup=sp.ratio, speedup_low=sp.ci_low, speedup_high=sp.ci_high, speedup_method=sp.method)
    return out
