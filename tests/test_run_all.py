"""run_all.sh / rewire_study end to end in a tiny configuration, resumability, and the CLI."""
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rewire_lib.files.paths import REPO_ROOT
from rewire_study.config import PRESETS, TASKS, parse_args
from rewire_study.driver import main
from rewire_study.stages import downstream_units, effective_fraction
from rewire_study.units import Unit

STAGE_NAMES = ["data", "tts", "rewire", "isotropy", "downstream", "report"]
# encoder rows of the tiny study: base, random, twin, and base+whiten once the recipes have feature_transform
ROWS = {"base", "random", "twin", "base+whiten"}
RUNS = len(ROWS) * 2 * 2  # rows x settings (all, 1 per class) x seeds


def tiny_argv(tmp: Path, encoder: Path, extra=()):
    return ["--out", str(tmp / "results"), "--encoders", f"base={encoder}", "--data-dir", str(tmp / "data"),
            "--synth-scale", "0.01", "--cache-dir", str(tmp / "cache"), "--tasks", "ks", "--views", "twin",
            "--per-class", "1", "--controls", "random,whiten", "--seeds", "0,1", "--max-steps", "4", "--eval-every", "2",
            "--train-cap", "80", "--eval-cap", "12", "--min-train", "8", "--rewire-utts", "8", "--rewire-batch", "4",
            "--iso-utts", "30", "--iso-max-vectors", "300", "--jobs", "2", *extra]


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory, tiny_encoder_dir):
    tmp = tmp_path_factory.mktemp("study")
    rc = main(tiny_argv(tmp, tiny_encoder_dir))
    return tmp, rc, tiny_encoder_dir


def test_tiny_study_writes_every_output(tiny_study):
    tmp, rc, _ = tiny_study
    assert rc == 0
    res = tmp / "results"
    cfg = parse_args(tiny_argv(tmp, Path("unused")))
    for name in ["summary.md", "summary.csv", "stages.json", "figures/convergence_ks_all.png",
                 "figures/convergence_ks_k1.png", "figures/isotropy_per_layer.png", "figures/rewiring_loss.png",
                 "study/rewire/twin/encoder/config.json", "study/controls/random/config.json",
                 "study/isotropy/isotropy.json", "study/isotropy/isotropy.csv", "study/isotropy/twin/embedding.json"]:
        assert (res / name).is_file() and (res / name).stat().st_size > 0, name

    stages = json.loads((res / "stages.json").read_text())
    assert list(stages["stages"]) == STAGE_NAMES
    for name, st in stages["stages"].items():
        assert st["status"] == "done", (name, st["status"])
        assert st["wall_time_s"] >= 0 and isinstance(st["settings"], dict)
    assert stages["stages"]["downstream"]["units_run"] == RUNS and stages["stages"]["downstream"]["units_failed"] == 0
    assert stages["settings"]["tasks"] == ["ks"] and stages["peak_rss_mib"] > 0

    # every downstream run has its result, and summary.csv holds exactly its test metric
    rows = list(csv.DictReader(open(res / "summary.csv")))
    tests = {(r["task"], r["encoder"], r["setting"], r["seed"]): float(r["value"])
             for r in rows if r["section"] == "test" and r["seed"].isdigit()}
    units = downstream_units(cfg)
    assert len(units) == RUNS and len(tests) == RUNS
    assert {u[1] for u in units} == ROWS and {u[2] for u in units} == {"all", "k1"}
    for task, enc, setting, seed, unit in units:
        result = json.loads((unit.folder / "result.json").read_text())
        assert result["steps"] == 4 and result["seed"] == seed
        assert tests[(task, enc, setting, str(seed))] == pytest.approx(result["test_accuracy"])
    # the baseline reaches its own best in every seed: nothing censored
    base_conv = {r["quantity"]: r["value"] for r in rows if r["section"] == "convergence" and r["encoder"] == "base"
                 and r["setting"] == "all" and r["seed"] == "all"}
    assert base_conv["n_reached"] == "2" and base_conv["n_censored"] == "0"
    twin_conv = [r for r in rows if r["section"] == "convergence" and r["encoder"] == "twin"
                 and r["quantity"] == "steps_to_base_best" and r["seed"].isdigit()]
    assert len(twin_conv) == 4 and all(r["value"] == "not reached" or float(r["value"]) in (2, 4) for r in twin_conv)
    iso = {(r["encoder"], r["level"]) for r in rows if r["section"] == "isotropy"}
    assert iso == {(e, lvl) for e in ("base", "random", "twin") for lvl in ("frame", "utterance")}
    emb = {r["encoder"]: float(r["value"]) for r in rows if r["section"] == "embedding" and r["quantity"] == "isoscore"}
    assert set(emb) == {"base", "base+whiten", "random", "twin"}
    assert emb["base+whiten"] > emb["base"]  # whitening (fit on training clips) makes held-out embeddings isotropic
    loss = {r["quantity"]: float(r["value"]) for r in rows if r["section"] == "rewiring_loss"}
    assert loss["steps"] == 2

    md = (res / "summary.md").read_text()
    assert "### KS — accuracy (%), higher is better" in md
    for enc in ROWS:
        for setting in ("all", "1 per class"):
            assert f"| {setting} | {enc} |" in md
    assert "- **twin** vs `base` over" in md
    assert "### Isotropy per layer" in md and "| base | frame |" in md and "| twin | utterance |" in md
    for name in STAGE_NAMES:
        assert f"| {name} | done |" in md


def test_second_run_skips_everything(tiny_study):
    tmp, rc, encoder = tiny_study
    res = tmp / "results"
    mtimes = {p: p.stat().st_mtime_ns for p in (res / "study" / "runs").rglob("result.json")}
    assert main(tiny_argv(tmp, encoder)) == 0
    stages = json.loads((res / "stages.json").read_text())["stages"]
    assert stages["rewire"]["units_run"] == 0 and stages["rewire"]["units_skipped"] == 1
    assert stages["isotropy"]["units_run"] == 0 and stages["isotropy"]["units_skipped"] == 3
    assert stages["downstream"]["units_run"] == 0 and stages["downstream"]["units_skipped"] == RUNS
    assert stages["downstream"]["invocations"] == 2
    assert stages["downstream"]["work_time_s"] > stages["downstream"]["wall_time_s"]
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes  # no run was redone


def test_changed_settings_redo_only_what_they_touch(tiny_study):
    tmp, _, encoder = tiny_study
    # one more seed: only its runs are new (the rewired encoder and the other runs are kept)
    assert main(tiny_argv(tmp, encoder, ["--seeds", "0,1,2", "--stages", "downstream,report"])) == 0
    st = json.loads((tmp / "results" / "stages.json").read_text())["stages"]["downstream"]
    assert st["units_run"] == RUNS // 2 and st["units_skipped"] == RUNS
    md = (tmp / "results" / "summary.md").read_text()
    assert "(n=3)" in md


def _copy_study(tiny_study, dst: Path) -> Path:
    """The tiny study's report folder copied elsewhere (`cp -a`), as a user moves a finished study."""
    shutil.copytree(tiny_study[0] / "results", dst, symlinks=True)
    return dst


def _descendants(pid: int) -> set:
    """Live processes below `pid` (from /proc; zombies are dead)."""
    parents = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                fields = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z":
                parents[int(d)] = int(fields[1])
    found, todo = set(), [pid]
    while todo:
        parent = todo.pop()
        kids = [c for c, p in parents.items() if p == parent and c not in found]
        found.update(kids)
        todo += kids
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_copied_study_is_resumed_and_sigterm_stops_its_workers(tiny_study, tmp_path, capsys):
    """A study folder copied elsewhere keeps its rewired encoder and finished runs; SIGTERM to the
    main process during the downstream stage leaves no worker alive; the same command then finishes."""
    tmp, _, encoder = tiny_study
    out = _copy_study(tiny_study, tmp_path / "moved")
    enc = out / "study" / "rewire" / "twin" / "encoder"
    before = {p.name: p.stat().st_mtime_ns for p in enc.iterdir()}
    argv = tiny_argv(tmp, encoder, ["--out", str(out)])
    assert all(u.is_done() for *_, u in downstream_units(parse_args(argv)))  # every finished run, by content
    assert main(argv + ["--stages", "rewire"]) == 0
    assert "already rewired" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in enc.iterdir()} == before
    assert not [p for p in enc.parent.parent.iterdir() if ".old-" in p.name]

    # two new runs (seed 3 of base and random: no other test makes it) in two workers, stopped once they run
    more = argv + ["--stages", "downstream", "--seeds", "3", "--views", "none", "--controls", "random",
                   "--per-class", "none"]
    proc = subprocess.Popen([sys.executable, "-m", "rewire_study", *more], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    seen, lines = set(), []
    for line in proc.stdout:
        lines.append(line)
        if "to run in" in line:
            break
    deadline = time.time() + 60
    while time.time() < deadline and len(seen) < 3:  # forkserver, resource tracker, a worker
        seen |= _descendants(proc.pid)
        time.sleep(0.2)
    assert len(seen) >= 3, "".join(lines)
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=60)
    text = "".join(lines) + rest
    assert proc.returncode == 143 and "study stopped (SIGTERM)" in text, text[-3000:]
    assert "leaked semaphore" not in text, text[-3000:]
    deadline = time.time() + 10  # the forkserver and resource tracker end when they see the main process gone
    while time.time() < deadline and any(_alive(p) for p in seen):
        time.sleep(0.2)
    left = {p: Path(f"/proc/{p}/cmdline").read_bytes()[:200] for p in seen if _alive(p)}
    assert not left, (left, text[-3000:])
    assert main(more + ["--jobs", "1"]) == 0  # the rerun finishes what was stopped (in this process: faster)
    st = json.loads((out / "stages.json").read_text())["stages"]["downstream"]
    assert st["units_failed"] == 0 and st["units_run"] + st["units_skipped"] == 2
    assert len(list((out / "study" / "runs" / "ks").glob("*/all/seed3/result.json"))) == 2


def test_reused_study_folder_reports_only_this_invocations_data(tiny_study, tmp_path):
    """A study folder reused on other data: the report's header, stage table and isotropy say which
    invocation they come from, or leave the earlier one's numbers out."""
    tmp, _, encoder = tiny_study
    out = _copy_study(tiny_study, tmp_path / "reused")
    mine = tmp_path / "my_ks"
    mine.mkdir()
    for split in ("train", "dev", "test"):  # other data: a part of the same clips
        lines = (out / "study" / "data" / "ks" / f"{split}.csv").read_text().splitlines()
        (mine / f"{split}.csv").write_text("\n".join(lines[:-2]) + "\n")
    assert main(tiny_argv(tmp, encoder, ["--out", str(out), "--data-folder", f"ks={mine}",
                                         "--stages", "data,report"])) == 0
    stages = json.loads((out / "stages.json").read_text())
    md = (out / "summary.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("| ") and "` |" in line]
    assert [line.split(" | ")[0] for line in table] == ["| data", "| report"]
    assert "Not run by this invocation, left out: tts, rewire, isotropy, downstream" in md
    peak = max(stages["stages"][s]["peak_tree_pss_mib"] for s in ("data", "report"))
    assert f"peak memory of all study processes together {peak:.0f} MiB" in md
    assert "Measured by an earlier invocation" in md  # isotropy: same encoders and clips, named as earlier
    assert "my_ks" in md and "speech_commands" not in md
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert {r["task"] for r in rows if r["section"] == "stage"} == {"data", "report"}


# ---------------------------------------------------------------------- pieces
def test_unit_marker_and_spec_change(tmp_path):
    u = Unit(tmp_path / "u", {"a": 1}, outputs=["out.txt"])
    assert not u.is_done()
    u.start()
    (u.folder / "out.txt").write_text("x")
    assert not u.is_done()  # started, not finished (a killed run)
    u.finish()
    assert u.is_done()
    v = Unit(tmp_path / "u", {"a": 2}, outputs=["out.txt"])
    assert not v.is_done()
    v.start()  # another spec: the stale folder is removed before the unit runs again
    assert not (tmp_path / "u" / "out.txt").exists()


def test_effective_fraction_keeps_a_minimum():
    assert effective_fraction(1.0, 100, 16) == 1.0
    assert effective_fraction(0.01, 400, 16) == pytest.approx(0.04)
    assert effective_fraction(0.5, 400, 16) == 0.5
    assert effective_fraction(0.1, 10, 16) == 1.0


def test_cli_presets_and_errors(capsys):
    full = parse_args([])
    assert full.tasks == [t for t in TASKS if t not in ("ic", "er")] and full.per_class == [5] and full.seeds == [0, 1, 2, 3, 4]
    assert full.seeds_of("ks") == full.seeds_of("sid") == [0, 1, 2, 3, 4] and full.seeds_of("asr") == [0, 1, 2]
    assert full.views == ["twin", "neutral", "mixed"] and full.controls == ["centre", "whiten", "random"]
    assert full.eval_cap == {t: 0 for t in full.tasks}  # whole dev and test sets
    assert parse_args(["--seeds", "0,1"]).seeds_of("asr") == [0, 1, 2]  # speaker folds 1-3: one run each
    assert parse_args(["--seeds", "0,1,2,3,4", "--folds", "none"]).seeds_of("asr") == [0, 1, 2, 3, 4]  # given seeds
    quick = parse_args(["--quick"])
    assert quick.mode == "quick" and quick.views == PRESETS["quick"]["views"] and quick.seeds == [0, 1]
    cfg = parse_args(["--encoders", "base=facebook/wav2vec2-base,other=/x", "--max-steps", "ks=7", "--views", "none",
                      "--task-override", "asr:lr=0.002", "--fractions", "0.1,1"])
    assert cfg.encoders == {"base": "facebook/wav2vec2-base", "other": "/x"} and cfg.views == []
    assert cfg.max_steps["ks"] == 7 and cfg.max_steps["asr"] == PRESETS["default"]["max_steps"]["asr"]
    assert cfg.task_overrides["asr"][-1] == "lr=0.002" and cfg.fractions == [1.0, 0.1]
    for bad in (["--tasks", "xx"], ["--encoders", "other=/x"], ["--views", "twins"], ["--fractions", "2"],
                ["--encoders", "base=/x,twin=/y"], ["--controls", "pca"], ["--per-class", "0"],
                ["--encoders", "base=/x,random=/y"]):
        with pytest.raises(SystemExit):
            parse_args(bad)
    assert "error" in capsys.readouterr().err


def test_missing_encoder_is_a_clear_error(tmp_path, capsys):
    rc = main(["--out", str(tmp_path / "r"), "--encoders", f"base={tmp_path / 'nothing'}"])
    assert rc == 2
    assert "no model there" in capsys.readouterr().out


def test_run_all_sh_help():
    out = subprocess.run([str(REPO_ROOT / "run_all.sh"), "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "--quick" in out.stdout and "--encoders" in out.stdout
