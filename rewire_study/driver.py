"""Stage runner of the study: runs the chosen stages in order, times them, records stages.json.

    python -m rewire_study [--quick] [--encoders base=PATH,...] [--tasks ks,sid] [--per-class 20,5,1] [--fractions 1.0,0.1]
                               [--seeds 0,1,2] [--views twin,neutral,mixed] [--out results] ...

Every stage skips the work it finds finished, so the same command after an interruption (or a
second time) picks up where it stopped.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import List, Optional

import torch

from rewire_study import stages as st
from rewire_study.config import BASE, STAGES, StudyConfig, parse_args
from rewire_study.launch import check_launcher, remember_environment_description
from rewire_study.units import StageLog, TreeMemorySampler, portable, reset_logging


def _stage_settings(cfg: StudyConfig, name: str) -> dict:
    """What each stage's result depends on (written to stages.json and summary.md; paths relative to OUT)."""
    return portable(_settings(cfg, name), cfg.out)


def _settings(cfg: StudyConfig, name: str) -> dict:
    if name == "data":
        return {"data_dir": str(cfg.data_dir), "synth_scale": cfg.synth_scale, "corpora": cfg.corpora,
                "data_folders": cfg.data_folders, "train_cap": cfg.train_cap, "eval_cap": cfg.eval_cap,
                "min_train": cfg.min_train, "fractions": cfg.fractions, "per_class": cfg.per_class, "seed": cfg.seed,
                "presets": cfg.presets, "rewire_utterances": cfg.rewire_utts}
    if name == "tts":
        return {"views": st.tts_views(cfg), **st.tts_choice(cfg), "cache": str(cfg.cache_dir / "tts")}
    if name == "rewire":
        return {"base": cfg.encoders[BASE], "views": cfg.views, "epochs": cfg.rewire_epochs, "lr": cfg.rewire_lr,
                "source": str(st.rewire_source_csv(cfg)), "controls": cfg.controls, "in_domain": cfg.in_domain,
                "length_rules": st.length_rules(cfg),
                "utterances": cfg.rewire_utts, "batch_size": cfg.rewire_batch, "overrides": cfg.rewire_overrides,
                "tts": st.tts_choice(cfg), "encoders_written": str(cfg.work / "rewire")}
    if name == "isotropy":
        return {"encoders": list(st.encoder_paths(cfg)), "utterances": cfg.iso_utts,
                "max_vectors": cfg.iso_max_vectors, "levels": ["frame", "utterance"], "fit_clips": cfg.iso_fit_clips}
    if name == "downstream":
        return {"tasks": cfg.tasks, "encoders": list(st.encoder_paths(cfg)), "fractions": cfg.fractions,
                "per_class": cfg.per_class, "controls": cfg.controls,
                "seeds": cfg.seeds, "max_steps": {t: st.step_budget(cfg, t)[0] for t in cfg.tasks},
                "patience": {t: cfg.patience.get(t) for t in cfg.tasks},
                "eval_every_steps": {t: cfg.eval_every_of(t) for t in cfg.tasks}, "task_overrides": cfg.task_overrides,
                "feature_cache": str(cfg.cache_dir / "features"), "feature_dtype": cfg.feature_dtype}
    return {"out": ".", "launcher": cfg.launcher}


def check_encoders(cfg: StudyConfig) -> None:
    """A local encoder folder must hold a model (hub ids are left to the loader)."""
    for name, enc in cfg.encoders.items():
        path = Path(enc)
        local = path.is_absolute() or enc.startswith(".") or path.exists()
        if local and not (path / "config.json").is_file():
            raise st.StageError(f"encoder '{name}' = {enc}: no model there (config.json missing). Give one with "
                                f"--encoders {name}=FOLDER_OR_HUB_ID (e.g. a folder written by rewire_lib.models.tiny or "
                                "recipes/pretrain).")


def run_stage(cfg: StudyConfig, name: str, log: StageLog) -> tuple:
    """One stage of config.STAGES: `stages.stage_<name>(cfg)`, or the report (written from what stages.json
    holds so far); returns (the stage's counts, the report's computed tables or None)."""
    if name == "report":
        from rewire_study.report import write_report

        return {}, write_report(cfg, log.data)
    return getattr(st, f"stage_{name}")(cfg) or {}, None


def run_study(cfg: StudyConfig) -> int:
    """Run the stages of `cfg.stages` in the canonical order; returns 0, or 1 if a stage or run failed."""
    reset_logging()
    check_encoders(cfg)
    check_launcher(cfg)
    remember_environment_description()
    cfg.out.mkdir(parents=True, exist_ok=True)
    cfg.work.mkdir(parents=True, exist_ok=True)
    log = StageLog(cfg.out / "stages.json", portable(cfg.as_dict(), cfg.out))
    log.save()
    print(f"Study ({cfg.mode} mode) -> {cfg.out}; torch threads: {torch.get_num_threads()}", flush=True)
    print("Each task's preset and optimiser-step budget per downstream run:\n" + "\n".join(st.budget_lines(cfg)),
          flush=True)
    t_all = time.time()
    status = 0
    computed = None
    todo = [s for s in STAGES if s in cfg.stages]
    for i, name in enumerate(todo, 1):
        print(f"\n[{i}/{len(todo)}] stage {name}", flush=True)
        t0 = time.time()
        counts, state = {}, "done"
        sampler = TreeMemorySampler().__enter__()
        try:
            counts, tables = run_stage(cfg, name, log)
            computed = tables if tables is not None else computed
            if counts.get("units_failed"):
                state, status = "done with failures", 1
        except Exception as err:
            seconds = time.time() - t0
            sampler.__exit__(None, None, None)
            log.record(name, f"failed: {type(err).__name__}: {err}", seconds, _stage_settings(cfg, name), counts,
                       sampler.peak_mib)
            print(f"stage {name} FAILED after {seconds:.1f} s: {type(err).__name__}: {err}", flush=True)
            raise
        seconds = time.time() - t0
        sampler.__exit__(None, None, None)
        counts = dict(counts or {}, peak_processes=sampler.peak_processes)  # what was resident at the peak
        entry = log.record(name, state, seconds, _stage_settings(cfg, name), counts, sampler.peak_mib)
        tree = entry["peak_tree_pss_mib"]
        print(f"stage {name}: {state} in {seconds:.1f} s (peak memory (PSS) of all study processes together: "
              f"{'n/a' if tree is None else f'{tree:.0f} MiB'}; this process {entry['peak_rss_mib']['self']:.0f} MiB)",
              flush=True)
    if computed is not None:
        from rewire_study.report import rewrite_tables

        rewrite_tables(cfg, computed, log.data)
    tree = log.data.get("peak_tree_pss_mib")
    print(f"\nStudy finished in {time.time() - t_all:.1f} s; peak memory (PSS) of all study processes together "
          f"{'n/a' if tree is None else f'{tree:.0f} MiB'}. Report: {cfg.out / 'summary.md'}", flush=True)
    if cfg.views:
        print(st.continue_by_hand(cfg), flush=True)
    return status


class StudyStopped(KeyboardInterrupt):
    """SIGTERM to the study's main process: raised where it is, like Ctrl-C, so that the stage under way
    ends its workers and jobs on the way out (rewire_study.pool.stop_pool, launch.cancel_jobs)."""


def _stop_on_sigterm(signum, frame) -> None:
    raise StudyStopped(f"signal {signum}")


def main(argv: Optional[List[str]] = None) -> int:
    import signal
    import threading

    cfg = parse_args(argv)
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        return run_study(cfg)
    except st.StageError as err:
        print(f"error: {err}", flush=True)
        return 2
    except KeyboardInterrupt as err:
        how = "SIGTERM" if isinstance(err, StudyStopped) else "Ctrl-C"
        print(f"\nstudy stopped ({how}); its workers and jobs were stopped. The same command resumes it: "
              "finished units are kept, interrupted ones start again.", flush=True)
        return 130 if how == "Ctrl-C" else 143
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    raise SystemExit(main())
