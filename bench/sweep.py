#!/usr/bin/env python3
"""Where a study's downstream run spends its time, beside a bound for each kind of time.

    python bench/sweep.py                 # one group of runs per default task (pr, asr, ks, sid): base encoder, all seeds
    python bench/sweep.py --quick         # 2 seeds/folds, 30 steps, whole training sets only
    python bench/sweep.py --tasks ks --study-args "--train-cap 200"

What is run: exactly what a study worker runs. The study's own config (`rewire_study.config.parse_args`, default
preset, no rewiring views or controls), its data stage (`stages.stage_data`: `data_prep.prepare_all` for the default
corpora into a scratch --data-dir, skipped once prepared, then the capped study manifests), then, per task, the
base encoder's group of `stages.downstream_units` (every setting and seed/fold, in the study's order) through
`stages.DownstreamRuns` in this one process: the recipe's main() with `downstream_argv`, the disk feature cache
shared within the group, one torch thread. The feature cache folder and run folders are emptied first, so the
group pays what a first study does.

How time is attributed (nothing in the library is edited): well-chosen functions are wrapped with timers
(`Attribution`, a stack: a call's time goes to the innermost wrapped call, so nested categories never count
twice). Categories, then three kinds of time:
- features: the encoder's forward on cache misses, reading their audio, writing cache entries;
- head training (the training loop): `Brain._fit_train` and `fit_batch` minus anything nested (dev passes,
  checkpoints, features): forward/backward/step, the data loader, feature-cache look-ups and padding;
- everything else, per run ("fixed cost"): start-up (argv), hparams (load_hyperpyyaml chain), encoder load,
  stamps (run-folder and unit stamps, encoder fingerprint), run folder (experiment directory, env.log), data
  pipeline (datasets, label/tokenizer fitting, loaders), brain set-up, checkpoints, dev passes, test pass,
  plots, result files, and "other" (whatever no timer covers; should stay small).
Per-step cost = head-training time / steps; per-run fixed cost = run wall - features - head training.

The bound: the encoder's forward (eval, no_grad, batches of the eval batch size, audio read beforehand) over every
utterance the group reads, plus for each run a bare PyTorch loop with the run's own featurizer, head, loss
(`compute_cost`) and optimiser class, for the run's number of steps, over that run's first training batches
(`--bound-batches`, cycled), built from the feature cache and padded beforehand, with denormals flushed
(`denormals_flushed`). No data loading, no checks, no logging; gradient clipping and SID's random training crop are
left out (neither changes the arithmetic much).

The dev passes, part of the fixed cost, get their own bound (`bare_dev_passes_seconds`): the run's featurizer and head
(eval, no_grad) and its loss over the held dev states its dev passes read, once per pass, with no decoding, metrics
or logging. A CTC run's dev passes are mostly this arithmetic; what is beside it, and the fixed cost outside the
dev and test passes, is printed on the line before the last.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import math
import shlex
import shutil
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable, Dict, List, Optional

from bench import common

SCRIPT = "sweep"
DEFAULT_TASKS = ["pr", "asr", "ks", "sid"]
FEATURES = ("features",)
TRAINING = ("train loop", "train step", "feature lookup")
TRAINING_ONLY = ("feature lookup",)
_INHERITED = object()  # Patches: the attribute was not the class's own
FIXED = ("start-up", "hparams", "encoder load", "stamps", "run folder", "data pipeline", "brain set-up",
         "checkpoints", "dev passes", "test pass", "plots", "result files", "other")


# --------------------------------------------------------------------------------------- attribution
class Attribution:
    """Exclusive wall time per category. Wrapped calls push their category; the time since the last switch goes
    to the category on top of the stack, so a dev pass inside a training step counts as a dev pass only."""

    def __init__(self, base: str = "other"):
        self.stack: List[str] = [base]
        self.totals: Dict[str, float] = defaultdict(float)
        self.t = time.perf_counter()

    def _switch(self) -> None:
        now = time.perf_counter()
        self.totals[self.stack[-1]] += now - self.t
        self.t = now

    def enter(self, category: str) -> None:
        self._switch()
        if category in TRAINING_ONLY and self.stack[-1] not in TRAINING:
            category = self.stack[-1]  # a dev/test pass's feature look-ups belong to that pass
        self.stack.append(category)

    def leave(self) -> None:
        self._switch()
        self.stack.pop()

    def take(self) -> Dict[str, float]:
        """The totals since the last take (the base category included), then start again."""
        self._switch()
        out, self.totals = dict(self.totals), defaultdict(float)
        return out


class Patches:
    """Timer wrappers put on library functions and methods; `restore()` puts the originals back (the smoke
    test runs the bench inside pytest's process)."""

    def __init__(self, clock: Attribution):
        self.clock, self.undo = clock, []

    def _timed(self, fn: Callable, category: str) -> Callable:
        clock = self.clock

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            clock.enter(category)
            try:
                return fn(*args, **kwargs)
            finally:
                clock.leave()

        wrapper.__bench_original__ = fn
        return wrapper

    def _set(self, owner, name: str, value) -> None:
        """Set an attribute, remembering what to put back (nothing, for an attribute a class only inherits)."""
        self.undo.append((owner, name, vars(owner).get(name, _INHERITED)))
        setattr(owner, name, value)

    def function(self, fn: Callable, category: str, namespaces=()) -> None:
        """Wrap a module-level function wherever a loaded module (or one of `namespaces`, e.g. a recipe's
        globals: recipes are loaded from their files, not imported) holds it (`from x import f` copies the name)."""
        wrapped = self._timed(fn, category)
        spaces = [vars(m) for m in list(sys.modules.values()) if hasattr(m, "__dict__")] + list(namespaces)
        for space in spaces:
            for name in [k for k, v in list(space.items()) if v is fn]:
                self.undo.append((space, name, fn))
                space[name] = wrapped

    def method(self, cls: type, name: str, category: str) -> None:
        """Wrap `cls.name` and every override of it in cls's bases and loaded subclasses (an override that
        calls super() is then timed as a whole, not only its super() part)."""
        seen, todo = set(), [c for c in cls.__mro__ if c is not object] + [cls]
        while todo:
            c = todo.pop()
            if c in seen:
                continue
            seen.add(c)
            todo += c.__subclasses__() if issubclass(c, cls) else []
            raw = c.__dict__.get(name)
            if raw is None or getattr(raw, "__bench_original__", None) is not None:
                continue
            if isinstance(raw, classmethod):
                self._set(c, name, classmethod(self._timed(raw.__func__, category)))
            else:
                self._set(c, name, self._timed(raw, category))

    def restore(self) -> None:
        for owner, name, value in reversed(self.undo):
            if isinstance(owner, dict):
                owner[name] = value
            elif value is _INHERITED:
                delattr(owner, name)
            else:
                setattr(owner, name, value)
        self.undo.clear()


def attribute_time(patches: Patches, tasks: List[str]) -> None:
    """Put the timers on the functions a downstream run goes through (recipes loaded first: their own
    dataio_prep and Brain subclasses are wrapped too)."""
    import speechbrain as sb
    from speechbrain.utils.checkpoints import Checkpointer

    from rewire_lib.data import audio
    from rewire_lib.downstream import brain, feature_cache, predictions, run
    from rewire_lib.files import logs
    from rewire_lib.models import encoder
    from rewire_lib.training import recipe
    from rewire_study import units
    from rewire_study.recipes import load_recipe_main

    mains = {t: load_recipe_main(t) for t in tasks}  # a worker imports each recipe once: not a per-run cost
    recipes = [m.__globals__ for m in mains.values()]
    for fn, cat in ((sb.parse_arguments, "start-up"), (recipe.load_hparams, "hparams"),
                    (run.prepare_run, "stamps"), (feature_cache.encoder_fingerprint, "stamps"),
                    (recipe.create_run_folder, "run folder"), (audio.load_audio, "features"),
                    (logs.plot_columns, "plots"), (logs.plot_layer_weights, "plots"),
                    (predictions.write_predictions, "result files")):
        patches.function(fn, cat, recipes)
    for space in recipes:
        patches.function(space["dataio_prep"], "data pipeline", [space])
    D = brain.DownstreamBrain
    for cls, name, cat in ((encoder.SpeechEncoder, "from_pretrained", "encoder load"),
                           (units.Unit, "start", "stamps"), (units.Unit, "finish", "stamps"),
                           (D, "__init__", "brain set-up"), (D, "fit", "brain set-up"),
                           (sb.Brain, "make_dataloader", "data pipeline"),
                           (sb.Brain, "_fit_train", "train loop"), (D, "fit_batch", "train step"),
                           (D, "raw_encoder_states", "feature lookup"), (D, "_run_encoder", "features"),
                           (feature_cache.FeatureCache, "put", "features"),
                           (D, "evaluate_dev_and_checkpoint", "dev passes"), (D, "evaluate", "test pass"),
                           (D, "save_checkpoint", "checkpoints"),
                           (Checkpointer, "recover_if_possible", "checkpoints"),
                           (D, "write_result", "result files"), (logs.CSVLog, "append", "result files")):
        patches.method(cls, name, cat)
    patches._set(feature_cache.FeatureCache, "get_stored",
                 disk_reads_as_features(feature_cache.FeatureCache.get_stored, patches))


def disk_reads_as_features(get: Callable, patches: Patches) -> Callable:
    """FeatureCache.get_stored (what `get` and the Brain read through): a read from the disk cache (the entry is
    not in memory yet, e.g. ASR reading what PR's group wrote) is feature extraction; a memory hit stays with its
    caller (a training step, a dev pass)."""
    timed = patches._timed(get, "features")

    @functools.wraps(get)
    def wrapper(self, key):
        return get(self, key) if key in self._memory else timed(self, key)

    return wrapper


# --------------------------------------------------------------------------------------- the runs
class RunCapture:
    """The last Brain a run made and the training batches it stepped on (what the bare loop replays)."""

    def __init__(self):
        self.brain = None
        self.batches: list = []

    def install(self, patches: Patches) -> None:
        from rewire_lib.downstream.brain import DownstreamBrain

        capture, init, fit_batch = self, DownstreamBrain.__init__, DownstreamBrain.fit_batch

        def __init__(self, *args, **kwargs):
            init(self, *args, **kwargs)
            capture.brain, capture.batches = self, []

        def record(self, batch):
            capture.batches.append(batch)  # a reference: paths and targets, no audio (the feature cache is on)
            return fit_batch(self, batch)

        patches._set(DownstreamBrain, "__init__", __init__)
        patches._set(DownstreamBrain, "fit_batch", record)

    def take(self):
        out = (self.brain, self.batches)
        self.brain, self.batches = None, []
        return out


def study_config(args, encoder_dir: str, work: Path):
    """The study's own config: default preset, base encoder only, scratch data/cache/output folders."""
    from rewire_study.config import parse_args

    argv = ["--out", str(work / "study-out"), "--data-dir", str(args.data_dir), "--cache-dir", str(work / "cache"),
            "--encoders", f"base={encoder_dir}", "--tasks", ",".join(args.tasks), "--views", "none",
            "--controls", "none", "--jobs", "1", "--threads", str(args.threads_used)]
    if args.quick:
        folds = ",".join(f"{t}=2" for t in args.tasks if t in ("pr", "asr"))
        argv += ["--seeds", "0,1", "--max-steps", str(args.quick_steps), "--per-class", "none"]
        argv += ["--folds", folds] if folds else []
    return parse_args(argv + shlex.split(args.study_args))


def fresh_study_folders(cfg) -> None:
    """Empty run folders and feature cache: the group pays what a study's first run of it pays."""
    for folder in (cfg.work / "runs", cfg.cache_dir / "features"):
        shutil.rmtree(folder, ignore_errors=True)


def base_groups(cfg) -> Dict[str, list]:
    """task -> the base encoder's units in the study's running order (one group: one task, one encoder)."""
    from rewire_study import stages
    from rewire_study.config import BASE

    groups: Dict[str, list] = {t: [] for t in cfg.tasks}
    for item in stages.downstream_units(cfg):
        if item[1] == BASE:
            groups[item[0]].append(item)
    return groups


def run_one(runs, cfg, item, clock: Attribution, capture: RunCapture) -> dict:
    """One unit as a study worker runs it (`runs`: the stage's stages.DownstreamRuns); its wall time and the
    attributed categories."""
    clock.take()
    t0 = time.perf_counter()
    msg = runs(cfg, item)
    wall = time.perf_counter() - t0
    cats = clock.take()
    if msg.get("failed"):
        raise RuntimeError(f"{item[0]} run failed: {msg['error']}")
    return {"wall_s": wall, "categories": cats, "label": f"{item[2]} {item[4].folder.name}"}


# --------------------------------------------------------------------------------------- the bound
def padded_batches(brain, batches: list, limit: int) -> list:
    """(hidden [L+1, B, T, D], mask [B, T], targets) of the run's first `limit` training batches, from the
    feature cache (its hit counters left as the run left them)."""
    from rewire_lib.downstream.brain import pad_features

    cache, out = brain.cache, []
    hits, misses = cache.hits, cache.misses
    for batch in batches[:limit]:
        hidden, mask = pad_features([cache.get(cache.key(w)) for w in batch.wav])
        out.append((hidden, mask, targets_of(brain, batch)))
    cache.hits, cache.misses = hits, misses
    return out


def bare_loss_fn(brain, modules) -> Callable:
    """The loss of one batch in plain PyTorch: the run's featurizer, head and `compute_cost`."""
    from rewire_lib.downstream.ctc import CTCBrain

    featurizer, head = modules
    cost = brain.hparams.compute_cost
    ctc = isinstance(brain, CTCBrain)

    def loss_of(hidden, mask, targets):
        x = featurizer(hidden) * mask[..., None].to(hidden.dtype)
        out = head(x, mask)
        if ctc:
            tokens, token_lens = targets
            return cost(out, tokens, mask.sum(dim=1) / mask.shape[1], token_lens)
        return cost(out, targets)

    return loss_of


def targets_of(brain, batch):
    """What `compute_cost` compares with: (tokens, lengths) for CTC, class indices otherwise."""
    from rewire_lib.downstream.ctc import CTCBrain

    return batch.tokens if isinstance(brain, CTCBrain) else batch.label_encoded.data[:, 0]


def bare_step_fn(brain, modules, opt) -> Callable:
    """One training step in plain PyTorch: the run's featurizer, head and `compute_cost`, its optimiser class."""
    loss_of = bare_loss_fn(brain, modules)

    def step(hidden, mask, targets):
        loss = loss_of(hidden, mask, targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


@contextlib.contextmanager
def denormals_flushed():
    """CPU arithmetic with denormal floats read and written as zero, for the bounds' loops, then torch's default back.
    Why: the bare loop trains on the run's first 16 batches over and over, and a CTC head that has learnt them pushes
    the other tokens' probabilities into the denormal range, where x86 arithmetic takes a slow path: measured, the
    same ASR bound read 228 ms a step without this and 35 ms with it, against the recipe's own 39 ms, which sees
    every batch (2026-12-07, bench/README.md section 5). A bound is the arithmetic, not that slow path."""
    import torch

    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def bare_loop_seconds(brain, batches: list, steps: int, limit: int, warmup: int = 2) -> dict:
    """Wall and CPU seconds of `steps` bare steps over the run's first `limit` batches, padded beforehand, with
    denormals flushed (`denormals_flushed`)."""
    from rewire_lib.training.recipe import unwrap_ddp

    data = padded_batches(brain, batches, limit)
    modules = [copy.deepcopy(unwrap_ddp(brain.modules[n])).train() for n in ("featurizer", "head")]
    opt = brain.hparams.opt_class([p for m in modules for p in m.parameters() if p.requires_grad])
    step = bare_step_fn(brain, modules, opt)
    with denormals_flushed():
        for i in range(warmup):
            step(*data[i % len(data)])
        with common.Clock() as c:
            for i in range(steps):
                step(*data[i % len(data)])
    return {"seconds": c.seconds, "cpu_seconds": c.cpu_seconds, "batches": len(data)}


def bare_dev_passes_seconds(brain, passes: int, repeats: int = 3) -> dict:
    """The dev passes' bound: the run's featurizer and head (copies, eval mode, no_grad) and `compute_cost` over the
    dev batches' held states (what the run's own dev passes read: padded frames, or pooled states), no decoding,
    metrics or logging; `repeats` passes timed after one warm-up, scaled to the run's `passes`; denormals flushed."""
    import torch

    from rewire_lib.training.recipe import unwrap_ddp

    if not passes or not brain.held_dev_batches or not brain.held_dev:
        return {"seconds": 0.0, "passes": passes, "batches": 0}
    data = [(*brain.held_dev[tuple(b.id)], targets_of(brain, b)) for b in brain.held_dev_batches]
    modules = [copy.deepcopy(unwrap_ddp(brain.modules[n])).eval() for n in ("featurizer", "head")]
    loss_of = bare_loss_fn(brain, modules)
    with torch.no_grad(), denormals_flushed():
        for batch in data:
            loss_of(*batch)
        with common.Clock() as c:
            for _ in range(repeats):
                for batch in data:
                    loss_of(*batch)
    return {"seconds": c.seconds * passes / repeats, "passes": passes, "batches": len(data)}


def dev_passes_of(folder: Path) -> int:
    """The run's dev evaluations: its curve.csv rows."""
    from rewire_lib.files.logs import read_csv

    curve = Path(folder) / "curve.csv"
    return len(read_csv(curve)) if curve.is_file() else 0


def encoder_forward_seconds(brain, wavs: Dict[str, float], sample: int, seed: int = 0) -> dict:
    """The frozen encoder's forward alone (audio read beforehand), eval mode, no_grad, in length-sorted batches of
    the eval batch size: what feature extraction cannot go below. Timed on a seeded sample of `sample` utterances
    (0: all) and scaled to the group's audio seconds (forward cost grows with audio length)."""
    import random

    import torch
    from speechbrain.utils.data_utils import batch_pad_right

    from rewire_lib.data.audio import load_audio

    names = sorted(wavs)
    chosen = random.Random(seed).sample(names, sample) if 0 < sample < len(names) else names
    audio = sorted((load_audio(w) for w in chosen), key=len)
    size = brain.frame_eval_batch_size
    encoder = brain.encoder_module.eval()
    with torch.no_grad(), common.Clock() as c:
        for i in range(0, len(audio), size):
            sig, lens = batch_pad_right(audio[i:i + size])
            encoder(sig, lens)
    timed_s, total_s = sum(len(a) for a in audio) / 16000, sum(wavs.values())
    scale = total_s / timed_s if timed_s else 1.0
    return {"seconds": c.seconds * scale, "cpu_seconds": c.cpu_seconds * scale, "utterances": len(wavs),
            "timed_utterances": len(audio), "timed_seconds": c.seconds, "audio_s": total_s}


def group_wavs(cfg, items: list) -> Dict[str, float]:
    """Every audio file the group's runs read (train, dev and test of each run's data folder): its duration."""
    from rewire_study import stages

    wavs = {}
    for task, _, setting, seed, _ in items:
        for manifest in stages.task_manifests(cfg, task, setting, seed):
            for row in stages.read_stage_manifest(manifest)[1]:
                wavs[row["wav"]] = float(row["duration"])
    return wavs


# --------------------------------------------------------------------------------------- one task
def bench_group(cfg, task: str, items: list, clock: Attribution, capture: RunCapture, args,
                extracted: Optional[set] = None) -> dict:
    """Run a task's group as the study does, then its bound; per-run and per-task figures. extracted: the audio
    files earlier groups of this bench ran the encoder on (updated here): the stage's bound counts each file's
    forward once, as the study's shared feature cache does (ASR reads what PR's group extracted)."""
    from rewire_study.stages import DownstreamRuns

    runs, brain, downstream = [], None, DownstreamRuns()
    try:
        for k, item in enumerate(items, 1):
            r = run_one(downstream, cfg, item, clock, capture)
            brain, batches = capture.take()
            r.update(split_run(r, steps_trained(brain, batches)))
            r["bound_loop"] = bare_loop_seconds(brain, batches, r["steps"], args.bound_batches)
            r["bound_step_ms"] = 1000 * r["bound_loop"]["seconds"] / max(1, r["steps"])
            r["bound_dev"] = bare_dev_passes_seconds(brain, dev_passes_of(item[4].folder))
            runs.append(r)
            print(f"  [{task} {k}/{len(items)}] {r['label']}: {r['wall_s']:.1f} s wall = features "
                  f"{r['features_s']:.1f} + training {r['training_s']:.1f} ({r['step_ms']:.1f} ms/step x "
                  f"{r['steps']}) + fixed {r['fixed_s']:.1f}; bare loop {r['bound_step_ms']:.1f} ms/step",
                  flush=True)
        wavs = group_wavs(cfg, items)
        forward = encoder_forward_seconds(brain, wavs, args.bound_utterances)
        extracted = set() if extracted is None else extracted  # None: a group on its own
        new_audio_s = sum(seconds for wav, seconds in wavs.items() if wav not in extracted)
        forward["stage_seconds"] = forward["seconds"] * new_audio_s / forward["audio_s"] if forward["audio_s"] else 0.0
        extracted.update(wavs)
    finally:
        downstream.close()
    summary = summarise_task(task, runs, forward)
    print(f"  [{task}] group: {summary['group_wall_s']:.0f} s wall vs bound {summary['group_bound_s']:.0f} s "
          f"({summary['group_over_bound']:.2f}x); features {summary['group_features_s']:.0f} s vs encoder forward "
          f"{forward['seconds']:.0f} s", flush=True)
    return summary


def steps_trained(brain, batches: list) -> int:
    """The optimiser steps the run trained (result.json's `steps`). Not `brain.optimizer_step` after the run: the
    test pass loads the best-dev checkpoint, which puts the counter back to that checkpoint's step."""
    return int(getattr(brain, "train_summary", {}).get("steps") or len(batches))


def split_run(r: dict, steps: int) -> dict:
    """The three kinds of time of one run, and its per-step cost."""
    cats = r["categories"]
    features = sum(cats.get(c, 0.0) for c in FEATURES)
    training = sum(cats.get(c, 0.0) for c in TRAINING)
    fixed, dev = r["wall_s"] - features - training, cats.get("dev passes", 0.0)
    return {"steps": steps, "features_s": features, "training_s": training, "fixed_s": fixed,
            "step_ms": 1000 * training / max(1, steps), "dev_s": dev,
            "outside_eval_s": fixed - dev - cats.get("test pass", 0.0)}


def summarise_task(task: str, runs: List[dict], forward: dict) -> dict:
    med = lambda key: common.median(r[key] for r in runs)  # noqa: E731
    dev_bound = common.median(r["bound_dev"]["seconds"] for r in runs)
    fixed_parts = {c: common.median(r["categories"].get(c, 0.0) for r in runs) for c in FIXED}
    wall = sum(r["wall_s"] for r in runs)
    features = sum(r["features_s"] for r in runs)
    loops = sum(r["bound_loop"]["seconds"] for r in runs)
    bound = forward["seconds"] + loops
    return {"task": task, "runs": runs, "n_runs": len(runs), "steps": med("steps"),
            "median_wall_s": med("wall_s"), "median_training_s": med("training_s"), "median_fixed_s": med("fixed_s"),
            "median_step_ms": med("step_ms"), "median_bound_step_ms": med("bound_step_ms"),
            "step_over_bound": med("step_ms") / med("bound_step_ms"), "fixed_parts_median_s": fixed_parts,
            "group_wall_s": wall, "group_features_s": features, "encoder_forward": forward,
            "features_over_bound": ratio(features, forward["seconds"]),
            "group_bound_s": bound, "group_over_bound": ratio(wall, bound),
            "stage_bound_s": forward["stage_seconds"] + loops,
            "median_dev_passes": common.median(r["bound_dev"]["passes"] for r in runs), "median_dev_s": med("dev_s"),
            "median_dev_bound_s": dev_bound, "dev_over_bound": ratio(med("dev_s"), dev_bound),
            "median_outside_eval_s": med("outside_eval_s")}


def ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


# --------------------------------------------------------------------------------------- output
def print_tables(result: dict) -> str:
    res = result["results"]
    main = common.table(
        f"Downstream sweep, one group per task ({result['encoder']['name']}, torch threads "
        f"{result['settings']['torch_threads']}): seconds, medians per run unless said",
        ["task", "runs", "steps", "run wall", "features (group)", "encoder fwd (group)", "training", "ms/step",
         "bare ms/step", "step / bound", "fixed", "group wall", "group bound", "wall / bound"],
        [[r["task"].upper(), r["n_runs"], r["steps"], r["median_wall_s"], r["group_features_s"],
          r["encoder_forward"]["seconds"], r["median_training_s"], r["median_step_ms"], r["median_bound_step_ms"],
          f"{r['step_over_bound']:.2f}x", r["median_fixed_s"], r["group_wall_s"], r["group_bound_s"],
          f"{r['group_over_bound']:.2f}x"] for r in res])
    parts = common.table("Per-run fixed cost by part: seconds, median per run",
                         ["task"] + list(FIXED),
                         [[r["task"].upper()] + [r["fixed_parts_median_s"][c] for c in FIXED] for r in res])
    dev = common.table("Dev passes against their bare forward (featurizer, head and loss over the held dev states; "
                       "no decoding or metrics): seconds, medians per run",
                       ["task", "dev passes", "dev passes s", "bare forward s", "dev / bound", "test pass s",
                        "fixed outside dev/test passes"],
                       [[r["task"].upper(), r["median_dev_passes"], r["median_dev_s"], r["median_dev_bound_s"],
                         f"{r['dev_over_bound']:.2f}x", r["fixed_parts_median_s"]["test pass"],
                         r["median_outside_eval_s"]] for r in res])
    text = main + "\n" + parts + "\n" + dev
    print(text, flush=True)
    return text


def together(results: List[dict]) -> dict:
    """The groups of every task as one downstream stage: its wall against the sum of its bounds (the per-task
    ratios weight the tasks wrongly: a SID group is a fifth of a PR group), each audio file's encoder forward
    counted once, as the stage's shared feature cache runs it once (`stage_bound_s`)."""
    wall = sum(r["group_wall_s"] for r in results)
    bound = sum(r["stage_bound_s"] for r in results)
    return {"tasks": [r["task"] for r in results], "wall_s": wall, "bound_s": bound,
            "over_bound": ratio(wall, bound)}


def evaluation_line(results: List[dict]) -> str:
    """The fixed cost that is not evaluation, and how close the dev passes are to their own arithmetic."""
    worst_out = max(results, key=lambda r: r["median_outside_eval_s"])
    rated = [r for r in results if not math.isnan(r["dev_over_bound"])]
    worst_dev = max(rated, key=lambda r: r["dev_over_bound"]) if rated else None
    dev = f"{worst_dev['dev_over_bound']:.2f} x ({worst_dev['task']})" if worst_dev else "n/a"
    return (f"fixed cost outside dev/test passes: max {worst_out['median_outside_eval_s']:.2f} s ({worst_out['task']}); "
            f"dev passes / their bare forward: max {dev}")


def verdict(results: List[dict]) -> str:
    """The last line printed: the worst per-step ratio and the worst per-run fixed cost."""
    worst_step = max(results, key=lambda r: r["step_over_bound"])
    worst_fixed = max(results, key=lambda r: r["median_fixed_s"])
    return (f"per-step cost / bound: max {worst_step['step_over_bound']:.2f} x ({worst_step['task']}); "
            f"per-run fixed cost: max {worst_fixed['median_fixed_s']:.2f} s ({worst_fixed['task']})")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--encoder", default=None, help="folder, hub id or preset (default: pretrained/tiny-hubert)")
    p.add_argument("--tasks", nargs="+", default=DEFAULT_TASKS, choices=DEFAULT_TASKS + ["ic", "er"])
    p.add_argument("--data-dir", type=Path, default=None,
                   help="prepared corpora (default: <bench work>/sweep/data, made on the first run, ~1 min)")
    p.add_argument("--study-args", default="", help='more study options, e.g. "--train-cap 200" or '
                   '"--data-folder ks=DIR --iso-manifest CSV --rewire-csv CSV"')
    p.add_argument("--bound-batches", type=int, default=16, help="distinct padded batches the bare loop cycles")
    p.add_argument("--bound-utterances", type=int, default=300,
                   help="utterances the encoder-forward bound is timed on, scaled to the group's audio (0: all)")
    p.add_argument("--quick", action="store_true", help="2 seeds/folds, 30 steps, whole training sets only")
    p.add_argument("--quick-steps", type=int, default=30, help=argparse.SUPPRESS)
    p.add_argument("--threads", default="1", help="torch threads (default 1: what a study worker uses)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=None, help="JSON folder (default bench/results)")
    return p


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    common.quiet_logs()
    args.threads_used = common.set_threads(args.threads)
    work = common.WORK_DIR / "sweep"
    args.data_dir = Path(args.data_dir or work / "data").resolve()
    encoder_dir, name = common.resolve_encoder(args.encoder)
    cfg = study_config(args, encoder_dir, work)
    if args.device != "cpu":
        cfg.device = args.device
    print(f"Downstream sweep: encoder {name}, tasks {args.tasks}, torch threads {args.threads_used}, load average "
          f"{common.load_average()}; data stage -> {args.data_dir}", flush=True)
    from rewire_study import stages

    stages.stage_data(cfg)
    fresh_study_folders(cfg)
    groups = base_groups(cfg)
    clock = Attribution()
    patches, capture = Patches(clock), RunCapture()
    result = {"script": SCRIPT, "machine": common.machine(),
              "encoder": dict(common.describe_encoder(encoder_dir), name=name, path=encoder_dir),
              "settings": dict(vars(args), data_dir=str(args.data_dir), out=str(args.out),
                               torch_threads=args.threads_used, max_steps=cfg.max_steps,
                               seeds={t: cfg.seeds_of(t) for t in cfg.tasks}),
              "results": []}
    try:
        attribute_time(patches, args.tasks)
        capture.install(patches)
        extracted = set()
        for task in args.tasks:
            print(f"{task}: {len(groups[task])} runs", flush=True)
            result["results"].append(bench_group(cfg, task, groups[task], clock, capture, args, extracted))
            common.save_json(SCRIPT, result, args.out)  # what is measured so far survives an interrupted bench
    finally:
        patches.restore()
    results = result["results"]
    result["table"] = print_tables(result)
    result["together"] = together(results)
    print(f"All groups together ({', '.join(t.upper() for t in result['together']['tasks'])}): wall "
          f"{result['together']['wall_s']:.0f} s / bound {result['together']['bound_s']:.0f} s = "
          f"{result['together']['over_bound']:.2f}x (each audio file's encoder forward counted once)", flush=True)
    result["evaluation"] = evaluation_line(results)
    print(result["evaluation"], flush=True)
    result["verdict"] = verdict(results)
    path = common.save_json(SCRIPT, result, args.out)
    print(f"\nJSON: {path}")
    print(result["verdict"], flush=True)
    return result


if __name__ == "__main__":
    main()
