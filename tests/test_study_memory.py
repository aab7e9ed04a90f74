"""A study worker runs many recipe runs in one process: a finished run must not stay in memory.

SpeechBrain's Brain and Checkpointer refer to each other, so without an explicit collection every run's
Brain, modules and in-memory feature cache lived on until Python's rare oldest-generation collection
(the study's 8.6 GiB peak: each worker grew by a run's features per run)."""
import gc
from types import SimpleNamespace

import speechbrain as sb

from downstream_helpers import make_tiny_corpus
from rewire_lib.downstream.feature_cache import FeatureCache, FeatureCachePool
from rewire_lib.files.paths import REPO_ROOT
from rewire_study import launch
from tests.test_finetune import fast_env_log  # noqa: F401 (autouse: no pip freeze / git per run)


def _alive(kind) -> int:
    return sum(issubclass(type(o), kind) for o in gc.get_objects())  # type(): no __class__ lookups (deprecated proxies warn)


def test_finished_recipe_runs_leave_no_brain_or_feature_cache_alive(tiny_encoder_dir, tmp_path):
    corpus = make_tiny_corpus(tmp_path / "corpus")
    cfg = SimpleNamespace(launcher="local", slurm={})
    gc.collect()
    brains_before, caches_before = _alive(sb.Brain), _alive(FeatureCache)
    gc.disable()  # as in a long worker between the collector's rare full passes
    try:
        for seed in (0, 1):
            out = tmp_path / f"run{seed}"
            argv = [str(REPO_ROOT / "recipes" / "ks" / "hparams" / "baseline.yaml"), "--encoder", str(tiny_encoder_dir),
                    "--data_folder", str(corpus), "--output_folder", str(out), "--seed", str(seed),
                    "--batch_size", "4", "--number_of_epochs", "1", "--max_steps", "2", "--eval_every_steps", "2",
                    "--feature_cache", "disk", "--feature_cache_dir", str(tmp_path / "features"), "--noprogressbar"]
            result = launch.run_recipe(cfg, "ks", argv, out / "console.txt")
            assert result["steps"] == 2
            assert _alive(sb.Brain) == brains_before, f"run {seed}'s Brain is still in memory after run_recipe"
            assert _alive(FeatureCache) == caches_before, f"run {seed}'s feature cache is still in memory"
    finally:
        gc.enable()


def _ks_argv(encoder, corpus, out, seed, features):
    """One whole epoch: every training utterance is read, so a second run can find them all in memory."""
    return [str(REPO_ROOT / "recipes" / "ks" / "hparams" / "baseline.yaml"), "--encoder", str(encoder),
            "--data_folder", str(corpus), "--output_folder", str(out), "--seed", str(seed),
            "--batch_size", "4", "--number_of_epochs", "1", "--max_steps", "1000", "--eval_every_steps", "4",
            "--feature_cache", "disk", "--feature_cache_dir", str(features), "--noprogressbar"]


def test_a_study_groups_runs_share_their_features_and_free_them_at_the_end(tiny_encoder_dir, tmp_path, monkeypatch):
    """The study's runs of one task and encoder (one group) read the features once: the second run touches
    no cache file; a new group or the end of the stage drops them. Without sharing, the same second run
    reads every utterance from the disk cache again (the control that shows the check can fail)."""
    corpus = make_tiny_corpus(tmp_path / "corpus")
    cfg = SimpleNamespace(launcher="local", slurm={})
    reads = []
    original = FeatureCache._file
    monkeypatch.setattr(FeatureCache, "_file", lambda self, key: reads.append(key) or original(self, key))
    pool = FeatureCachePool()
    results = {}
    _run_separate_then_shared(tiny_encoder_dir, corpus, cfg, tmp_path, reads, results, pool)
    gc.collect()
    assert _alive(FeatureCache) == 1 and len(pool) == 1  # the group's one shared cache, kept for its next run
    pool.keep_for(("ks", "another encoder"))
    gc.collect()
    assert _alive(FeatureCache) == 0
    for seed in (0, 1):  # sharing changes where features come from, not what a run computes
        assert results["shared", seed]["test_accuracy"] == results["separate", seed]["test_accuracy"]
        assert results["shared", seed]["best_dev_accuracy"] == results["separate", seed]["best_dev_accuracy"]


def _run_separate_then_shared(tiny_encoder_dir, corpus, cfg, tmp_path, reads, results, pool):
    for mode in ("separate", "shared"):
        for seed in (0, 1):
            shared = {}
            if mode == "shared":
                pool.keep_for(("ks", str(tiny_encoder_dir)))  # what stages.DownstreamRuns does for each run
                shared = {"feature_caches": pool}
            out = tmp_path / mode / f"run{seed}"
            reads.clear()
            results[mode, seed] = launch.run_recipe(cfg, "ks", _ks_argv(tiny_encoder_dir, corpus, out, seed,
                                                                        tmp_path / "features"), out / "console.txt",
                                                    **shared)
            if seed == 1:
                if mode == "shared":
                    assert reads == [], f"the group's second run read {len(reads)} cache files instead of memory"
                else:
                    assert reads, "a separate run is expected to read the disk cache"


def test_the_downstream_stage_shares_one_pool_per_group_and_empties_it_at_the_end(monkeypatch):
    """stages.DownstreamRuns hands every run of a group the same pool, starts a new group with an empty one,
    and `close` (the stage's end) empties it; a pool sent to a worker process arrives empty."""
    import pickle

    from rewire_study import stages

    seen = []
    monkeypatch.setattr(stages, "_downstream_one",
                        lambda cfg, item, caches: seen.append((item[0], len(caches.get(item[0], list)))) or {})
    runs = stages.DownstreamRuns()
    unit = SimpleNamespace(spec={"encoder": "base"})
    for task in ("ks", "ks", "sid"):
        runs(None, (task, "base", "all", 0, unit))
        runs.feature_caches.get(task, list).append(1)  # what a run's Brain stores in the pool
    assert seen == [("ks", 0), ("ks", 1), ("sid", 0)]  # a group's runs share; a new group starts empty
    assert len(pickle.loads(pickle.dumps(runs)).feature_caches) == 0
    runs.close()
    assert len(runs.feature_caches) == 0


def _kernel_cache_setting(cfg, item) -> dict:
    import os

    return {"value": os.environ.get("ONEDNN_PRIMITIVE_CACHE_CAPACITY")}


def test_study_workers_and_recipes_bound_onednn_kernel_cache_unless_the_user_set_it(monkeypatch, tmp_path):
    """oneDNN kept a kernel per input shape (1024 by default): two rewirings side by side were the default study's
    8.2 GB peak (3.6 GB a rewiring; 2.4 GB with the bound, in the same time)."""
    import os

    from rewire_lib.training.cpu_memory import CACHE_VARIABLE, DEFAULT_CAPACITY, bound_kernel_cache
    from rewire_lib.training.recipe import load_hparams
    from rewire_study.pool import run_groups

    monkeypatch.delenv(CACHE_VARIABLE, raising=False)
    cfg = SimpleNamespace()
    # a worker process sets it before its first unit
    msgs = run_groups(_kernel_cache_setting, cfg, [[0], [1]], jobs=2, threads=1, desc="probe", isolate=True)
    assert [m["value"] for m in msgs] == [str(DEFAULT_CAPACITY)] * 2
    # a recipe started by hand sets it when its hparams load
    yaml = tmp_path / "h.yaml"
    yaml.write_text("num_threads: 1\nx: 1\n")
    load_hparams(str(yaml), "", {})
    assert os.environ[CACHE_VARIABLE] == str(DEFAULT_CAPACITY)
    # the user's own value wins
    monkeypatch.setenv(CACHE_VARIABLE, "64")
    assert bound_kernel_cache() == "64" and os.environ[CACHE_VARIABLE] == "64"


def test_a_last_partial_round_of_rewirings_shares_the_idle_workers_threads(tmp_path, monkeypatch, tiny_encoder_dir):
    import json

    import torch

    from rewire_study import launch as launch_mod
    from rewire_study import stages
    from rewire_study.config import parse_args

    cfg = parse_args(["--out", str(tmp_path), "--encoders", f"base={tiny_encoder_dir}"])
    cfg.jobs, cfg.threads = 2, 1
    assert stages.rewire_threads(cfg, 3) == [None, None, 2]  # three views on two workers
    assert stages.rewire_threads(cfg, 2) == [None, None] and stages.rewire_threads(cfg, 1) == [None]
    assert stages.rewire_threads(cfg, 5) == [None] * 4 + [2]
    cfg.jobs = 4
    assert stages.rewire_threads(cfg, 6) == [None] * 4 + [2, 2]
    cfg.launcher = "submitit-local"  # a job's CPUs are its own (--slurm-cpus-per-job)
    assert stages.rewire_threads(cfg, 3) == [None] * 3
    # the unit runs the recipe with the threads it was given, and records them
    seen = {}

    def fake_recipe(cfg_, recipe, argv, console, **kw):
        seen["threads"] = argv[argv.index("--num_threads") + 1]
        (stages.rewire_unit(cfg, "twin").folder / "encoder").mkdir(parents=True, exist_ok=True)

    monkeypatch.setattr(launch_mod, "run_recipe", fake_recipe)
    before = torch.get_num_threads()
    try:
        msg = stages._rewire_one(cfg, ("twin", 2))
    finally:
        torch.set_num_threads(before)
    assert seen["threads"] == "2" and msg["threads"] == 2 and "(2 threads)" in msg["text"]
    assert json.loads(stages.rewire_unit(cfg, "twin").marker.read_text())["threads"] == 2


FREEZE_PROBE = """
import gc, json
from rewire_study.launch import freeze_import_time_objects

class Run:  # a finished run: an object in a reference cycle, like a Brain and its Checkpointer
    pass

freeze_import_time_objects()
frozen = gc.get_freeze_count()
freeze_import_time_objects()  # once per process
run = Run()
run.me = run
del run
alive = lambda: sum(type(o) is Run for o in gc.get_objects())
before = alive()
gc.collect()
print(json.dumps({"frozen": frozen, "again": gc.get_freeze_count(), "cycle_before": before, "cycle_after": alive(),
                  "transformers_frozen": "transformers" in __import__("sys").modules}))
"""


def test_a_worker_freezes_its_import_time_objects_once_and_still_collects_what_runs_make():
    """A worker's per-run collection walked ~420,000 import-time objects (0.2 s a run); frozen once, they are out
    of its reach, and a cycle made afterwards (a finished run's Brain) is still collected."""
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", FREEZE_PROBE], capture_output=True, text=True, cwd=REPO_ROOT,
                         check=True).stdout
    probe = json.loads(out.strip().splitlines()[-1])
    assert probe["frozen"] > 100_000 and probe["again"] == probe["frozen"]
    assert probe["transformers_frozen"]  # the encoder module (transformers) is imported before the freeze
    assert (probe["cycle_before"], probe["cycle_after"]) == (1, 0)
