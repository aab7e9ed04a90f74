"""Around a downstream recipe's run: output-folder names, the checks made before anything is trained
(encoder present, run folder matches), ER's folds, and one-line errors for the command line.

Outputs in `output_folder` (written by `DownstreamBrain`): curve.csv (step, epoch, train_loss, dev_loss,
dev_<metric>..., wall_time_s, eval_time_s), curve.png, result.json (test metric of the best-dev
checkpoint, best dev metric and step, learned layer weights, settings), layer_weights.png, the label
encoder / tokenizer, save/ (checkpoints). With `folds_dir` (ER on IEMOCAP; ASR/PR on connected-digit speakers), one sub-folder per fold
and an average over folds at the top.
"""
from __future__ import annotations

import logging
import re
import sys
from pathlib import Path
from typing import Callable, List, Optional

import numpy as np
from speechbrain.utils.distributed import if_main_process

from rewire_lib.data.manifest import split_csv
from rewire_lib.downstream.feature_cache import FeatureCachePool
from rewire_lib.files.atomic import atomic_write_json
from rewire_lib.files.logs import atomic_write_csv, plot_columns, plot_layer_weights, read_csv
from rewire_lib.files.paths import REPO_ROOT
from rewire_lib.training import run_stamp
from rewire_lib.training.recipe import HparamsError

logger = logging.getLogger(__name__)

# Keys every downstream YAML must have, with their types (checked by rewire_lib.training.recipe.load_hparams).
SCHEMA = {
    "encoder": str, "train_csv": str, "valid_csv": str, "test_csv": str, "output_folder": str,
    "number_of_epochs": int, "max_steps": (int, type(None)), "patience": (int, type(None)), "train_fraction": float, "seed": int,
    "freeze_encoder": bool, "freeze_cnn": bool, "batch_size": int, "lr": float, "eval_every_steps": int,
    "feature_cache": (str, type(None)), "feature_cache_dtype": str, "specaugment": bool,
    "encoder_spec_augment": bool, "encoder_layerdrop": float, "on_changed_run": str,
    "feature_transform": str, "feature_transform_shrinkage": float,
    "checkpoint_every_eval": bool, "hold_dev_features": bool, "hold_train_items": bool,
    "pool_before_head": bool, "pooled_eval_batch_size": int, "plots": bool,
}
REWIRE_COMMAND = "python recipes/rewire/train.py recipes/rewire/hparams/{view}.yaml"


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


def require_encoder(encoder: str, rewire_results: str) -> str:
    """`encoder` unchanged if it can be loaded from; a rewired encoder that is not there yet is a one-line
    error naming the rewiring command that writes it (the YAML calls this before loading the encoder)."""
    path = Path(str(encoder)).expanduser()
    results = Path(str(rewire_results)).expanduser()
    if path.exists():
        return encoder
    try:
        view = path.resolve().relative_to(results.resolve()).parts[0]
    except (ValueError, IndexError):
        return encoder  # a hub id or another folder: SpeechEncoder.from_pretrained says what is wrong
    raise HparamsError(f"rewired encoder {path} does not exist yet: make it with `{REWIRE_COMMAND.format(view=view)}` "
                       f"(or the study, run_all.sh), or point --rewire_results at a folder holding {view}/encoder")


# ---------------------------------------------------------------------- before training
def prepare_run(hparams: dict) -> None:
    """What a recipe does before reading its data: the per-dataset preparer (on the main process) and
    the manifests' existence (`data.prepare_data`), then the run-folder check, which may move
    `output_folder` (and the checkpointer) to a fresh folder. Sets hparams["encoder_fingerprint"]."""
    from rewire_lib.downstream.data import prepare_data
    from rewire_lib.downstream.feature_cache import encoder_fingerprint

    prepare_data(hparams)
    if hparams.get("folds_dir"):  # ER, ASR, PR
        return  # each fold is its own run, checked when it starts
    hparams["encoder_fingerprint"] = encoder_fingerprint(hparams["encoder_model"])
    # every result-changing key (rewire_lib.training.run_stamp.result_settings); the budget is not among them: the same run
    # started again with a larger one trains on from its checkpoint, with a smaller or spent one it stops at once
    folder = check_run_folder(hparams, hparams["encoder_fingerprint"], hparams["run_settings"])
    if folder != Path(hparams["output_folder"]):
        logger.info("output_folder %s holds another run: this one goes to %s", hparams["output_folder"], folder)
        hparams["output_folder"] = str(folder)
        hparams["checkpointer"].checkpoints_dir = folder / "save"
        (folder / "save").mkdir(parents=True, exist_ok=True)


def check_run_folder(hparams: dict, fingerprint: str, stamp_settings: dict) -> Path:
    """The folder this run may use (rewire_lib.training.run_stamp): a folder whose checkpoints came from another
    encoder, other manifests or other settings is refused (`on_changed_run: error`) or left for a fresh
    sibling (`new`)."""
    stamp = {"encoder_fingerprint": fingerprint,
             "manifests": run_stamp.manifest_fingerprint(hparams["train_csv"], hparams["valid_csv"], hparams["test_csv"]),
             **stamp_settings}
    return Path(run_stamp.check_run_folder(hparams["output_folder"], stamp, hparams["on_changed_run"]))


# ---------------------------------------------------------------------- folds
def fold_names(folds_dir: str, folds: Optional[list]) -> List[str]:
    folder = Path(folds_dir)
    if not folder.is_dir():
        raise HparamsError(f"folds_dir {folder} does not exist (folds: python data_prep/iemocap.py ... for IEMOCAP, "
                           "python data_prep/prepare_all.py for data/fsdd/connected/folds)")
    if folds:
        names = [str(f) for f in folds]
    else:
        names = sorted((p.name for p in folder.iterdir() if p.is_dir() and p.name.startswith("fold")),
                       key=lambda n: (len(n), n))
    for n in names:
        for split in ("train", "dev", "test"):  # dev.csv or valid.csv
            if not Path(split_csv(folder / n, split, must_exist=False)).is_file():
                raise HparamsError(f"folds_dir {folder}: {n}/{split}.csv is missing")
    if not names:
        raise HparamsError(f"folds_dir {folder} has no fold* sub-folders")
    return names


def run_folds(hparams: dict, argv: List[str], train_one: Callable[..., dict],
              feature_caches: Optional[FeatureCachePool] = None) -> dict:
    """One run per fold (`train_one(argv + the fold's manifests and output folder, feature_caches=...)`), then
    result.json, curve.csv/png and layer_weights.png at the top with the mean over folds. The folds share
    their feature caches (each utterance is in several folds): the caller's pool (a study group's), else
    one of their own, dropped when the last fold ends."""
    folder, output = Path(hparams["folds_dir"]), Path(hparams["output_folder"])
    pool = feature_caches if feature_caches is not None else FeatureCachePool()
    results = {}
    try:
        for name in fold_names(hparams["folds_dir"], hparams["folds"]):
            fold = folder / name
            results[name] = train_one(with_overrides(argv, {
                "folds_dir": "null", "train_csv": fold / "train.csv", "valid_csv": split_csv(fold, "dev"),
                "test_csv": fold / "test.csv", "output_folder": output / name}), feature_caches=pool)
    finally:
        if feature_caches is None:
            pool.clear()
    first = next(iter(results.values()))
    metric = first["metric"]
    mean = lambda key: float(np.mean([r[key] for r in results.values()]))  # noqa: E731
    summary = dict(first)
    test_keys = [k for k in first if k.startswith("test_") and isinstance(first[k], (int, float))]
    summary.update({k: mean(k) for k in test_keys})
    summary.update({
        "folds": list(results),
        "fold_results": {n: {k: r.get(k) for k in test_keys + [f"best_dev_{metric}", "steps", "stop_reason"]}
                         for n, r in results.items()},
        "stop_reason": folds_stop_reason([r.get("stop_reason") for r in results.values()]),
        f"best_dev_{metric}": mean(f"best_dev_{metric}"), "best_dev_step": None, "steps": int(mean("steps")),
        "steps_run": int(mean("steps")),
        "layer_weights": np.mean([r["layer_weights"] for r in results.values()], axis=0).tolist(),
        "wall_time_s": sum(r["wall_time_s"] for r in results.values()),
        "train_csv_used": [r["train_csv_used"] for r in results.values()],
        "averaged_over": "folds (test metric of each fold's best-dev checkpoint)",
    })
    if if_main_process():
        task = first["task"].upper()
        average_curves([output / n / "curve.csv" for n in results], output / "curve.csv")
        atomic_write_json(output / "result.json", summary, default=float)
    if if_main_process() and hparams.get("plots", True):
        plot_columns(output / "curve.csv", output / "curve.png", x="step", ys=["train_loss", f"dev_{metric}"],
                     title=f"{task} mean of {len(results)} folds")
        plot_layer_weights(summary["layer_weights"], output / "layer_weights.png",
                           title=f"{task} layer weights, mean of {len(results)} folds")
    return summary


def folds_stop_reason(reasons: List[Optional[str]]) -> Optional[str]:
    """One stop_reason for a fold average: "cap" if any fold hit the step cap (the average then mixes a run
    that was still improving), else "epochs" if any ran out of epochs, else "patience"."""
    for reason in ("cap", "epochs", "patience"):
        if reason in reasons:
            return reason
    return None


def with_overrides(argv: List[str], updates: dict) -> List[str]:
    """argv with `--key value` (or `--key=value`) pairs for the keys in `updates` replaced by theirs."""
    out, i = [], 0
    while i < len(argv):
        key = argv[i][2:].split("=", 1)[0] if argv[i].startswith("--") else None
        if key in updates:
            i += 1 if "=" in argv[i] else 2
            continue
        out.append(argv[i])
        i += 1
    for key, value in updates.items():
        out += [f"--{key}", str(value)]
    return out


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


# ---------------------------------------------------------------------- command line
def run_as_script(main: Callable[[], dict]) -> None:
    """`main()`, with the errors a user can fix (missing manifest or encoder, bad key or label, bad
    manifest) printed as one line instead of a traceback."""
    from rewire_lib.data.dataio import ManifestFormatError
    from rewire_lib.downstream.labels import LabelError
    from rewire_lib.models.encoder import EncoderLoadError

    try:
        main()
    except (HparamsError, LabelError, ManifestFormatError, EncoderLoadError, run_stamp.RunFolderMismatch) as err:
        sys.exit(f"error: {err}")
