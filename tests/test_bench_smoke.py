"""Smoke tests of the benchmark scripts (bench/): tiny random encoder, a few generated utterances.

They check that each script runs end to end and that its printed tables and JSON carry the expected fields.
No timing is asserted: timing goals live in the benchmark scripts' output (bench/README.md), never in tests.
"""
import csv
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


@pytest.fixture()
def bench_env(tmp_path, monkeypatch):
    """Benchmark work files, TTS cache, results and a KS-like data folder, all under tmp_path."""
    from bench import common

    work = tmp_path / "work"
    monkeypatch.setenv("REWIRE_BENCH_WORK", str(work))  # for child processes
    monkeypatch.setattr(common, "WORK_DIR", work)
    data = tmp_path / "data"
    monkeypatch.setenv("REWIRE_DATA", str(data))
    return {"work": work, "out": tmp_path / "results", "tts": tmp_path / "tts", "data": data}


def _ks_data(env, n=12):
    """data/speech_commands/train.csv made of generated 1 s clips with two labels."""
    from bench import common

    rows = common.synthetic_audio(env["work"] / "ks_audio", n, seed=1, lengths="equal")
    folder = env["data"] / "speech_commands"
    folder.mkdir(parents=True)
    with open(folder / "train.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["ID", "duration", "wav", "label"])
        w.writeheader()
        for i, r in enumerate(rows):
            w.writerow({"ID": r["ID"], "duration": r["duration"], "wav": r["wav"], "label": ["yes", "no"][i % 2]})


def test_rewire_throughput_smoke(bench_env, capsys):
    from bench import rewire_throughput

    result = rewire_throughput.main([
        "--encoder", "smoke", "--data", "synth-mixed", "--views", "twin", "neutral", "--tts", "espeak",
        "--tts-cache-dir", str(bench_env["tts"]), "--pairs", "8", "--reps", "1", "--threads", "1",
        "--out", str(bench_env["out"])])
    printed = capsys.readouterr().out
    assert "Rewiring throughput, pairs/s" in printed and "ours/authors" in printed and "ours/bound" in printed
    assert "pairs per CPU-second" in printed
    saved = json.loads((bench_env["out"] / "rewire_throughput.json").read_text())
    assert [(r["dataset"], r["view"]) for r in saved["results"]] == [("synth-mixed", "twin"), ("synth-mixed", "neutral")]
    for r in saved["results"]:
        assert set(r["median_pairs_per_s"]) == {"authors", "ours", "bound"}
        assert all(v > 0 for v in r["median_pairs_per_s"].values())
        assert {"speedup_vs_authors", "share_of_bound", "mean_padding_share", "authors_tts_share"} <= set(r)
        assert set(r["median_pairs_per_cpu_s"]) == {"authors", "ours", "bound"}
        assert {"cpu_speedup_vs_authors", "cpu_share_of_bound"} <= set(r)
        for loop in ("authors", "ours", "bound"):
            (run,) = r["runs"][loop]
            assert run["pairs"] == 8 and run["seconds"] > 0 and run["cpu_seconds"] > 0
    assert saved["encoder"]["params_M"] > 0 and saved["settings"]["torch_threads"] == 1
    assert result["table"] == saved["table"]


def test_downstream_cache_smoke(bench_env, capsys):
    from bench import downstream_cache

    _ks_data(bench_env)
    downstream_cache.main(["--encoder", "smoke", "--tasks", "ks", "--train-size", "12", "--eval-size", "4",
                           "--epochs", "2", "--threads", "1", "--out", str(bench_env["out"])])
    printed = capsys.readouterr().out
    assert "Downstream epoch" in printed and "speed-up" in printed
    saved = json.loads((bench_env["out"] / "downstream_cache.json").read_text())
    (r,) = saved["results"]
    assert r["task"] == "ks" and r["train_utterances"] == 12
    assert set(r["later_epoch_s"]) == {"none", "memory"} and r["speedup"] > 0 and r["cpu_speedup"] > 0
    cached_run = r["runs"]["memory"][0]
    assert len(cached_run) == 2
    later = cached_run[1]["cache"]
    assert cached_run[0]["cache"]["misses"] == 12 and later["hits"] + later["pooled_hits"] >= 12  # filled, then read
    assert r["runs"]["none"][0][0]["cache"] is None


def test_growth_children_smoke(bench_env):
    """Each measurement, run in this process (the subprocess path is covered by the next test)."""
    from bench import growth

    _ks_data(bench_env)
    from bench import common

    encoder_dir, _ = common.resolve_encoder("smoke")
    base = ["--encoder-dir", encoder_dir, "--threads", "1", "--data-mixed", "synth-mixed", "--data-equal",
            "synth-equal", "--max-vectors", "50"]
    for what, n in (("rewire", 4), ("isotropy", 4), ("downstream", 8)):
        args = growth.build_parser().parse_args(["--child", f"child_{what}", "--n", str(n)] + base)
        out = getattr(growth, f"child_{what}")(args)
        assert out["seconds"] > 0 and out["items"] == n and out["rss_before_mb"] > 0, (what, out)
    assert out["cache_entries"] == 8


def test_run_all_quick_only_growth(bench_env, capsys):
    """The one-command runner, and growth.py's fresh process per measurement (2 sizes)."""
    from bench import run_all_benchmarks

    rc = run_all_benchmarks.main(["--only", "growth", "--encoder", "smoke", "--threads", "1",
                                  "--out", str(bench_env["out"]), "--growth-args",
                                  "--what isotropy --base 4 --factors 1 2 --data-equal synth-equal --max-vectors 50"])
    assert rc == 0
    summary = (bench_env["out"] / "summary.md").read_text()
    assert summary.startswith("# Benchmark results") and "Growth" in summary and "time ratio" in summary
    saved = json.loads((bench_env["out"] / "growth.json").read_text())
    (r,) = saved["results"]
    assert r["what"] == "isotropy" and [m["n"] for m in r["measurements"]] == [4, 8]
    for m in r["measurements"]:
        assert m["peak_rss_mb"] >= m["rss_before_mb"] > 0 and m["vectors_kept"] <= 50


def _task_folders(env, n=8):
    """A KS-like (label) and an ASR-like (wrd) prepared folder of generated clips, and a manifest for the study's
    isotropy/rewiring slots (the sweep runs neither, but the study's data stage writes their manifests)."""
    from bench import common

    rows = common.synthetic_audio(env["work"] / "sweep_audio", n, seed=2, lengths="equal")
    folders = {}
    for task, extra in (("ks", lambda i, r: {"label": ["yes", "no"][i % 2]}), ("asr", lambda i, r: {"wrd": r["wrd"]})):
        folder = folders[task] = env["data"] / f"sweep_{task}"
        folder.mkdir(parents=True)
        for split, part in (("train", rows), ("dev", rows[:3]), ("test", rows[3:6])):
            with open(folder / f"{split}.csv", "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=["ID", "duration", "wav", *extra(0, rows[0])])
                w.writeheader()
                w.writerows({"ID": r["ID"], "duration": r["duration"], "wav": r["wav"], **extra(i, r)}
                            for i, r in enumerate(part))
    return folders


def test_sweep_quick_smoke(bench_env, capsys):
    """bench/sweep.py --quick on a tiny encoder: every run attributed, the bound measured, the verdict line last."""
    from bench import sweep

    folders = _task_folders(bench_env)
    iso = folders["ks"] / "train.csv"
    study_args = (f"--data-folder ks={folders['ks']} --data-folder asr={folders['asr']} --iso-manifest {iso} "
                  f"--rewire-csv {iso} --max-steps 4 --eval-every 2")
    result = sweep.main(["--quick", "--encoder", "smoke", "--tasks", "ks", "asr", "--data-dir", str(bench_env["data"]),
                         "--study-args", study_args, "--bound-batches", "2", "--bound-utterances", "4",
                         "--out", str(bench_env["out"])])
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1].startswith("per-step cost / bound: max ") and "per-run fixed cost: max " in printed[-1]
    assert sum("[ks " in line for line in printed) == 2 and sum("[asr " in line for line in printed) == 2
    saved = json.loads((bench_env["out"] / "sweep.json").read_text())
    assert saved["verdict"] == printed[-1] == result["verdict"]
    assert [r["task"] for r in saved["results"]] == ["ks", "asr"]
    together = saved["together"]
    assert together["wall_s"] == pytest.approx(sum(r["group_wall_s"] for r in saved["results"]))
    assert together["over_bound"] == pytest.approx(together["wall_s"] / sum(r["stage_bound_s"] for r in saved["results"]))
    first, second = saved["results"]  # the stage's bound counts an audio file's encoder forward once: the first
    assert first["stage_bound_s"] == pytest.approx(first["group_bound_s"])  # group's files are all new to it
    assert second["stage_bound_s"] < second["group_bound_s"]  # the two tasks' folders share their audio files
    assert sum(line.startswith("All groups together (KS, ASR): wall ") for line in printed) == 1
    assert saved["evaluation"] in printed and saved["evaluation"].startswith(
        "fixed cost outside dev/test passes: max ") and "dev passes / their bare forward: max " in saved["evaluation"]
    for r in saved["results"]:
        assert r["n_runs"] == 2 and r["median_bound_step_ms"] > 0 and r["encoder_forward"]["seconds"] > 0
        assert set(r["fixed_parts_median_s"]) == set(sweep.FIXED)
        for run in r["runs"]:
            assert run["steps"] == 4 and run["training_s"] > 0 and run["wall_s"] >= run["training_s"] + run["features_s"]
            assert abs(sum(run["categories"].values()) - run["wall_s"]) < 0.05 * run["wall_s"] + 0.05
            # dev passes at steps 2 and 4 (every 2, 4 steps), their bound timed over the held dev batches
            assert run["bound_dev"]["passes"] == 2 and run["bound_dev"]["batches"] >= 1 and run["bound_dev"]["seconds"] > 0
            assert run["outside_eval_s"] == pytest.approx(run["fixed_s"] - run["dev_s"] - run["categories"]["test pass"])
        assert r["dev_over_bound"] == pytest.approx(r["median_dev_s"] / r["median_dev_bound_s"])
        assert r["group_features_s"] > 0  # the first run fills the group's cache
    from rewire_lib.downstream.brain import DownstreamBrain

    assert not hasattr(DownstreamBrain.fit_batch, "__bench_original__")  # the timers are gone afterwards
    assert _a_denormal_survives()  # the bounds' flushing did not leak into what runs after the bench


def _a_denormal_survives() -> bool:
    import torch

    return float(torch.tensor([1e-39]) * torch.tensor([1.0])) > 0.0


def test_the_bounds_loops_flush_denormals_and_only_there():
    """The bare loop overfits 16 batches until a CTC head's unused tokens go denormal (x86's slow path: the same ASR
    bound read 228 ms a step instead of 35): the bounds run with denormals flushed, the recipes' runs do not."""
    from bench import sweep

    assert _a_denormal_survives()
    with sweep.denormals_flushed():
        assert not _a_denormal_survives()
    assert _a_denormal_survives()
    with pytest.raises(RuntimeError), sweep.denormals_flushed():
        raise RuntimeError("a failing bound")
    assert _a_denormal_survives()


def test_compare_runs_pairs_result_files_and_names_the_first_difference(tmp_path, capsys):
    from bench.compare_runs import main as compare_runs

    result = {"task": "ks", "test_accuracy": 81.25, "best_dev_step": 45, "stop_reason": "patience",
              "layer_weights": [0.5, 0.5], "wall_time_s": 3.0}
    for side, wall in (("before", 3.0), ("after", 1.0)):  # timings may differ
        for seed in (0, 1):
            folder = tmp_path / side / "ks" / "base" / "all" / f"seed{seed}"
            folder.mkdir(parents=True)
            (folder / "result.json").write_text(json.dumps(dict(result, wall_time_s=wall)))
    assert compare_runs([str(tmp_path / "before"), str(tmp_path / "after")]) == 0
    assert "| ks | 2 | 0 | 0 |" in capsys.readouterr().out

    changed = tmp_path / "after" / "ks" / "base" / "all" / "seed1" / "result.json"
    changed.write_text(json.dumps(dict(result, layer_weights=[0.4, 0.6])))
    assert compare_runs([str(tmp_path / "before"), str(tmp_path / "after")]) == 1
    out = capsys.readouterr().out
    assert "seed1: layer_weights.0 0.5 -> 0.4" in out and "DIFFERENT" in out
    changed.unlink()
    assert compare_runs([str(tmp_path / "before"), str(tmp_path / "after")]) == 1
