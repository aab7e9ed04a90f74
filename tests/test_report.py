"""The report with missing runs (known numbers: test_study_stats_report), and its mean/sd."""
import pytest

from rewire_lib.analysis.stats import mean_std
from rewire_study.report import write_report
from rewire_study.stages import downstream_units


def test_mean_std_skips_missing_and_nan_values():
    assert mean_std([1.0, None, 3.0, float("nan")]) == (2.0, pytest.approx(2 ** 0.5))
    assert mean_std([5.0]) == (5.0, 0.0) and mean_std([None]) == (None, None)


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
