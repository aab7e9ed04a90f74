"""The study's report on a study folder with KNOWN numbers: per-utterance predictions -> the paired bootstrap
difference (checked against a direct call of rewire_lib.analysis.stats), verdicts (better / worse / no detectable
difference for an exact tie), censored steps-to-target counts, "n/a" without a per-utterance file; the
low-resource settings are distinct nested subsets; the random control differs from base and loads."""
import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from rewire_lib.analysis import stats
from rewire_study.comparison import N_BOOT, NO_FILE
from rewire_study.config import parse_args
from rewire_study.report import write_report
from rewire_lib.data.subsets import per_class_subset
from rewire_study.stages import (downstream_units, make_random_encoder, make_study_manifests,
                                 run_settings)

N_UTTS = 40
SEEDS = [0, 1, 2]
# dev curves (steps 10..40): ks accuracy (higher is better), pr PER (lower is better)
KS_CURVES = {"base": [50, 60, 70, 70], "twin": [55, 70, 80, 80],
             "neutral": {0: [40, 45, 50, 60], 1: [40, 45, 50, 60], 2: [40, 50, 60, 75]}}
PR_CURVES = {"base": [80, 60, 50, 55], "twin": [90, 85, 80, 75], "neutral": [70, 50, 45, 45]}


def ks_errors(enc: str, seed: int) -> list:
    """0/1 errors per test utterance: base wrong on utterances 0..9 (+ one per seed), twin wrong on none,
    neutral exactly like base (a tie)."""
    base = [1 if (u < 10 or u == 20 + seed) else 0 for u in range(N_UTTS)]
    return [0] * N_UTTS if enc == "twin" else base


def pr_errors(enc: str, seed: int) -> list:
    """Phoneme errors of 10 reference phonemes: base 3 (+1 on utterance seed), twin 5, neutral 3 and 2."""
    if enc == "twin":
        return [5] * N_UTTS
    if enc == "neutral":
        return [2 if u % 2 else 3 for u in range(N_UTTS)]
    return [4 if u == seed else 3 for u in range(N_UTTS)]


def write_run(unit, task: str, enc: str, seed: int, with_predictions: bool = True) -> None:
    metric, hib = ("accuracy", True) if task == "ks" else ("per", False)
    curves = KS_CURVES if task == "ks" else PR_CURVES
    curve = curves[enc][seed] if isinstance(curves[enc], dict) else curves[enc]
    errs = (ks_errors if task == "ks" else pr_errors)(enc, seed)
    ref = 1 if task == "ks" else 10
    unit.folder.mkdir(parents=True)
    with open(unit.folder / "curve.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "epoch", "train_loss", "dev_loss", f"dev_{metric}", "wall_time_s", "eval_time_s"])
        for i, v in enumerate(curve):
            w.writerow([10 * (i + 1), 1, 1.0, 1.0, v, i, 0.1])
    if with_predictions:
        with open(unit.folder / "test_predictions.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["ID", "errors", "ref_len", "prediction", "target"])
            for u, e in enumerate(errs):
                w.writerow([f"utt{u:03d}", e, ref, "p", "t"])
    value = 100 * (1 - sum(errs) / (ref * N_UTTS)) if hib else 100 * sum(errs) / (ref * N_UTTS)
    result = {"task": task, "metric": metric, "higher_is_better": hib, f"test_{metric}": value, "num_train": 100,
              "steps": 40, "seed": seed, "best_dev_loss": 1.0}
    (unit.folder / "result.json").write_text(json.dumps(result))
    unit.finish()


def known_study(tmp_path: Path):
    cfg = parse_args(["--out", str(tmp_path / "results"), "--encoders", f"base={tmp_path / 'enc'}",
                      "--tasks", "ks,pr", "--views", "twin,neutral", "--controls", "none", "--per-class", "none",
                      "--fractions", "1.0", "--seeds", ",".join(map(str, SEEDS)), "--eval-every", "10",
                      "--folds", "none", "--data-dir", str(tmp_path / "data")])
    for task, enc, setting, seed, unit in downstream_units(cfg):
        write_run(unit, task, enc, seed, with_predictions=not (task == "pr" and enc == "neutral" and seed == 1))
    return cfg


def matrices(task: str, enc: str):
    f = ks_errors if task == "ks" else pr_errors
    return np.array([f(enc, s) for s in SEEDS], dtype=float)


def test_report_statistics_match_the_library_on_known_runs(tmp_path):
    cfg = known_study(tmp_path)
    out = write_report(cfg, {})
    ks = out["cells"][("ks", "all")]["encoders"]
    # twin: right where base is wrong -> better; interval equals a direct call of the library
    ones = np.ones((len(SEEDS), N_UTTS))
    direct = stats.paired_bootstrap_diff(ones - matrices("ks", "base"), ones - matrices("ks", "twin"), n_boot=N_BOOT,
                                         seed=0, higher_is_better=True, base_den=ones, other_den=ones)
    twin = ks["twin"]["compare"]
    assert twin["verdict"] == stats.BETTER
    assert twin["diff"] == pytest.approx(direct.diff) and twin["diff"] == pytest.approx(100 * 11 / N_UTTS)
    assert (twin["ci_low"], twin["ci_high"]) == pytest.approx((direct.ci_low, direct.ci_high))
    assert twin["n_seeds"] == 3 and twin["n_utts"] == N_UTTS
    # neutral: the same predictions as base -> an exact tie is "no detectable difference", never worse
    tie = ks["neutral"]["compare"]
    assert tie["verdict"] == stats.NO_DIFFERENCE and tie["diff"] == 0 and tie["ci_low"] == tie["ci_high"] == 0

    # PER (lower is better): twin makes more errors -> worse, against the library's ratio metric
    pr = out["cells"][("pr", "all")]["encoders"]
    tens = np.full((len(SEEDS), N_UTTS), 10.0)
    direct = stats.paired_bootstrap_diff(matrices("pr", "base"), matrices("pr", "twin"), n_boot=N_BOOT, seed=0,
                                         higher_is_better=False, base_den=tens, other_den=tens)
    assert pr["twin"]["compare"]["verdict"] == stats.WORSE
    assert pr["twin"]["compare"]["diff"] == pytest.approx(direct.diff)
    assert (pr["twin"]["compare"]["ci_low"], pr["twin"]["compare"]["ci_high"]) == pytest.approx(
        (direct.ci_low, direct.ci_high))
    # a run without test_predictions.csv: no interval, marked, not guessed
    assert pr["neutral"]["compare"] == {"na": NO_FILE}

    # censoring: neutral reaches base's best (70) only in seed 2 (at step 40); the others are censored at 40
    conv = ks["neutral"]["conv"]
    assert conv["times"] == [None, None, 40.0] and conv["n_reached"] == 1 and conv["n_censored"] == 2
    direct_med = stats.censored_median([None, None, 40.0], [40.0, 40.0, 40.0])
    assert conv["median"] == direct_med.median is None
    assert ks["twin"]["conv"]["times"] == [20.0] * 3 and ks["twin"]["conv"]["median"] == 20.0
    assert ks["base"]["conv"]["median"] == 30.0
    assert ks["twin"]["conv"]["speedup"] == pytest.approx(1.5)

    md = (cfg.out / "summary.md").read_text()
    assert "- **twin** vs `base` over 2 cells: better in 1 (ks @ all); worse in 1 (pr @ all)." in md
    assert "- **neutral** vs `base` over 1 cells: no detectable difference in 1." in md
    assert f"Not compared ({NO_FILE} or no run): pr @ all." in md
    assert f"| all | twin | 100 | 100.00 ± 0.00 (n=3) | +27.50 [{direct_ci(twin)}] | better |" in md
    assert "| all | neutral | 100 |" in md and "(1 reached, 2 censored)" in md
    assert f"| {NO_FILE} | n/a |" in md
    assert "Fewer than 5 seeds for ks (3), pr (3)" in md
    rows = list(csv.DictReader(open(cfg.out / "summary.csv")))
    verdicts = {(r["task"], r["encoder"]): r["value"] for r in rows
                if r["section"] == "difference_to_base" and r["quantity"] == "verdict"}
    assert verdicts == {("ks", "twin"): "better", ("ks", "neutral"): stats.NO_DIFFERENCE, ("pr", "twin"): "worse",
                        ("pr", "neutral"): NO_FILE}
    # no absolute machine path in the report files (relative ones such as ../../tmp/... are fine)
    for name in ("summary.md", "summary.csv"):
        assert not re.search(r"(^|[\s`(,'\"=|])" + re.escape(str(tmp_path)), (cfg.out / name).read_text()), name


def _fold_manifests(data: Path, n_folds: int, n_test: int) -> None:
    """data/fsdd/connected/folds/fold{k}: speaker s{k} held out for test, s{k+1} for dev, 2 training speakers."""
    for k in range(1, n_folds + 1):
        spk = {"test": f"s{k}", "dev": f"s{k % n_folds + 1}"}
        for split, n in (("train", 6), ("dev", 2), ("test", n_test)):
            path = data / "fsdd" / "connected" / "folds" / f"fold{k}" / f"{split}.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["ID", "duration", "wav", "spk_id", "wrd", "phn"])
                for i in range(n):
                    who = spk.get(split, f"t{i % 2}")
                    w.writerow([f"{who}_{split}_{i:03d}", 1.0, f"{who}_{i}.wav", who, "one", "W AH N"])


def test_speaker_fold_runs_are_compared_fold_by_fold_with_the_nested_bootstrap(tmp_path):
    """PR on 3 speaker folds: run k reads fold k's manifests (seed k-1), each fold has its own test speaker, and
    the interval is the library's two-stage (folds, then utterances) bootstrap on exactly those utterances."""
    data, n_test = tmp_path / "data", 20
    _fold_manifests(data, 3, n_test)
    iso = tmp_path / "iso.csv"
    _manifest(iso, 2, 2)
    cfg = parse_args(["--out", str(tmp_path / "results"), "--encoders", f"base={tmp_path / 'enc'}", "--tasks", "pr",
                      "--views", "twin", "--controls", "none", "--folds", "pr=3", "--eval-every", "10",
                      "--data-dir", str(data), "--iso-manifest", str(iso), "--rewire-csv", str(iso)])
    assert cfg.seeds_of("pr") == [0, 1, 2] and cfg.fold_of("pr", 2) == "fold3"
    make_study_manifests(cfg)
    units = [u for u in downstream_units(cfg) if u[2] == "all"]
    assert sorted((u[1], u[3], u[4].folder.name) for u in units) == sorted(
        (e, s, f"fold{s + 1}") for e in ("base", "twin") for s in range(3))
    errors = {}
    for task, enc, setting, seed, unit in units:
        assert unit.spec["data_folder"].endswith(f"fold{seed + 1}") and unit.spec["seed"] == seed
        test_ids = [r["ID"] for r in csv.DictReader(open(Path(unit.spec["data_folder"]) / "test.csv"))]
        assert {i.split("_")[0] for i in test_ids} == {f"s{seed + 1}"}
        # base: 3 errors of 10 phonemes everywhere; twin: 1 fewer on fold 1 only (others equal)
        errs = [2 if (enc == "twin" and seed == 0) else 3 for _ in test_ids]
        errors[(enc, seed)] = errs
        unit.folder.mkdir(parents=True)
        with open(unit.folder / "test_predictions.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["ID", "errors", "ref_len", "prediction", "target"])
            w.writerows([i, e, 10, "p", "t"] for i, e in zip(test_ids, errs))
        with open(unit.folder / "curve.csv", "w", newline="") as f:
            csv.writer(f).writerows([["step", "dev_per"], [10, 50], [20, 40]])
        (unit.folder / "result.json").write_text(json.dumps(
            {"task": "pr", "metric": "per", "higher_is_better": False, "test_per": 10.0 * np.mean(errs),
             "num_train": 6, "steps": 20, "seed": seed}))
        unit.finish()
    out = write_report(cfg, {})
    got = out["cells"][("pr", "all")]["encoders"]["twin"]["compare"]
    tens = [np.full(n_test, 10.0)] * 3
    direct = stats.paired_bootstrap_diff_nested([np.array(errors[("base", s)], float) for s in range(3)],
                                                [np.array(errors[("twin", s)], float) for s in range(3)],
                                                n_boot=N_BOOT, seed=0, higher_is_better=False, base_den=tens,
                                                other_den=tens)
    assert got["diff"] == pytest.approx(-10 / 3) and got["diff"] == pytest.approx(direct.diff)
    assert (got["ci_low"], got["ci_high"]) == pytest.approx((direct.ci_low, direct.ci_high))
    assert got["n_seeds"] == 3 and got["n_utts"] == 3 * n_test and "two-stage" in got["method"]
    # one fold of three improves: folds drawn without it give 0, so the interval reaches 0 -> no difference
    assert got["ci_high"] == pytest.approx(0.0) and got["verdict"] == stats.NO_DIFFERENCE
    md = (cfg.out / "summary.md").read_text()
    assert "pr: fold1 s1, fold2 s2, fold3 s3" in md and "Speaker folds for pr (3), one run per fold" in md
    assert "| pr | default | ../data/fsdd/connected | 6 of 6 each of 3 folds |" in md
    assert "| setting | encoder | fold1 (s1) | fold2 (s2) | fold3 (s3) |" in md
    assert "| all | base | 30.0 | 30.0 | 30.0 |" in md and "| all | twin | 20.0 | 30.0 | 30.0 |" in md


def direct_ci(c: dict) -> str:
    return f"{c['ci_low']:.2f}, {c['ci_high']:.2f}"


def _manifest(path: Path, n_classes: int, per_class: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ID", "duration", "wav", "label"])
        for c in range(n_classes):
            for i in range(per_class):
                w.writerow([f"c{c}_{i}", 1.0, f"c{c}_{i}.wav", f"class{c}"])


def test_low_resource_settings_are_distinct_nested_subsets(tmp_path):
    data = tmp_path / "data"
    for split, n in (("train", 30), ("dev", 4), ("test", 4)):
        _manifest(data / "speech_commands" / f"{split}.csv", 3, n)
    iso = tmp_path / "iso.csv"
    _manifest(iso, 2, 2)
    cfg = parse_args(["--out", str(tmp_path / "results"), "--tasks", "ks", "--per-class", "40,20,5,1",
                      "--views", "none", "--controls", "none", "--data-dir", str(data), "--iso-manifest", str(iso)])
    sizes = make_study_manifests(cfg)["sizes"]["ks"]["settings"]
    # 40 per class asks for more than each class has: the same subset as "all", said so and not run
    assert sizes["k40"] == {"utterances": 90, "same_as": "all"}
    assert [sizes[k]["utterances"] for k in ("all", "k20", "k5", "k1")] == [90, 60, 15, 3]
    assert run_settings(cfg, "ks") == ["all", "k20", "k5", "k1"]
    folder = cfg.work / "data" / "ks"
    ids = {k: {r["ID"] for r in csv.DictReader(open(folder / f"train_{k}.csv"))} for k in ("k20", "k5", "k1")}
    assert ids["k1"] < ids["k5"] < ids["k20"]  # strictly nested
    per = {k: sorted(r["label"] for r in csv.DictReader(open(folder / f"train_{k}.csv"))) for k in ("k5", "k1")}
    assert per["k1"] == ["class0", "class1", "class2"] and per["k5"].count("class1") == 5
    units = {u[2] for u in downstream_units(cfg)}
    assert units == {"all", "k20", "k5", "k1"}
    # the subset does not depend on row order
    rows = list(csv.DictReader(open(data / "speech_commands" / "train.csv")))
    assert {r["ID"] for r in per_class_subset(rows[::-1], 5, 0, "label")} == ids["k5"]


def test_random_control_differs_from_base_and_loads(tmp_path):
    from rewire_lib.models.encoder import SpeechEncoder
    from rewire_lib.models.tiny import make_tiny_encoder

    base = make_tiny_encoder(tmp_path / "base", seed=0)
    rnd = make_random_encoder(str(base), tmp_path / "random", seed=1)
    a, b = SpeechEncoder.from_pretrained(str(base)), SpeechEncoder.from_pretrained(str(rnd))
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    matrices = [k for k in sa if sa[k].dim() >= 2]  # weights (norms and biases start at 1 / 0 in both)
    assert matrices and all(not torch.equal(sa[k], sb[k]) for k in matrices)
    assert (rnd / "preprocessor_config.json").is_file()
    with torch.no_grad():
        out = b(torch.randn(1, 16000), torch.ones(1))
    assert torch.isfinite(out.hidden_states).all()
    again = make_random_encoder(str(base), tmp_path / "random", seed=1)  # kept, not rebuilt
    assert again == rnd
