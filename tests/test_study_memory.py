"""A study worker runs many recipe runs in one process: a finished run must not stay in memory.

SpeechBrain's Brain and Checkpointer refer to each other, so without an explicit collection every run's
Brain, modules and in-memory feature cache lived on until Python's rare oldest-generation collection
(the study's 8.6 GiB peak: each worker grew by a run's features per run)."""
import gc
from types import SimpleNamespace

import speechbrain as sb

from downstream_helpers import make_tiny_corpus
from rewire_lib.downstream.feature_cache import FeatureCache
from rewire_lib.paths import REPO_ROOT
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
