"""Stopping on patience (downstream `patience`, the study's --patience): a run whose dev metric stops improving
stops before the cap, says why, and is tested on its best-dev checkpoint; the counter survives a kill; a stopped
run is not trained further when started again; without patience a run trains to the cap; the report flags the
cells whose runs hit the cap and says each task's budget."""
import csv
import json

import pytest

from downstream_helpers import make_tone_corpus, run_task, write_csv
from rewire_lib.analysis.stats import best_checkpoint
from rewire_lib.downstream.brain import patience_of
from rewire_lib.downstream.feature_cache import FeatureCachePool
from rewire_lib.downstream.run import folds_stop_reason
from rewire_lib.files.logs import read_csv
from rewire_lib.files.paths import REPO_ROOT
from rewire_lib.training.recipe import HparamsError
from tests.test_finetune import fast_env_log  # noqa: F401 (autouse: no pip freeze / git per run)

EVERY, PATIENCE, CAP = 2, 2, 200
SHIFT = {"a": "b", "b": "c", "c": "a"}


FEATURES = FeatureCachePool()  # the module's runs share their feature caches (one encoder pass per utterance)


@pytest.fixture(scope="module", autouse=True)
def features_once():
    """The shared features are freed when the module's tests end."""
    yield
    FEATURES.clear()


@pytest.fixture(scope="module")
def plateau_set(tmp_path_factory):
    """Tones whose dev (and test) labels are shifted by one class against the training labels: the better the head
    learns the training set, the worse its dev metric and loss, so dev soon stops improving. Test = dev, so the
    test pass of the best-dev checkpoint must reproduce that checkpoint's dev numbers exactly."""
    root = tmp_path_factory.mktemp("plateau")
    cls = make_tone_corpus(root / "tones", {"train": 30, "dev": 6}) / "cls"
    data = root / "data"
    data.mkdir()
    (data / "train.csv").write_text((cls / "train.csv").read_text())
    with open(cls / "dev.csv") as f:
        dev = [dict(r, label=SHIFT[r["label"]]) for r in csv.DictReader(f)]
    write_csv(data / "dev.csv", dev)
    write_csv(data / "test.csv", dev)
    return data


def run_ks(encoder, data, out, *extra):
    argv = [str(REPO_ROOT / "recipes" / "ks" / "hparams" / "baseline.yaml"), "--noprogressbar", "--encoder",
            str(encoder), "--data_folder", str(data), "--output_folder", str(out), "--batch_size", "4",
            "--lr", "0.1", "--number_of_epochs", "1000", "--eval_every_steps", str(EVERY), *extra]
    return run_task("ks", argv, feature_caches=FEATURES)


@pytest.fixture(scope="module")
def stopped(tiny_encoder_dir, plateau_set, tmp_path_factory):
    """One run with patience 2 and a cap far away: (result, its folder)."""
    out = tmp_path_factory.mktemp("stopped") / "run"
    return run_ks(tiny_encoder_dir, plateau_set, out, "--patience", str(PATIENCE), "--max_steps", str(CAP)), out


def test_plateau_stops_on_patience_and_tests_the_best_dev_checkpoint(stopped, caplog):
    result, out = stopped
    rows = read_csv(out / "curve.csv")
    steps = [int(r["step"]) for r in rows]
    assert result["stop_reason"] == "patience" and result["patience"] == PATIENCE
    assert result["steps"] == result["steps_run"] == steps[-1] < CAP
    assert result["settings"]["patience"] == PATIENCE and result["settings"]["max_steps"] == CAP
    # the best by the library's rule (metric, ties to the lower loss), then exactly PATIENCE evaluations without one
    best = best_checkpoint([{"step": int(r["step"]), "m": float(r["dev_accuracy"]), "l": float(r["dev_loss"])}
                            for r in rows], "m", "l", higher_is_better=True)
    assert result["best_dev_step"] == best["step"]
    assert steps[-1] == best["step"] + PATIENCE * EVERY and steps.index(best["step"]) == len(steps) - 1 - PATIENCE
    # test = dev: the test pass reproduces the best checkpoint's dev numbers, not the last checkpoint's
    assert result["test_accuracy"] == pytest.approx(best["m"], abs=1e-4)
    assert result["test_loss"] == pytest.approx(best["l"], abs=1e-5)
    assert result["best_dev_loss"] == pytest.approx(best["l"], abs=1e-5)
    assert abs(result["last_dev"]["loss"] - best["l"]) > 1e-3
    log = (out / "log.txt").read_text()
    assert f"stopping at step {steps[-1]} on patience: dev accuracy did not improve for {PATIENCE} evaluations" in log


def test_a_stopped_run_started_again_trains_no_further(stopped, tiny_encoder_dir, plateau_set):
    """Even with the cap raised: the spent patience is in the checkpoint."""
    result, out = stopped
    curve = (out / "curve.csv").read_text()
    again = run_ks(tiny_encoder_dir, plateau_set, out, "--patience", str(PATIENCE), "--max_steps", str(2 * CAP))
    assert again["steps"] == result["steps"] and again["stop_reason"] == "patience"
    assert again["best_dev_step"] == result["best_dev_step"]
    assert again["test_accuracy"] == pytest.approx(result["test_accuracy"])
    assert (out / "curve.csv").read_text() == curve


def test_patience_counter_survives_a_kill(stopped, tiny_encoder_dir, plateau_set, tmp_path):
    """Killed one evaluation before the stop (here: a cap there), then resumed: it stops where the uninterrupted
    run stopped, which it can only do if the evaluations since the best were checkpointed."""
    result, _ = stopped
    out = tmp_path / "killed"
    first = run_ks(tiny_encoder_dir, plateau_set, out, "--patience", str(PATIENCE),
                   "--max_steps", str(result["steps"] - EVERY))
    assert first["stop_reason"] == "cap" and first["steps"] == result["steps"] - EVERY
    resumed = run_ks(tiny_encoder_dir, plateau_set, out, "--patience", str(PATIENCE), "--max_steps", str(CAP))
    assert resumed["stop_reason"] == "patience"
    assert (resumed["steps"], resumed["best_dev_step"]) == (result["steps"], result["best_dev_step"])


def test_without_patience_a_run_trains_to_the_cap(stopped, tiny_encoder_dir, plateau_set, tmp_path):
    result, _ = stopped
    cap = result["steps"] + EVERY  # past where patience stopped the same run
    off = run_ks(tiny_encoder_dir, plateau_set, tmp_path / "off", "--max_steps", str(cap))
    assert off["stop_reason"] == "cap" and off["steps"] == cap and off["patience"] is None
    assert int(read_csv(tmp_path / "off" / "curve.csv")[-1]["step"]) == cap


def test_patience_setting_and_fold_summary():
    assert patience_of({"patience": None}) == patience_of({"patience": 0}) == patience_of({}) == 0
    assert patience_of({"patience": 7}) == 7
    for bad in (-1, 2.5, "x", True):
        with pytest.raises(HparamsError, match="patience must be"):
            patience_of({"patience": bad})
    assert folds_stop_reason(["patience", "cap", "patience"]) == "cap"
    assert folds_stop_reason(["patience", "epochs"]) == "epochs"
    assert folds_stop_reason(["patience"]) == "patience" and folds_stop_reason([None]) is None


def test_report_flags_cells_whose_runs_hit_the_cap(tmp_path):
    from rewire_study.report import CAP_MARK, write_report
    from tests.test_study_stats_report import known_study

    cfg = known_study(tmp_path)
    assert cfg.patience["ks"] == 10 and cfg.eval_every_of("ks") == 10
    capped = {("twin", 0), ("twin", 1)}  # ks twin: 2 of 3 runs hit the cap; every other run stopped on patience
    for task, enc, seed, folder in _run_folders(cfg):
        path = folder / "result.json"
        result = json.loads(path.read_text())
        result["stop_reason"] = "cap" if task == "ks" and (enc, seed) in capped else "patience"
        path.write_text(json.dumps(result))
    out = write_report(cfg, {})
    ks = out["cells"][("ks", "all")]["encoders"]
    assert ks["twin"]["at_cap"] == 2 and ks["base"]["at_cap"] == ks["neutral"]["at_cap"] == 0
    md = (cfg.out / "summary.md").read_text()
    assert f"| all | twin | 100 | 100.00 ± 0.00 (n=3) {CAP_MARK}2/3 |" in md
    assert f"| all | base | 100 | " in md and f"{CAP_MARK}0" not in md
    assert md.count("hit the step cap") == 1  # the footnote under KS only; PR has no capped run
    assert (f"{CAP_MARK}k/n: k of the cell's n runs hit the step cap ({cfg.max_steps['ks']}) before their patience "
            "ran out: still improving") in md
    assert (f"- **ks**: until 10 dev evaluations (every 10 steps, so 100 steps) bring no new best, at most "
            f"{cfg.max_steps['ks']} steps. Runs ended: 2 on cap, 7 on patience; steps run 40-40") in md
    assert f"- **pr**: until {cfg.patience['pr']} dev evaluations (every 10 steps" in md
    rows = [r for r in csv.DictReader(open(cfg.out / "summary.csv")) if r["quantity"] == "runs_at_cap"]
    assert {(r["task"], r["encoder"]): r["value"] for r in rows if r["task"] == "ks"} == {
        ("ks", "base"): "0", ("ks", "twin"): "2", ("ks", "neutral"): "0"}


def _run_folders(cfg):
    from rewire_study.stages import downstream_units

    for task, enc, _, seed, unit in downstream_units(cfg):
        yield task, enc, seed, unit.folder


def test_study_patience_option(tmp_path):
    """--patience N|task=N reaches the recipe as --patience (0: off, no flag); --max-steps stays the cap."""
    from rewire_study import stages as st
    from rewire_study.config import parse_args
    from tests.test_study_options import base_argv, task_folder

    task_folder(tmp_path / "data" / "speech_commands")
    assert all(parse_args(base_argv(tmp_path)).patience[t] for t in ("pr", "asr", "ks", "sid"))
    cfg = parse_args(base_argv(tmp_path, "--patience", "ks=3,sid=0", "--max-steps", "ks=900"))
    assert cfg.patience["ks"] == 3 and cfg.patience["sid"] is None and cfg.max_steps["ks"] == 900
    st.make_study_manifests(cfg)
    argv = st.downstream_argv(cfg, next(u for *_, u in st.downstream_units(cfg)))
    assert argv[argv.index("--patience") + 1] == "3" and argv[argv.index("--max_steps") + 1] == "900"
    off = parse_args(base_argv(tmp_path, "--patience", "0"))
    assert "--patience" not in st.downstream_argv(off, next(u for *_, u in st.downstream_units(off)))
    with pytest.raises(SystemExit):
        parse_args(base_argv(tmp_path, "--patience", "-1"))
