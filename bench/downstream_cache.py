#!/usr/bin/env python3
"""Downstream training with the frozen encoder: seconds per epoch with and without the feature cache.

    python bench/downstream_cache.py                 # KS, IC, SID, ER on the embedded data
    python bench/downstream_cache.py --quick
    python bench/downstream_cache.py --tasks ks --train-size 512

Each task runs the real recipe (`recipes/<task>/train.py`'s main with its hparams/baseline.yaml) twice on
the same seeded subset of its training manifest: `--feature_cache none` (every epoch reads the audio and runs
the encoder) and `--feature_cache memory` (the recipe's default: the first epoch fills the cache, later
epochs read features only). An epoch is timed from the start of the training stage to the end of its last
batch, with dev evaluation pushed out of the epoch (`eval_every_steps` larger than the run): the dev/test
evaluations at the end are outside the figures. The ratio compares later epochs (median) of both runs.

Data (`data/...`, made by `python data_prep/prepare_all.py`): KS data/speech_commands, IC data/synth/ic,
SID data/fsdd/speakers, ER data/synth/er. Dev and test are a few rows of the training subset (their metrics
mean nothing here; only the clock matters).
"""
from __future__ import annotations

import argparse
import logging
import random
import tempfile
from pathlib import Path


from bench import common
from rewire_study.recipes import load_recipe_module

SCRIPT = "downstream_cache"
TASK_DATA = {"ks": "speech_commands", "ic": "synth/ic", "sid": "fsdd/speakers", "er": "synth/er",
             "pr": "synth/asr", "asr": "synth/asr"}
EPOCHS: list[dict] = []
_PATCHED = False


def patch_brain() -> None:
    """Make the downstream engine's Brain read the clock around each training epoch (nothing else changes)."""
    global _PATCHED
    if _PATCHED:
        return
    import speechbrain as sb

    from rewire_lib.downstream.brain import DownstreamBrain

    # The recipes' Brains subclass DownstreamBrain and call its hooks through super(): wrap those.
    stage_start, batch_end, stage_end = (DownstreamBrain.on_stage_start, DownstreamBrain.on_fit_batch_end,
                                         DownstreamBrain.on_stage_end)

    def on_stage_start(self, stage, epoch=None):
        stage_start(self, stage, epoch)
        if stage == sb.Stage.TRAIN:
            self._bench_batches, self._bench_clock = 0, None
            self._bench_start = common.Clock(str(self.device)).__enter__()

    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        batch_end(self, batch, outputs, loss, should_step)
        self._bench_batches += 1
        self._bench_clock = self._bench_start.stop()  # the clock as of the last batch's end

    def on_stage_end(self, stage, stage_loss, epoch=None):
        if stage == sb.Stage.TRAIN and getattr(self, "_bench_clock", None) is not None:
            EPOCHS.append({"epoch": epoch, "batches": self._bench_batches,
                           "seconds": self._bench_clock.seconds, "cpu_seconds": self._bench_clock.cpu_seconds,
                           "cache": self.cache.stats() if self.cache is not None else None})
        stage_end(self, stage, stage_loss, epoch)

    DownstreamBrain.on_stage_start, DownstreamBrain.on_fit_batch_end, DownstreamBrain.on_stage_end = (
        on_stage_start, on_fit_batch_end, on_stage_end)
    _PATCHED = True


def subset_manifests(task: str, n: int, n_eval: int, seed: int, folder: Path, data_root: Path) -> tuple:
    """(train, dev, test) CSVs: `n` seeded rows of the task's training manifest; dev = test = `n_eval` of them."""
    import csv

    src = data_root / TASK_DATA[task] / "train.csv"
    if not src.is_file():
        raise SystemExit(f"{src} is missing: run `python data_prep/prepare_all.py` first (see data_prep/README.md)")
    with open(src, newline="") as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames, list(reader)
    random.Random(seed).shuffle(rows)
    rows = rows[: min(n, len(rows))]
    paths = []
    for name, part in (("train", rows), ("dev", rows[:n_eval]), ("test", rows[:n_eval])):
        path = folder / f"{task}_{name}.csv"
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(part)
        paths.append(path)
    return tuple(paths), len(rows), sum(float(r["duration"]) for r in rows)


def run_recipe(task: str, encoder_dir: str, csvs, cache: str, epochs: int, args, out: Path) -> list[dict]:
    patch_brain()
    EPOCHS.clear()
    train, dev, test = csvs
    argv = [str(common.REPO / "recipes" / task / "hparams" / "baseline.yaml"), "--encoder", encoder_dir,
            "--train_csv", str(train), "--valid_csv", str(dev), "--test_csv", str(test),
            "--output_folder", str(out / f"{task}_{cache}"), "--number_of_epochs", str(epochs),
            "--eval_every_steps", "1000000", "--feature_cache", cache, "--device", args.device, "--noprogressbar"]
    load_recipe_module(task).main(argv)
    logging.disable(logging.WARNING)
    return list(EPOCHS)


def bench_task(task: str, encoder_dir: str, args, work: Path) -> dict:
    from rewire_lib.files.paths import data_dir

    csvs, n, audio_s = subset_manifests(task, args.train_size, args.eval_size, args.seed, work, data_dir())
    # interleaved: no-cache and cache runs alternate, so load from other processes hits both alike
    runs = {"none": [], "memory": []}
    for rep in range(args.reps):
        for cache in (("none", "memory") if rep % 2 == 0 else ("memory", "none")):
            epochs = run_recipe(task, encoder_dir, csvs, cache, args.epochs, args, work / f"rep{rep}")
            runs[cache].append(epochs)
            print(f"  [{task}] rep {rep + 1}/{args.reps} cache={cache:6s}: epochs "
                  + ", ".join(f"{e['seconds']:.2f}" for e in epochs) + " s (CPU "
                  + ", ".join(f"{e['cpu_seconds']:.2f}" for e in epochs) + " s)", flush=True)
    later = {k: common.median(e["seconds"] for r in v for e in r[1:]) for k, v in runs.items()}
    first = {k: common.median(r[0]["seconds"] for r in v) for k, v in runs.items()}
    later_cpu = {k: common.median(e["cpu_seconds"] for r in v for e in r[1:]) for k, v in runs.items()}
    return {"task": task, "data": TASK_DATA[task], "train_utterances": n, "audio_seconds": audio_s,
            "later_epoch_cpu_s": later_cpu, "cpu_speedup": later_cpu["none"] / later_cpu["memory"],
            "epochs_per_run": args.epochs, "runs": runs,
            "first_epoch_s": first, "later_epoch_s": later,
            "speedup": later["none"] / later["memory"],
            "fill_overhead": first["memory"] / later["none"]}


def print_tables(result: dict) -> str:
    rows = [[r["task"].upper(), r["data"], r["train_utterances"], f"{r['audio_seconds'] / r['train_utterances']:.2f}",
             r["later_epoch_s"]["none"], r["first_epoch_s"]["memory"], r["later_epoch_s"]["memory"],
             f"{r['speedup']:.1f}x", r["later_epoch_cpu_s"]["none"], r["later_epoch_cpu_s"]["memory"],
             f"{r['cpu_speedup']:.1f}x"] for r in result["results"]]
    s = result["settings"]
    text = common.table(
        f"Downstream epoch, frozen encoder {result['encoder']['name']} ({result['encoder']['params_M']} M params), "
        f"{s['device']}: seconds (median over epochs 2..{s['epochs']} of {s['reps']} run(s) each)",
        ["task", "data", "train utts", "mean s", "no cache", "cache: 1st epoch (fill)", "cache: later", "speed-up",
         "CPU-s no cache", "CPU-s cache", "CPU speed-up"],
        rows)
    print(text, flush=True)
    return text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--encoder", default=None, help="folder, hub id or preset (see rewire_throughput.py --help)")
    p.add_argument("--tasks", nargs="+", default=["ks", "ic", "sid", "er"], choices=sorted(TASK_DATA))
    p.add_argument("--train-size", type=int, default=192, help="training utterances per task (seeded subset)")
    p.add_argument("--eval-size", type=int, default=8, help="dev/test rows (outside the timing)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per run (the first one fills the cache)")
    p.add_argument("--reps", type=int, default=1, help="runs with and without the cache per task")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", default="auto", help="torch threads: a number, or auto (see bench/README.md)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="96 utterances, 2 epochs")
    p.add_argument("--out", type=Path, default=None, help="JSON folder (default bench/results)")
    return p


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.train_size, args.epochs = min(args.train_size, 96), min(args.epochs, 2)
    if args.epochs < 2:
        raise SystemExit("--epochs must be >= 2 (the first epoch of the cached run fills the cache)")
    common.quiet_logs()
    logging.disable(logging.WARNING)
    threads = common.set_threads(args.threads)
    encoder_dir, name = common.resolve_encoder(args.encoder)
    encoder = dict(common.describe_encoder(encoder_dir), name=name, path=encoder_dir)
    print(f"Downstream feature cache: encoder {name}, tasks {args.tasks}, {args.train_size} utterances, "
          f"{args.epochs} epochs, torch threads {threads}, load average {common.load_average()}", flush=True)
    common.WORK_DIR.mkdir(parents=True, exist_ok=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="downstream-", dir=common.WORK_DIR) as work:
        for task in args.tasks:
            results.append(bench_task(task, encoder_dir, args, Path(work)))
    result = {"script": SCRIPT, "machine": common.machine(), "encoder": encoder,
              "settings": dict(vars(args), out=str(args.out), torch_threads=threads), "results": results}
    return common.finish(SCRIPT, result, print_tables, args.out)


if __name__ == "__main__":
    main()
