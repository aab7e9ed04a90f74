"""rewire_study.units.shown_path: how the study's report writes paths (never a machine's absolute path)."""
from pathlib import Path

from rewire_lib.files.paths import REPO_ROOT
from rewire_study.units import portable, shown_path


def test_paths_inside_the_report_folder_are_relative_to_it(tmp_path):
    out = tmp_path / "results"
    assert shown_path(out / "study" / "rewire" / "twin", out) == "study/rewire/twin"
    assert shown_path(tmp_path / "data" / "ks", out) == "../data/ks"


def test_repository_files_seen_from_a_scratch_report_are_written_from_the_repo_root(tmp_path):
    shown = shown_path(REPO_ROOT / "pretrained" / "tiny-hubert", tmp_path / "results")
    assert shown == "<repo>/pretrained/tiny-hubert"
    assert str(REPO_ROOT) not in shown and ".." not in shown


def test_repository_files_seen_from_a_report_inside_the_repo_stay_relative():
    assert shown_path(REPO_ROOT / "pretrained" / "tiny-hubert", REPO_ROOT / "results") == "../pretrained/tiny-hubert"


def test_hub_ids_and_relative_paths_are_kept_and_settings_are_made_portable(tmp_path):
    assert shown_path("facebook/wav2vec2-base", tmp_path) == "facebook/wav2vec2-base"
    settings = {"encoders": [f"base={REPO_ROOT / 'pretrained' / 'tiny-hubert'}", "w=facebook/wav2vec2-base"],
                "cache": Path(tmp_path / "cache")}
    shown = portable(settings, tmp_path / "results")
    assert shown == {"encoders": ["base=<repo>/pretrained/tiny-hubert", "w=facebook/wav2vec2-base"],
                     "cache": "../cache"}


def test_report_commands_name_a_scratch_study_folder_as_OUT(tmp_path):
    from rewire_study.config import parse_args
    from rewire_study.stages import continue_by_hand

    cfg = parse_args(["--out", str(tmp_path / "results"), "--tasks", "ks", "--views", "twin,neutral"])
    report = continue_by_hand(cfg, in_report=True)
    assert "--rewire_results OUT/study/rewire" in report and "--encoder OUT/study/rewire/neutral/encoder" in report
    console = continue_by_hand(cfg)  # on the console: the real (relative) path, which works on this machine
    assert "OUT/" not in console and "study/rewire" in console
    inside = parse_args(["--out", str(REPO_ROOT / "results"), "--tasks", "ks", "--views", "twin"])
    assert "--rewire_results results/study/rewire" in continue_by_hand(inside, in_report=True)
    # a task whose study data has its own hparams file (PR on connected digits): that file, with --encoder
    pr = continue_by_hand(parse_args(["--out", str(tmp_path / "r"), "--tasks", "pr", "--views", "twin"]), in_report=True)
    assert "python recipes/pr/train.py recipes/pr/hparams/fsdd_connected.yaml --encoder OUT/study/rewire/twin/encoder" in pr


def test_stage_log_keeps_the_peak_of_the_work_when_a_resumed_run_skips_it(tmp_path):
    from rewire_study.units import StageLog

    log = StageLog(tmp_path / "stages.json", {})
    log.record("downstream", "done", 1500.0, {}, {}, tree_peak_mib=8000.0)
    again = StageLog(tmp_path / "stages.json", {})  # the same command later: everything found done
    entry = again.record("downstream", "done", 0.5, {}, {}, tree_peak_mib=700.0)
    assert entry["peak_tree_pss_mib"] == 8000.0 and entry["wall_time_s"] == 0.5
    assert entry["work_time_s"] == 1500.5 and entry["invocations"] == 2
    assert again.data["peak_tree_pss_mib"] == 8000.0


def test_memory_sampler_names_what_is_resident_at_the_peak():
    import subprocess
    import sys
    import time

    from rewire_study.units import TreeMemorySampler

    child = subprocess.Popen([sys.executable, "-c", "import time; x = b\"\\x01\" * (300 * 2**20); time.sleep(30)"])
    try:
        with TreeMemorySampler(interval=0.1) as sampler:
            deadline = time.time() + 20
            # wait for the child's own entry (the test process alone is far over 150 MiB)
            while time.time() < deadline and not any(r["process"] == f"worker {child.pid}" and r["mib"] >= 150
                                                     for r in sampler.peak_processes):
                time.sleep(0.2)
    finally:
        child.kill()
        child.wait()
    assert sampler.peak_mib is not None and sampler.peak_mib >= 150
    workers = [r for r in sampler.peak_processes if r["process"] == f"worker {child.pid}"]
    assert workers and workers[0]["mib"] >= 150  # the 300 MiB child (idle pages may be reclaimed), by pid
    assert any(r["process"] == "main" for r in sampler.peak_processes)


def test_stage_log_keeps_the_breakdown_of_the_kept_peak(tmp_path):
    from rewire_study.units import StageLog

    log = StageLog(tmp_path / "stages.json", {})
    log.record("downstream", "done", 10.0, {}, {"peak_processes": [{"process": "worker 7", "mib": 7000.0}]},
               tree_peak_mib=8000.0)
    entry = StageLog(tmp_path / "stages.json", {}).record(
        "downstream", "done", 0.1, {}, {"peak_processes": [{"process": "main", "mib": 600.0}]}, tree_peak_mib=700.0)
    assert entry["peak_processes"] == [{"process": "worker 7", "mib": 7000.0}]


def test_stage_log_takes_the_breakdown_of_a_new_higher_peak(tmp_path):
    from rewire_study.units import StageLog

    log = StageLog(tmp_path / "stages.json", {})
    log.record("downstream", "done", 10.0, {}, {"peak_processes": [{"process": "main", "mib": 600.0}]},
               tree_peak_mib=700.0)
    entry = StageLog(tmp_path / "stages.json", {}).record(  # a sampled peak is not rounded
        "downstream", "done", 10.0, {}, {"peak_processes": [{"process": "worker 7", "mib": 7000.0}]},
        tree_peak_mib=8000.04321)
    assert entry["peak_tree_pss_mib"] == 8000.0
    assert entry["peak_processes"] == [{"process": "worker 7", "mib": 7000.0}]


def test_workers_forked_from_the_forkserver_are_named_workers_not_forkserver():
    from rewire_study.units import process_role

    forkserver_cmd = "python -B -c from multiprocessing.forkserver import main; main(11, 12, ['rewire_study.stages'])"
    assert process_role(10, 1, "python -m rewire_study", main_pid=10) == "main"
    assert process_role(11, 10, forkserver_cmd, main_pid=10) == "forkserver"
    # a worker inherits the forkserver's command line; its parent is the forkserver, not main
    assert process_role(12, 11, forkserver_cmd, main_pid=10) == "worker 12"
    assert process_role(13, 10, "python -B -c from multiprocessing.resource_tracker import main;main(5)",
                        main_pid=10) == "resource tracker"
    assert process_role(14, 10, "python recipes/asr/train.py", main_pid=10) == "worker 14"
