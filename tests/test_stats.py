"""Statistics on constructed runs with known answers (rewire_lib.analysis.stats)."""
import math

import numpy as np
import pytest

from rewire_lib.analysis.stats import (BETTER, NO_DIFFERENCE, WORSE, StatsError, best_checkpoint, censored_median,
                              paired_bootstrap_diff, paired_bootstrap_diff_nested, speedup, steps_to_target,
                              verdict)


# ---------------------------------------------------------------------------------------- paired bootstrap
def test_constant_gain_of_five_points_gives_a_tight_interval_at_five_and_better():
    rng = np.random.default_rng(1)
    base = rng.random((3, 200))
    res = paired_bootstrap_diff(base, base + 0.05, n_boot=2000)
    assert res.diff == pytest.approx(5.0)
    assert res.ci_low == pytest.approx(5.0) and res.ci_high == pytest.approx(5.0)
    assert (res.n_seeds, res.n_utts, res.n_boot) == (3, 200, 2000)
    assert "bootstrap" in res.method and "seeds" in res.method and "utterances" in res.method
    assert verdict(res) == BETTER
    assert verdict(res, higher_is_better=False) == WORSE


def test_accuracy_five_points_higher_on_correctness_arrays_excludes_zero():
    rng = np.random.default_rng(2)
    base = (rng.random((5, 1000)) < 0.6).astype(float)
    other = base.copy()
    for s in range(5):  # in every seed, 50 of the 1000 utterances base got wrong are right: +5 points
        other[s, rng.choice(np.flatnonzero(base[s] == 0), 50, replace=False)] = 1.0
    res = paired_bootstrap_diff(base, other, n_boot=2000)
    assert res.diff == pytest.approx(5.0)
    assert 0.0 < res.ci_low < 5.0 < res.ci_high < 10.0
    assert verdict(res) == BETTER


def test_identical_encoders_tie_exactly_and_are_no_detectable_difference():
    base = (np.random.default_rng(3).random((4, 100)) < 0.5).astype(float)
    res = paired_bootstrap_diff(base, base.copy(), n_boot=500)
    assert (res.diff, res.ci_low, res.ci_high) == (0.0, 0.0, 0.0)
    assert verdict(res) == NO_DIFFERENCE
    assert verdict(res, higher_is_better=False) == NO_DIFFERENCE


def test_interval_is_paired_its_width_matches_the_paired_standard_error():
    """One seed: the percentile interval's half-width is about 1.96 x SE of the mean paired difference.
    An unpaired bootstrap of the same data would be about 3x wider."""
    rng = np.random.default_rng(4)
    n = 2000
    base = (rng.random(n) < 0.7).astype(float)
    other = base.copy()
    flip = rng.random(n) < 0.04
    other[flip] = 1.0 - other[flip]
    res = paired_bootstrap_diff(base, other, n_boot=4000, seed=1)
    se = 100 * np.std(other - base, ddof=1) / math.sqrt(n)
    assert (res.ci_high - res.ci_low) / 2 == pytest.approx(1.96 * se, rel=0.15)
    assert res.ci_low < res.diff < res.ci_high


# ------------------------------------------------------------------------- nested (cross-validation folds)
def test_nested_bootstrap_on_folds_of_different_sizes_ties_and_gains():
    rng = np.random.default_rng(7)
    base = [(rng.random(n) < 0.6).astype(float) for n in (120, 80, 100)]  # each fold its own test utterances
    tie = paired_bootstrap_diff_nested(base, [b.copy() for b in base], n_boot=500)
    assert (tie.diff, tie.ci_low, tie.ci_high) == (0.0, 0.0, 0.0) and verdict(tie) == NO_DIFFERENCE
    assert (tie.n_seeds, tie.n_utts) == (3, 300) and "folds" in tie.method
    gain = paired_bootstrap_diff_nested(base, [b + 0.05 for b in base], n_boot=500)
    assert gain.diff == pytest.approx(5.0) and gain.ci_low == pytest.approx(5.0) == gain.ci_high
    assert verdict(gain) == BETTER


def test_nested_bootstrap_resamples_folds_then_utterances_within_them():
    """The difference is +10 points on every utterance of two folds and -10 on the third: resampling folds must
    spread the interval over [-10, +10] (about the fold mix), and a ratio metric is pooled over the folds."""
    base = [np.zeros(50), np.zeros(50), np.zeros(50)]
    other = [np.full(50, 0.1), np.full(50, 0.1), np.full(50, -0.1)]
    res = paired_bootstrap_diff_nested(base, other, n_boot=4000, seed=3)
    assert res.diff == pytest.approx(10 / 3)
    assert res.ci_low == pytest.approx(-10.0) and res.ci_high == pytest.approx(10.0) and verdict(res) == NO_DIFFERENCE
    # WER-like: errors over reference words, folds of different lengths pooled as one corpus WER
    errs_b, errs_o = [np.array([1.0, 1.0]), np.array([2.0])], [np.array([0.0, 1.0]), np.array([2.0])]
    lens = [np.array([4.0, 4.0]), np.array([2.0])]
    wer = paired_bootstrap_diff_nested(errs_b, errs_o, n_boot=200, higher_is_better=False, base_den=lens)
    assert wer.base == pytest.approx(100 * 4 / 10) and wer.other == pytest.approx(100 * 3 / 10)


def test_nested_bootstrap_needs_matching_folds():
    with pytest.raises(StatsError, match="same folds"):
        paired_bootstrap_diff_nested([np.zeros(3), np.zeros(4)], [np.zeros(3), np.zeros(5)])
    with pytest.raises(StatsError, match="same folds"):
        paired_bootstrap_diff_nested([np.zeros(3)], [np.zeros(3), np.zeros(3)])
    with pytest.raises(StatsError, match="base_den fold 1"):
        paired_bootstrap_diff_nested([np.ones(2), np.ones(2)], [np.ones(2), np.ones(2)],
                                     base_den=[np.ones(2), np.zeros(2)])


def test_seeds_are_resampled_too():
    """The difference is constant within each seed (1, 3, 5, 7, 9 points): only resampling seeds widens the
    interval; resampling utterances alone would give [5, 5]."""
    base = np.zeros((5, 50))
    other = base + np.array([1, 3, 5, 7, 9])[:, None] / 100.0
    res = paired_bootstrap_diff(base, other, n_boot=4000)
    assert res.diff == pytest.approx(5.0)
    assert 1.0 < res.ci_low < 4.0 and 6.0 < res.ci_high < 9.0


def test_ratio_metric_is_corpus_level_and_recomputed_per_replicate():
    errors = np.array([1.0, 0.0])
    words = np.array([1.0, 9.0])
    res = paired_bootstrap_diff(errors, errors, base_den=words, n_boot=200, higher_is_better=False)
    assert res.base == pytest.approx(10.0)  # 1 error in 10 words, not the mean of utterance WERs (50 %)
    assert "ratio" in res.method
    # Every utterance loses one error out of 10 words: WER -10 points in every replicate: better (lower).
    base = np.array([[1.0, 2.0, 3.0], [2.0, 2.0, 2.0]])
    res = paired_bootstrap_diff(base, base - 1, base_den=[10, 10, 10], n_boot=500, higher_is_better=False)
    assert res.base == pytest.approx(20.0) and res.other == pytest.approx(10.0)
    assert res.diff == pytest.approx(-10.0)
    assert res.ci_low == pytest.approx(-10.0) and res.ci_high == pytest.approx(-10.0)
    assert verdict(res) == BETTER


def test_ratio_metric_other_den_may_differ_per_seed():
    base = np.ones((2, 3))
    res = paired_bootstrap_diff(base, base, base_den=[2, 2, 2], other_den=[[2, 2, 2], [1, 1, 1]], n_boot=100)
    assert res.base == pytest.approx(50.0) and res.other == pytest.approx(100 * 6 / 9)


def test_bootstrap_is_reproducible_by_seed_and_noise_is_no_difference():
    rng = np.random.default_rng(5)
    base = (rng.random((3, 300)) < 0.5).astype(float)
    other = (rng.random((3, 300)) < 0.5).astype(float)
    a = paired_bootstrap_diff(base, other, n_boot=1000, seed=7)
    b = paired_bootstrap_diff(base, other, n_boot=1000, seed=7)
    assert a == b
    assert a.ci_low < 0 < a.ci_high and verdict(a) == NO_DIFFERENCE


def test_interval_touching_zero_is_no_difference():
    from dataclasses import replace

    res = paired_bootstrap_diff(np.zeros(10), np.full(10, 0.01), n_boot=10)
    assert verdict(replace(res, ci_low=0.0)) == NO_DIFFERENCE
    assert verdict(replace(res, ci_low=-3.0, ci_high=-0.5)) == WORSE


@pytest.mark.parametrize("kwargs, message", [
    (dict(base=np.zeros((2, 5)), other=np.zeros((3, 5))), "same"),
    (dict(base=[0.0, np.nan], other=[0.0, 1.0]), "NaN"),
    (dict(base=[1.0, 1.0], other=[1.0, 1.0], base_den=[1.0, 0.0]), "base_den"),
    (dict(base=[1.0, 1.0], other=[1.0, 1.0], base_den=[1.0, 1.0, 1.0]), "base_den"),
    (dict(base=[1.0, 1.0], other=[1.0, 1.0], other_den=[1.0, 1.0]), "base_den"),
    (dict(base=[1.0, 1.0], other=[1.0, 1.0], ci=1.5), "ci"),
])
def test_bootstrap_bad_input_is_refused_with_a_message(kwargs, message):
    with pytest.raises(StatsError, match=message):
        paired_bootstrap_diff(n_boot=10, **kwargs)


# ------------------------------------------------------------------------------------------ steps-to-target
def test_steps_to_target_first_step_reaching_it_or_none():
    steps = [10, 20, 30]
    assert steps_to_target(steps, [50, 70, 90], 70) == 20
    assert steps_to_target(steps, [50, 70, 90], 95) is None
    assert steps_to_target(steps, [100, 100, 60], 80, higher_is_better=False) == 30
    assert steps_to_target(steps, [np.nan, 60, 90], 50) == 20  # a NaN evaluation never counts as reached
    assert steps_to_target([], [], 1.0) is None
    with pytest.raises(StatsError, match="increasing"):
        steps_to_target([10, 10, 30], [1, 2, 3], 2)
    with pytest.raises(StatsError, match="length"):
        steps_to_target([10, 20], [1], 2)


def test_three_of_five_censored_runs_are_counted_and_leave_the_median_undefined():
    res = censored_median([10, 20, None, None, None], censored_at=100)
    assert (res.n_reached, res.n_censored, res.n_runs) == (2, 3, 5)
    assert res.median is None  # S stays at 0.6 > 0.5
    assert res.ci_low == 10 and math.isinf(res.ci_high)
    assert "Kaplan-Meier" in res.method and "Brookmeyer" in res.method


def test_censored_runs_are_not_dropped():
    # Dropping the two censored runs would give a median of 20; Kaplan-Meier keeps them at risk: 30.
    res = censored_median([10, 20, 30, None, None], censored_at=[100, 100, 100, 80, 100])
    assert res.median == 30 and res.n_censored == 2
    # A run censored early (at step 5) leaves the risk set: S(10) = 2/3, S(20) = 1/3 -> median 20,
    # where counting it as reached at 5 would give 10.
    assert censored_median([None, 10, 20, 30], censored_at=[5, 40, 40, 40]).median == 20


def test_median_interval_matches_a_hand_computed_greenwood_log_log_band():
    # S = .8 .6 .4 .2 0 at 10..50. Lower band at 10: .8 ** exp(1.96 * 1.002) = .204 <= .5 -> low end 10.
    # Upper band: .753 at 30, .582 at 40 (both > .5), S = 0 at 50 -> high end 50.
    res = censored_median([10, 20, 30, 40, 50], censored_at=50)
    assert (res.median, res.ci_low, res.ci_high) == (30, 10, 50)
    assert res.n_censored == 0


def test_bootstrap_km_median_agrees_with_the_reported_scipy_curve():
    from rewire_lib.analysis.stats import _km_median, _observations

    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 9))
        times = [None if rng.random() < 0.4 else int(rng.integers(1, 6)) * 10 for _ in range(n)]
        limits = [int(rng.integers(1, 6)) * 10 for _ in range(n)]
        assert _km_median(*_observations(times, limits)) == censored_median(times, limits).median, (times, limits)


def test_no_run_reaches_the_target():
    res = censored_median([None, None], censored_at=[30, 40])
    assert res.median is None and res.n_censored == 2 and math.isinf(res.ci_low)
    with pytest.raises(StatsError, match="censored_at"):
        censored_median([None, 10], censored_at=[None, 20])
    with pytest.raises(StatsError, match="2 entries for 3 runs"):
        censored_median([1, 2, 3], censored_at=[5, 5])


def test_speedup_of_runs_exactly_twice_as_fast_is_two_with_a_tight_paired_interval():
    res = speedup([20, 40, 60, 80, 100], 100, [10, 20, 30, 40, 50], 100, n_boot=300)
    assert (res.base_median, res.other_median, res.ratio) == (60, 30, 2.0)
    assert (res.ci_low, res.ci_high) == (2.0, 2.0)
    unpaired = speedup([20, 40, 60, 80, 100], 100, [10, 20, 30, 40, 50], 100, n_boot=300, paired=False)
    assert unpaired.ratio == 2.0 and unpaired.ci_low < 2.0 < unpaired.ci_high


def test_speedup_is_none_when_a_median_is_undefined():
    res = speedup([10, None, None, None, None], 100, [10, 20, 30, 40, 50], 100, n_boot=200)
    assert res.ratio is None and res.ci_low is None and res.base_median is None and res.other_median == 30
    res = speedup([None, None], 50, [None, None], 50, n_boot=50)
    assert res.ratio is None and res.n_undefined == 50
    with pytest.raises(StatsError, match="as many"):
        speedup([1, 2], 5, [1], 5)


# ------------------------------------------------------------------------------------------- checkpoints
def test_best_checkpoint_breaks_metric_ties_by_lower_dev_loss_not_by_order():
    rows = [{"step": s, "wer": 100.0, "loss": l} for s, l in [(75, 5.0), (150, 4.0), (225, 3.0), (300, 3.5)]]
    assert best_checkpoint(rows, "wer", "loss", higher_is_better=False)["step"] == 225
    rows.append({"step": 375, "wer": 99.0, "loss": 9.0})  # a better metric wins whatever its loss
    assert best_checkpoint(rows, "wer", "loss", higher_is_better=False)["step"] == 375


def test_best_checkpoint_accuracy_tolerance_and_nan_loss():
    rows = [{"acc": 80.0, "loss": float("nan")}, {"acc": 80.0, "loss": 2.0}, {"acc": 79.99, "loss": 1.0}]
    assert best_checkpoint(rows, "acc", "loss") is rows[1]  # NaN loss ranks last
    assert best_checkpoint(rows, "acc", "loss", metric_tol=0.05) is rows[2]
    full_tie = [{"acc": 1.0, "loss": 1.0, "i": 0}, {"acc": 1.0, "loss": 1.0, "i": 1}]
    assert best_checkpoint(full_tie, "acc", "loss")["i"] == 0
    with pytest.raises(StatsError, match="row 1 has no 'loss'"):
        best_checkpoint([{"acc": 1, "loss": 1}, {"acc": 2}], "acc", "loss")
    with pytest.raises(StatsError, match="no dev rows"):
        best_checkpoint([], "acc", "loss")
