"""`run_task(task)`: what every downstream recipe's train.py does, from the YAML to result.json.

Outputs in `output_folder`: curve.csv (step, epoch, train_loss, dev_loss, dev_<metric>..., wall_time_s,
eval_time_s), curve.png, result.json (test metric of the best-dev checkpoint, best dev metric and
step, learned layer weights, settings), layer_weights.png, the label encoders, save/ (checkpoints).
With `folds_dir` (ER on IEMOCAP), one sub-folder per fold and an average over folds at the top.
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import re
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import speechbrain as sb
import torch
from speechbrain.utils.distributed import if_main_process, run_on_main

from rewire_lib.dataio import BucketBatchSampler, audio_dataset, durations, filter_by_duration
from rewire_lib.downstream.brain import DownstreamBrain, RunState
from rewire_lib.downstream.feature_cache import FeatureCache, encoder_fingerprint
from rewire_lib.downstream.tasks import make_task, read_rows
from rewire_lib.encoder import SpeechEncoder
from rewire_lib.featurizer import WeightedLayerSum
from rewire_lib.logs import CSVLog, atomic_write_csv, plot_columns, plot_layer_weights, read_csv
from rewire_lib.paths import REPO_ROOT, cache_dir
from rewire_lib.recipe import HparamsError, load_recipe
from rewire_lib.subsets import nested_subset, subset_name

logger = logging.getLogger(__name__)

SCHEMA = {
    "encoder": str, "train_csv": str, "valid_csv": str, "test_csv": str, "output_folder": str,
    "number_of_epochs": int, "max_steps": (int, type(None)), "train_fraction": float, "seed": int,
    "freeze_encoder": bool, "batch_size": int, "lr": float, "eval_every_steps": int,
    "feature_cache": (str, type(None)),
}
DEFAULTS = {
    "data_root": None, "eval_batch_size": None, "subset_seed": 0, "layer": None,
    "finetune_top_layers": None, "freeze_cnn": True, "encoder_lr": 5e-5, "encoder_warmup_steps": 0,
    "feature_cache": "memory", "feature_cache_dir": None, "feature_cache_dtype": "float32",
    "specaugment": False, "beam_size": 0, "folds_dir": None, "folds": None, "max_grad_norm": 5.0,
    "max_nonfinite_in_a_row": 5, "max_duration": None,
}


# ---------------------------------------------------------------------- helpers used by the YAML
def encoder_tag(encoder: str) -> str:
    """Short folder-safe name for an encoder: `pretrained/tiny-hubert` -> `tiny-hubert`,
    `results/rewire/twin/encoder` -> `rewire-twin-encoder`, `facebook/wav2vec2-base` -> `facebook-wav2vec2-base`."""
    path = Path(str(encoder)).expanduser()
    try:
        parts = list(path.resolve().relative_to(REPO_ROOT).parts)
        if parts and parts[0] in ("pretrained", "results"):
            parts = parts[1:]
    except ValueError:
        parts = list(path.parts[-2:])
    tag = "-".join(p for p in parts if p not in ("/", "")) or "encoder"
    return re.sub(r"[^A-Za-z0-9._+-]", "_", tag)


def default_output_folder(results_dir: str, encoder: str, train_fraction: float, seed: int) -> str:
    """`<results_dir>/<encoder tag>/frac<F>/seed<S>`: baseline and rewired runs never share a folder."""
    return str(Path(results_dir) / encoder_tag(encoder) / f"frac{float(train_fraction):g}" / f"seed{int(seed)}")


# ---------------------------------------------------------------------- data
def select_train_csv(hp: dict, task, output_folder: Path) -> Path:
    """train_csv for train_fraction 1; else train_frac{F}.csv beside it; else the same nested subset
    made on the fly (rewire_lib.subsets.nested_subset, seed `subset_seed`) and written to the output folder."""
    fraction = float(hp["train_fraction"])
    train_csv = Path(hp["train_csv"])
    if not 0 < fraction <= 1:
        raise HparamsError(f"train_fraction must be in (0, 1], got {fraction}")
    if fraction >= 1.0:
        return train_csv
    beside = train_csv.with_name(subset_name(fraction=fraction))
    if beside.is_file():
        logger.info("train_fraction %g: using %s", fraction, beside)
        return beside
    target = output_folder / subset_name(fraction=fraction)

    def make():
        rows = read_rows(train_csv)
        keyed = [dict(r, _stratum=task.stratify_key(r)) for r in rows]
        stratify = "_stratum" if keyed and keyed[0]["_stratum"] is not None else None
        subset = nested_subset(keyed, fraction=fraction, seed=int(hp["subset_seed"]), stratify=stratify)
        atomic_write_csv(target, list(rows[0].keys()), subset)
        logger.info("train_fraction %g: %d of %d rows of %s -> %s", fraction, len(subset), len(rows), train_csv, target)

    run_on_main(make)
    return target


def make_dataset(csv_path, hp, task, use_cache: bool):
    ds = audio_dataset(csv_path, data_root=hp["data_root"])
    # too short for the encoder, or longer than max_duration: skipped, counted, listed in skipped_<split>.csv
    ds = filter_by_duration(ds, Path(hp["output_folder"]) / f"skipped_{Path(csv_path).stem}.csv",
                            max_duration=hp.get("max_duration"), what=str(csv_path))
    keys = task.add_pipelines(ds)
    ds.set_output_keys(["id", "wav" if use_cache else "sig"] + keys)
    return ds


def eval_loader(ds, batch_size: int):
    sampler = BucketBatchSampler(durations(ds), batch_size, shuffle=False, drop_last=False)
    return sb.dataio.dataloader.make_dataloader(ds, batch_sampler=sampler)


# ---------------------------------------------------------------------- encoder
def load_encoder(hp: dict):
    encoder = SpeechEncoder.from_pretrained(hp["encoder"], apply_spec_augment=False, layerdrop=0.0)
    trainable = not hp["freeze_encoder"]
    encoder.requires_grad_(False)
    if trainable:
        top = hp["finetune_top_layers"]
        layers = encoder.model.encoder.layers
        if top is None:
            encoder.requires_grad_(True)
            if hp["freeze_cnn"]:
                encoder.model.feature_extractor.requires_grad_(False)
        else:
            if not 1 <= int(top) <= len(layers):
                raise HparamsError(f"finetune_top_layers={top}: the encoder has {len(layers)} Transformer layers")
            for layer in layers[-int(top):]:
                layer.requires_grad_(True)
    return encoder, trainable


def check_encoder_identity(output_folder: Path, hp: dict, fingerprint: str) -> None:
    """Refuse to resume a folder whose checkpoints came from a different encoder."""
    path = output_folder / "encoder.json"
    if path.is_file() and (output_folder / "save").is_dir() and any((output_folder / "save").iterdir()):
        old = json.loads(path.read_text())
        if old.get("fingerprint") != fingerprint:
            raise HparamsError(
                f"{output_folder} holds a run with encoder {old.get('encoder')!r} (fingerprint "
                f"{old.get('fingerprint', '')[:12]}), not {hp['encoder']!r} ({fingerprint[:12]}): "
                "give another output_folder or delete that one.")

    def write():
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"encoder": hp["encoder"], "fingerprint": fingerprint}, indent=1) + "\n")
        os.replace(tmp, path)

    run_on_main(write)


# ---------------------------------------------------------------------- one run
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train_one(task_name: str, hp: dict, run_opts: dict) -> dict:
    t_start = time.time()
    output = Path(hp["output_folder"])
    output.mkdir(parents=True, exist_ok=True)
    seed_everything(int(hp["seed"]))
    task = make_task(task_name, hp)
    train_csv = select_train_csv(hp, task, output)
    task.setup_labels(hp["train_csv"], {"valid": hp["valid_csv"], "test": hp["test_csv"]}, output)

    encoder, trainable = load_encoder(hp)
    fingerprint = encoder_fingerprint(encoder)
    check_encoder_identity(output, hp, fingerprint)
    cache = None
    if not trainable and hp["feature_cache"] not in (None, "none", "off"):
        dtype = {"float32": torch.float32, "float16": torch.float16}[hp["feature_cache_dtype"]]
        folder = hp["feature_cache_dir"] or cache_dir() / "features"
        cache = FeatureCache(fingerprint, mode=hp["feature_cache"], cache_dir=folder, dtype=dtype,
                             settings={"sample_rate": 16000})

    use_cache = cache is not None
    train_set = make_dataset(train_csv, hp, task, use_cache)
    dev_set = make_dataset(hp["valid_csv"], hp, task, use_cache)
    test_set = make_dataset(hp["test_csv"], hp, task, use_cache)
    eval_bs = int(hp["eval_batch_size"] or hp["batch_size"])

    seed_everything(int(hp["seed"]))
    featurizer = WeightedLayerSum(encoder.num_layers, layer=hp["layer"])
    head = task.build_head(encoder.hidden_size)
    modules = {"featurizer": featurizer, "head": head}
    if trainable:
        modules["encoder"] = encoder
    counter = sb.utils.epoch_loop.EpochCounter(limit=int(hp["number_of_epochs"]))
    state = RunState()
    recoverables = {"featurizer": featurizer, "head": head, "counter": counter, "run_state": state}
    if trainable:
        recoverables["encoder"] = encoder
    checkpointer = sb.utils.checkpoints.Checkpointer(output / "save", recoverables=recoverables)

    metric = task.metric
    extra = {"wer": ["cer"], "accuracy": list(getattr(task, "slots", [])) and
             [f"{s}_accuracy" for s in task.slots]}.get(metric, [])
    fields = ["step", "epoch", "train_loss", "dev_loss", f"dev_{metric}"] + [f"dev_{e}" for e in extra] + \
             ["wall_time_s", "eval_time_s"]
    curve = CSVLog(output / "curve.csv", fields) if if_main_process() else None

    brain_hp = dict(hp, max_grad_norm=hp["max_grad_norm"])
    brain = DownstreamBrain(modules=modules, hparams=brain_hp, run_opts=run_opts, checkpointer=checkpointer,
                            task=task, encoder=encoder, cache=cache, curve=curve, run_state=state,
                            dev_loader=eval_loader(dev_set, eval_bs), eval_every_steps=int(hp["eval_every_steps"]),
                            encoder_trainable=trainable)
    brain.optimizer_step_limit = hp["max_steps"]
    sampler = BucketBatchSampler(durations(train_set), int(hp["batch_size"]), seed=int(hp["seed"]), drop_last=False,
                                 ddp_shard=True)  # DDP: each rank its slice of the same global batches
    brain.train_sampler = sampler
    brain.fit(counter, train_set, train_loader_kwargs={"batch_sampler": sampler})

    steps = int(brain.optimizer_step)
    train_time = float(state.train_time_s)
    best_score, best_step = state.best_score, state.best_step
    last_dev = dict(brain.last_dev)
    epochs = int(counter.current)
    key = {"max_key": "dev_key"} if task.higher_is_better else {"min_key": "dev_key"}
    brain.evaluate(test_set, test_loader_kwargs={"batch_sampler": BucketBatchSampler(
        durations(test_set), eval_bs, shuffle=False, drop_last=False)}, **key)
    test = brain.test_metrics
    test_step = int(brain.optimizer_step)  # the step of the best-dev checkpoint just loaded
    weights = featurizer.weights().detach().cpu().tolist()

    result = {
        "task": task_name, "metric": metric, "higher_is_better": task.higher_is_better, "metric_unit": "%",
        "encoder": hp["encoder"], "encoder_fingerprint": fingerprint, "train_fraction": float(hp["train_fraction"]),
        "seed": int(hp["seed"]), "train_csv_used": str(train_csv), "num_train": len(train_set),
        "num_dev": len(dev_set), "num_test": len(test_set), "steps": steps,
        "epochs": epochs, f"test_{metric}": test.get(metric),
        **{f"test_{k}": v for k, v in test.items() if k != metric},
        f"best_dev_{metric}": best_score, "best_dev_step": best_step,
        "last_dev": last_dev, "test_checkpoint": "best dev", "test_checkpoint_step": test_step,
        "layer_weights": weights, "wall_time_s": train_time, "epoch_times_s": brain.epoch_times, "total_time_s": time.time() - t_start,
        "feature_cache": cache.stats() if cache else None,
        "settings": {k: hp.get(k) for k in ("batch_size", "lr", "number_of_epochs", "max_steps",
                                            "eval_every_steps", "freeze_encoder", "finetune_top_layers",
                                            "encoder_lr", "encoder_warmup_steps", "layer", "specaugment",
                                            "beam_size", "feature_cache", "feature_cache_dtype", "subset_seed",
                                            "proj_dim", "lstm_hidden", "lstm_layers")},
    }
    if if_main_process():
        write_json(output / "result.json", result)
        plot_columns(output / "curve.csv", output / "curve.png", x="step",
                     ys=["train_loss", f"dev_{metric}"], title=f"{task_name.upper()} - {encoder_tag(hp['encoder'])}")
        plot_layer_weights(weights, output / "layer_weights.png",
                           title=f"{task_name.upper()} learned layer weights ({encoder_tag(hp['encoder'])})")
    logger.info("%s: test %s = %.3f (best dev %.3f at step %s), %d steps, %.1f s training",
                task_name, metric, test.get(metric, math.nan), best_score if best_score is not None else math.nan,
                best_step, steps, train_time)
    return result


def write_json(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=float) + "\n")
    os.replace(tmp, path)


# ---------------------------------------------------------------------- folds
def fold_names(hp: dict) -> List[str]:
    folder = Path(hp["folds_dir"])
    if hp["folds"]:
        names = [str(f) for f in hp["folds"]]
    else:
        names = sorted((p.name for p in folder.iterdir() if p.is_dir() and p.name.startswith("fold")),
                       key=lambda n: (len(n), n))
    for n in names:
        for split in ("train", "dev", "test"):
            if not (folder / n / f"{split}.csv").is_file():
                raise HparamsError(f"folds_dir {folder}: {n}/{split}.csv is missing")
    if not names:
        raise HparamsError(f"folds_dir {folder} has no fold* sub-folders")
    return names


def run_folds(task_name: str, hp: dict, run_opts: dict) -> dict:
    folder, output = Path(hp["folds_dir"]), Path(hp["output_folder"])
    results = {}
    for name in fold_names(hp):
        fold_hp = dict(hp, train_csv=str(folder / name / "train.csv"), valid_csv=str(folder / name / "dev.csv"),
                       test_csv=str(folder / name / "test.csv"), output_folder=str(output / name))
        results[name] = train_one(task_name, fold_hp, run_opts)
    first = next(iter(results.values()))
    metric = first["metric"]
    mean = lambda key: float(np.mean([r[key] for r in results.values()]))  # noqa: E731
    summary = dict(first)
    test_keys = [k for k in first if k.startswith("test_") and isinstance(first[k], (int, float))]
    summary.update({k: mean(k) for k in test_keys})
    summary.update({
        "folds": list(results), "fold_results": {n: {k: r[k] for k in test_keys + [f"best_dev_{metric}", "steps"]}
                                                 for n, r in results.items()},
        f"best_dev_{metric}": mean(f"best_dev_{metric}"), "steps": int(mean("steps")),
        "layer_weights": np.mean([r["layer_weights"] for r in results.values()], axis=0).tolist(),
        "wall_time_s": sum(r["wall_time_s"] for r in results.values()),
        "train_csv_used": [r["train_csv_used"] for r in results.values()],
        "averaged_over": "folds (test metric of each fold's best-dev checkpoint)",
    })
    if if_main_process():
        average_curves([output / n / "curve.csv" for n in results], output / "curve.csv")
        summary["best_dev_step"] = None
        write_json(output / "result.json", summary)
        plot_columns(output / "curve.csv", output / "curve.png", x="step", ys=["train_loss", f"dev_{metric}"],
                     title=f"{task_name.upper()} mean of {len(results)} folds")
        plot_layer_weights(summary["layer_weights"], output / "layer_weights.png",
                           title=f"{task_name.upper()} layer weights, mean of {len(results)} folds")
    return summary


def average_curves(paths: List[Path], out: Path) -> None:
    """Mean of the folds' curves at the steps every fold logged."""
    curves = [{r["step"]: r for r in read_csv(p)} for p in paths]
    fields = list(read_csv(paths[0])[0].keys()) if read_csv(paths[0]) else ["step"]
    steps = sorted(set.intersection(*(set(c) for c in curves)), key=float)
    rows = []
    for s in steps:
        row = {"step": s}
        for f in fields:
            if f == "step":
                continue
            vals = [float(c[s][f]) for c in curves if c[s].get(f) not in (None, "")]
            row[f] = f"{np.mean(vals):.6f}" if vals else ""
        rows.append(row)
    atomic_write_csv(out, fields, rows)


# ---------------------------------------------------------------------- entry point
def run_task(task_name: str, argv: Optional[List[str]] = None) -> dict:
    """Parse `train.py HPARAMS.yaml [--key value ...]`, train, test, write the outputs; returns result.json's dict."""
    hp, run_opts, _, _ = load_recipe(argv, SCHEMA)
    hp = {**DEFAULTS, **hp}
    if hp["folds_dir"]:
        return run_folds(task_name, hp, run_opts)
    return train_one(task_name, hp, run_opts)
