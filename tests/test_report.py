"""The study's report on hand-made runs: convergence, speed-up, "not reached", verdicts, CSV vs result.json."""
import csv
import json
import math
from pathlib import Path

import pytest

from rewire_study.config import parse_args
from rewire_study.convergence import aggregate, best_value, convergence_per_seed, speedup, steps_to_reach
from rewire_study.report import NOT_REACHED, write_report
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


# ---------------------------------------------------------------------- a report from constructed runs
CURVES = {  # (task) -> encoder -> dev curve; ks: accuracy (higher better), pr: PER (lower better)
    "ks": {"base": [50, 60, 70, 70], "twin": [55, 70, 80, 80], "neutral": [40, 45, 50, 60]},
    "pr": {"base": [80, 60, 50, 55], "twin": [70, 50, 45, 45], "neutral": [90, 85, 80, 75]},
}
TESTS = {  # task -> encoder -> test metric per seed (0, 1)
    "ks": {"base": [80.0, 82.0], "twin": [85.0, 87.0], "neutral": [70.0, 72.0]},
    "pr": {"base": [50.0, 52.0], "twin": [44.0, 46.0], "neutral": [78.0, 80.0]},
}


def fake_study(tmp_path: Path):
    cfg = parse_args(["--out", str(tmp_path / "results"), "--encoders", f"base={tmp_path / 'enc'}",
                      "--tasks", "ks,pr", "--views", "twin,neutral", "--fractions", "1.0", "--seeds", "0,1",
                      "--eval-every", "10", "--data-dir", str(tmp_path / "data")])
    metric = {"ks": ("accuracy", True), "pr": ("per", False)}
    for task, enc, frac, seed, unit in downstream_units(cfg):
        m, hib = metric[task]
        unit.folder.mkdir(parents=True)
        with open(unit.folder / "curve.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["step", "epoch", "train_loss", "dev_loss", f"dev_{m}", "wall_time_s", "eval_time_s"])
            for i, v in enumerate(CURVES[task][enc]):
                w.writerow([10 * (i + 1), 1, 1.0, 1.0, v, i, 0.1])
        result = {"task": task, "metric": m, "higher_is_better": hib, f"test_{m}": TESTS[task][enc][seed],
                  "num_train": 100, "steps": 40, "train_fraction": frac, "seed": seed}
        (unit.folder / "result.json").write_text(json.dumps(result))
        unit.finish()  # done with this spec: the report counts only finished units
    iso = cfg.work / "isotropy"
    iso.mkdir(parents=True)
    rows = [{"encoder": e, "layer": l, "level": lvl, "n_vectors": 500, "iw": 0.1 * (l + 1) * k, "iw_centred": 0.5,
             "avg_cosine": 0.9 / k, "isoscore": 0.2 * k, "top_pc_share": 0.3}
            for k, e in ((1, "base"), (2, "twin"), (3, "neutral")) for lvl in ("frame", "utterance") for l in range(3)]
    settings = {"level": "both", "centred": False, "normalised": False, "max_vectors": 500, "seed": 0, "top_k": 1}
    (iso / "isotropy.json").write_text(json.dumps({"settings": settings, "rows": rows}))
    return cfg


def test_report_on_constructed_runs(tmp_path):
    cfg = fake_study(tmp_path)
    stages = {"stages": {"downstream": {"status": "done", "wall_time_s": 12.5, "work_time_s": 30.0,
                                        "peak_rss_mib": {"self": 900.0, "children": 0.0}, "settings": {"seeds": [0, 1]},
                                        "units_run": 12, "units_skipped": 0, "units_failed": 0}},
              "total_wall_time_s": 12.5, "total_work_time_s": 30.0, "peak_rss_mib": 900.0}
    out = write_report(cfg, stages)
    cells = out["cells"]
    ks = cells[("ks", 1.0)]["encoders"]
    assert ks["twin"]["conv"]["steps_mean"] == 20 and ks["twin"]["conv"]["speedup_mean"] == pytest.approx(1.5)
    assert ks["base"]["conv"]["steps_mean"] == 30 and ks["base"]["conv"]["speedup_mean"] == pytest.approx(1.0)
    assert ks["neutral"]["conv"]["n_reached"] == 0
    assert ks["twin"]["mean"] == 86.0 and ks["twin"]["std"] == pytest.approx(math.sqrt(2))
    assert ks["twin"]["beats_base"] is True and ks["neutral"]["beats_base"] is False
    pr = cells[("pr", 1.0)]["encoders"]
    assert pr["twin"]["conv"]["speedup_mean"] == pytest.approx(1.5) and pr["twin"]["beats_base"] is True
    assert pr["neutral"]["beats_base"] is False and pr["neutral"]["conv"]["n_reached"] == 0

    # every output file
    res = cfg.out
    for name in ["summary.md", "summary.csv", "figures/convergence_ks_frac1.png", "figures/convergence_pr_frac1.png",
                 "figures/isotropy_per_layer.png"]:
        assert (res / name).is_file() and (res / name).stat().st_size > 0, name
    assert (res / "figures/convergence_ks_frac1.png").read_bytes()[:4] == b"\x89PNG"

    # summary.csv: each result.json's test metric is there, per seed
    rows = list(csv.DictReader(open(res / "summary.csv")))
    tests = {(r["task"], r["encoder"], r["seed"]): float(r["value"]) for r in rows if r["section"] == "test"
             and r["seed"] in ("0", "1")}
    for task, enc, frac, seed, unit in downstream_units(cfg):
        result = json.loads((unit.folder / "result.json").read_text())
        assert tests[(task, enc, str(seed))] == result[f"test_{result['metric']}"]
    conv = {(r["task"], r["encoder"], r["seed"], r["quantity"]): r["value"] for r in rows if r["section"] == "convergence"}
    assert float(conv[("ks", "twin", "mean", "speedup")]) == pytest.approx(1.5)
    assert conv[("ks", "neutral", "0", "steps_to_baseline_best")] == NOT_REACHED
    assert conv[("pr", "neutral", "mean", "speedup")] == NOT_REACHED
    iso = [r for r in rows if r["section"] == "isotropy" and r["layer"] == "mean" and r["quantity"] == "isoscore"]
    assert {(r["encoder"], r["level"]): float(r["value"]) for r in iso}[("twin", "frame")] == pytest.approx(0.4)
    assert any(r["section"] == "stage" and r["task"] == "downstream" and r["quantity"] == "wall_time_s"
               and float(r["value"]) == 12.5 for r in rows)

    md = (res / "summary.md").read_text()
    assert "**twin** beats `base` in 2 of 2 task/fraction cells" in md
    assert "**neutral** beats `base` in 0 of 2 task/fraction cells" in md
    assert "It does **not** beat it in: ks @ 1, pr @ 1." in md
    assert "| 1 | twin | 100 | 86.00 ± 1.41 (n=2) | +5.00 | yes | 20.0 (2/2) | 1.50x |" in md
    assert "| 1 | neutral | 100 | 71.00 ± 1.41 (n=2) | -10.00 | no | not reached (0/2) | not reached |" in md
    assert "| 1 | twin | 100 | 45.00 ± 1.41 (n=2) | -6.00 | yes | 20.0 (2/2) | 1.50x |" in md
    assert "![ks fraction 1](figures/convergence_ks_frac1.png)" in md
    assert "| downstream | done | 12.5 | 30.0 | 12 / 0 / 0 | n/a | 900 |" in md


def test_report_marks_missing_runs(tmp_path):
    cfg = fake_study(tmp_path)
    # drop every neutral run of pr seed 1 and twin's ks seed 0: n shrinks, nothing is invented
    for task, enc, frac, seed, unit in downstream_units(cfg):
        if (task, enc, seed) in (("pr", "neutral", 1), ("ks", "twin", 0)):
            (unit.folder / "result.json").unlink()
    out = write_report(cfg, {})
    ks = out["cells"][("ks", 1.0)]["encoders"]["twin"]
    assert ks["n"] == 1 and ks["mean"] == 87.0 and ks["conv"]["n_seeds"] == 1
    md = (cfg.out / "summary.md").read_text()
    assert "| 1 | twin | 100 | 87.00 ± 0.00 (n=1) |" in md
