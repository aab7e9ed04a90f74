"""Convergence helpers on hand-made curves, and the report with missing runs (known numbers: test_study_stats_report)."""
import pytest

from rewire_study.convergence import aggregate, best_value, convergence_per_seed, speedup, steps_to_reach
from rewire_study.report import write_report
from rewire_study.stages import downstream_units


# ---------------------------------------------------------------------- convergence on hand-made curves
def test_steps_to_reach_and_speedup_higher_is_better():
    base = [(10, 50.0), (20, 60.0), (30, 70.0), (40, 70.0)]
    fast = [(10, 55.0), (20, 70.0), (30, 80.0)]
    slow = [(10, 40.0), (20, 45.0), (30, 69.9)]
    assert best_value(base, True) == 70.0
    assert steps_to_reach(base, 70.0, True) == 30  # the first step of a tie
    res = convergence_per_seed(base, {"base": base, "fast": fast, "slow": slow}, higher_is_better=True)
    assert res["base"]["steps"] == 30 and res["base"]["speedup"] == 1.0
    assert res["fast"]["steps"] == 20 and res["fast"]["speedup"] == pytest.approx(1.5)
    assert res["slow"]["steps"] is None and res["slow"]["speedup"] is None


def test_steps_to_reach_lower_is_better_unsorted_and_nan():
    base = [(30, 50.0), (10, 80.0), (20, 60.0), (40, float("nan"))]
    enc = [(20, 49.0), (10, 70.0)]
    assert best_value(base, False) == 50.0
    res = convergence_per_seed(base, {"enc": enc}, higher_is_better=False)["enc"]
    assert (res["steps"], res["baseline_steps"], res["speedup"]) == (20, 30, 1.5)
    assert steps_to_reach([], 1.0, True) is None
    assert best_value([(10, float("nan"))], True) is None
    assert speedup(None, 10) is None and speedup(10, None) is None


def test_aggregate_counts_reached_seeds():
    per_seed = [{"steps": 20, "speedup": 1.5}, {"steps": None, "speedup": None}, {"steps": 10, "speedup": 3.0}]
    agg = aggregate(per_seed)
    assert agg["n_seeds"] == 3 and agg["n_reached"] == 2
    assert agg["steps_mean"] == 15 and agg["speedup_mean"] == pytest.approx(2.25)
    none = aggregate([{"steps": None, "speedup": None}])
    assert none["n_reached"] == 0 and none["steps_mean"] is None and none["speedup_mean"] is None


# ---------------------------------------------------------------------- a report with missing runs
def test_report_marks_missing_runs(tmp_path):
    from test_study_stats_report import known_study

    cfg = known_study(tmp_path)
    # drop twin's ks seed 0: n shrinks, the comparison pairs the seeds both have, nothing is invented
    for task, enc, setting, seed, unit in downstream_units(cfg):
        if (task, enc, seed) == ("ks", "twin", 0):
            (unit.folder / "result.json").unlink()
    out = write_report(cfg, {})
    ks = out["cells"][("ks", "all")]["encoders"]["twin"]
    assert ks["n"] == 2 and ks["mean"] == 100.0 and ks["conv"]["n_runs"] == 2
    assert ks["compare"]["n_seeds"] == 2 and ks["compare"]["verdict"] == "better"
    md = (cfg.out / "summary.md").read_text()
    assert "| all | twin | 100 | 100.00 ± 0.00 (n=2) |" in md
