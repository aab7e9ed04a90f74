"""Where the study's units run: the local worker pool (default) or one SLURM job per unit (submitit).

Both launchers run the same unit functions (`stages._rewire_one`, `_isotropy_one`, `_downstream_one`),
which mark their unit done in its folder; skipping finished units, resuming and the report therefore
do not depend on the launcher. Units of a group (one task and encoder) share a feature cache: on
SLURM the group's first unit runs alone and fills it, then the others are submitted together.

`--launcher submitit-local` is the SLURM code path with submitit's local executor (jobs are processes
on this machine): a way to check a study's job setup without a cluster, and what the tests run.
"""
from __future__ import annotations

import functools
import gc
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, List, Optional

from rewire_study.recipes import load_recipe_main, recipe_dir
from rewire_study.units import StageError, quiet, shown_path


def run_units(fn: Callable, cfg, groups: List[list], desc: str, isolate: bool = False,
              failures: str = "raise") -> List[dict]:
    """Run `fn(cfg, item)` for every item of every group with `cfg.launcher`; returns fn's messages.

    failures="report": a job that dies (time limit, node failure) becomes a message with
    failed=True (counted like a run that raised); "raise": a StageError naming the job's log."""
    if cfg.launcher == "local":
        from rewire_study.pool import run_groups

        return run_groups(fn, cfg, groups, cfg.jobs, cfg.threads, desc, isolate=isolate)
    return run_jobs(fn, cfg, groups, desc, failures)


# ---------------------------------------------------------------------- one recipe run
def gpus_per_unit(cfg) -> int:
    return int(cfg.slurm.get("gpus_per_job") or 0) if cfg.launcher != "local" else 0


def torchrun_command(recipe: str, argv: List[str], gpus: int) -> List[str]:
    """The command line of a recipe run on `gpus` GPUs of one node (one process per GPU, DDP)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
            str(recipe_dir(recipe) / "train.py"), *argv]


def remember_environment_description() -> None:
    """SpeechBrain writes env.log in every run folder from `pip freeze` and `git` run in shells (about 1 s a
    run, minutes over a study's hundreds of runs). Within one worker process the environment cannot change,
    so the description is computed once and every later run's env.log gets the same text."""
    import speechbrain.utils.logger as sb_logger

    describe = sb_logger.get_environment_description
    if not getattr(describe, "remembered", False):
        describe = functools.lru_cache(maxsize=1)(describe)
        describe.remembered = True
        sb_logger.get_environment_description = describe


def freeze_import_time_objects() -> None:
    """Move what this process has built so far (torch, transformers and SpeechBrain's modules, classes and
    functions: ~420,000 objects once the recipes and the encoder module are imported) out of the cyclic
    collector's reach (`gc.freeze`), once, before a worker's first downstream run (`stages.DownstreamRuns`).
    Why: `release_run_memory` collects after every run, and a full collection walked all of them each time,
    0.2 s of a KS run's 1 s outside training (measured: 0.21 s a collection before, under 1 ms after). Only live
    objects are frozen, after a collection; what a run makes afterwards stays collectable."""
    if gc.get_freeze_count():
        return
    import rewire_lib.models.encoder  # noqa: F401  (transformers: most of those objects)

    gc.collect()
    gc.freeze()


def release_run_memory() -> None:
    """Free what a finished in-process run still holds. A SpeechBrain Brain and its Checkpointer refer to
    each other (the Brain registers itself as a recoverable), so a run's Brain, its modules and its
    in-memory feature cache outlive main() until Python's cyclic collector runs, and its oldest generation
    runs rarely. Measured: one process running keyword-spotting runs grew by ~630 MiB a run, 1.5 -> 4.5 GiB
    over 15 runs; two workers growing like that over their groups of 10-30 runs were the study's 8.6 GiB peak."""
    gc.collect()


def run_recipe(cfg, recipe: str, argv: List[str], console: Path, ddp: bool = True,
               feature_caches=None) -> Optional[dict]:
    """Run `recipes/<recipe>/train.py` main(argv), its console output to `console`.

    feature_caches: a downstream recipe's FeatureCachePool, shared with the caller's other runs in this process.
    In a job with more than one GPU (and a recipe that supports DDP) it runs under torchrun instead (nothing
    shared), and the downstream result is read back from the run's result.json."""
    gpus = gpus_per_unit(cfg) if ddp else 0
    if gpus <= 1:
        remember_environment_description()
        main = load_recipe_main(recipe)
        try:
            with quiet(console):
                return main(argv) if feature_caches is None else main(argv, feature_caches=feature_caches)
        finally:
            release_run_memory()
    cmd = torchrun_command(recipe, argv, gpus)
    console.parent.mkdir(parents=True, exist_ok=True)
    with open(console, "a") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
    if rc:
        raise RuntimeError(f"torchrun of recipes/{recipe}/train.py on {gpus} GPUs exited with code {rc} "
                           f"(log: {console})")
    result = Path(argv[argv.index("--output_folder") + 1]) / "result.json" if "--output_folder" in argv else None
    if result is not None and result.is_file():
        import json

        return json.loads(result.read_text())
    return None


# ---------------------------------------------------------------------- submitit
def executor_parameters(cfg, cluster: str, desc: str) -> dict:
    """submitit parameters of a stage's jobs from the --slurm-* options (slurm_* ones only on SLURM)."""
    s = cfg.slurm
    params = {"name": f"rewire-study-{desc}", "timeout_min": int(s.get("time_min") or 60), "nodes": 1,
              "tasks_per_node": 1, "cpus_per_task": int(s.get("cpus_per_job") or cfg.threads),
              "gpus_per_node": int(s.get("gpus_per_job") or 0)}
    if cluster == "slurm":
        if s.get("partition"):
            params["slurm_partition"] = s["partition"]
        if s.get("extra"):
            params["slurm_additional_parameters"] = dict(s["extra"])
    return params


def check_launcher(cfg) -> None:
    """A launcher that cannot start jobs here is an error before any stage does work (not after the audit)."""
    if cfg.launcher == "slurm" and shutil.which("sbatch") is None:
        raise StageError("--launcher slurm: sbatch is not on this machine's PATH (start the study on the "
                         "cluster's login node, or use --launcher submitit-local to try the job path here)")


def make_executor(cfg, desc: str):
    """A submitit executor for this stage's jobs (logs under OUT/study/jobs/<stage>/)."""
    import submitit

    check_launcher(cfg)
    cluster = "local" if cfg.launcher == "submitit-local" else "slurm"
    ex = submitit.AutoExecutor(folder=cfg.work / "jobs" / desc, cluster=cluster)
    ex.update_parameters(**executor_parameters(cfg, cluster, desc))
    return ex


def _job(fn: Callable, cfg, item) -> dict:
    """What a job runs: one unit, with the study's thread count."""
    import os

    import torch

    os.environ["OMP_NUM_THREADS"] = str(cfg.threads)
    torch.set_num_threads(max(1, cfg.threads))
    return fn(cfg, item)


def run_jobs(fn: Callable, cfg, groups: List[list], desc: str, failures: str = "raise") -> List[dict]:
    """One job per unit. A group's first unit runs first (it fills the group's feature cache); when it
    ends, the group's other units are submitted together."""
    ex = make_executor(cfg, desc)
    poll = 1.0 if cfg.launcher == "submitit-local" else 15.0
    results: List[dict] = []
    running = []  # (job, item, rest of its group)
    for group in groups:
        if group:
            running.append((ex.submit(_job, fn, cfg, group[0]), group[0], list(group[1:])))
    total = sum(len(g) for g in groups)
    print(f"  {desc}: {len(running)} job(s) submitted ({cfg.launcher}; {total} unit(s) in all; job logs: "
          f"{shown_path(cfg.work / 'jobs' / desc, cfg.out)})", flush=True)
    try:
        _follow_jobs(ex, fn, cfg, running, results, desc, failures, poll)
    except BaseException:  # a failed unit, Ctrl-C or SIGTERM: the study's jobs end with it
        cancel_jobs(running)
        raise
    return results


def cancel_jobs(running: list) -> None:
    """Cancel every job still listed as running (`running` is updated in place as jobs end)."""
    for job, _, _ in running:
        try:
            if not job.done():
                job.cancel(check=False)
        except Exception as err:  # noqa: BLE001 (a job that cannot be cancelled is named, not fatal)
            print(f"  could not cancel job {getattr(job, 'job_id', '?')}: {err}", flush=True)


def _follow_jobs(ex, fn: Callable, cfg, running: list, results: List[dict], desc: str, failures: str,
                 poll: float) -> None:
    """Wait for the jobs, submitting each group's rest when its first unit ends; `running` stays current."""
    while running:
        still = []
        for job, item, rest in running:
            if not job.done():
                still.append((job, item, rest))
                continue
            msg = _job_message(job, item, desc, cfg, failures)
            results.append(msg)
            if msg.get("text"):
                print(msg["text"], flush=True)
            still += [(ex.submit(_job, fn, cfg, nxt), nxt, []) for nxt in rest]
        running[:] = still
        if running:
            time.sleep(poll)


def _job_message(job, item, desc: str, cfg, failures: str) -> dict:
    try:
        return job.result()
    except Exception as err:  # the job died (time limit, node failure, killed) or its unit raised
        log = shown_path(job.paths.stderr, cfg.out)
        text = f"{desc} job {job.job_id} failed: {type(err).__name__}: {str(err).strip().splitlines()[-1:]} (log: {log})"
        if failures == "raise":
            raise StageError(text) from None
        unit = getattr(item[-1], "folder", None) if isinstance(item, tuple) else None
        return {"failed": True, "unit": shown_path(unit, cfg.out) if unit else str(item), "error": text,
                "text": f"  FAILED {text}"}
