"""The data side every downstream recipe's `dataio_prep` shares: the manifests' existence, the
training subset (`train_fraction`), audio loading with the length policy, and output keys.

Manifest columns: every task needs `ID`, `duration` and `wav`; then its own column(s):
`label` (KS, SID, ER; the key `label_column` names it), `action`/`object`/`location` (IC; key `slots`),
`wrd` (ASR), `phn` (PR, space-separated phonemes). Other columns are ignored.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Dict, Iterable, Optional

from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.utils.distributed import run_on_main

from rewire_lib.data.dataio import audio_dataset, filter_by_duration
from rewire_lib.data.manifest import read_manifest
from rewire_lib.data.subsets import nested_subset, subset_name
from rewire_lib.files.logs import atomic_write_csv
from rewire_lib.training.recipe import HparamsError

logger = logging.getLogger(__name__)

SPLITS = {"train": "train_csv", "valid": "valid_csv", "test": "test_csv"}
PREPARE_ALL = "python data_prep/prepare_all.py"


class ManifestMissingError(HparamsError, FileNotFoundError):
    """A manifest a recipe needs does not exist; the message names it and the command that makes it."""


def prepare_data(hparams: dict) -> None:
    """Run the per-dataset preparer (`prepare`, with `corpus_folder` -> `data_folder`) on the main process
    when the hparams name one; then the manifests must exist (an error names the command that makes them)."""
    prepare: Optional[Callable] = hparams["prepare"]
    if prepare is not None:
        if not hparams["corpus_folder"]:
            raise HparamsError("this hparams file prepares its manifests from the corpus as published: "
                               "give --corpus_folder <the corpus folder>")
        run_on_main(prepare, kwargs={"data_folder": hparams["corpus_folder"], "save_folder": hparams["data_folder"],
                                     "seed": int(hparams["subset_seed"])})
    if hparams.get("folds_dir"):  # ER (IEMOCAP sessions), ASR and PR (connected-digit speakers)
        return  # checked fold by fold (rewire_lib.downstream.run.fold_names)
    require_manifests(hparams)


def require_manifests(hparams: dict, keys: Iterable[str] = SPLITS.values()) -> None:
    how = (f"the preparer {getattr(hparams['prepare'], '__module__', '')} did not write it"
           if hparams["prepare"] is not None else f"make the manifests with `{PREPARE_ALL}`")
    for key in keys:
        path = Path(hparams[key])
        if not path.is_file():
            raise ManifestMissingError(f"{key} {path} does not exist: {how}, or point --data_folder "
                                       f"(or --{key}) at yours")


def select_train_csv(hparams: dict, stratify_key: Optional[Callable[[dict], str]] = None) -> Path:
    """train_csv for train_fraction 1; else train_frac{F}.csv beside it; else the same nested subset made
    on the fly (seed `subset_seed`, stratified by `stratify_key(row)`) and written to the output folder."""
    fraction = float(hparams["train_fraction"])
    train_csv = Path(hparams["train_csv"])
    if not 0 < fraction <= 1:
        raise HparamsError(f"train_fraction must be in (0, 1], got {fraction}")
    if fraction >= 1.0:
        return train_csv
    beside = train_csv.with_name(subset_name(fraction=fraction))
    if beside.is_file():
        logger.info("train_fraction %g: using %s", fraction, beside)
        return beside
    target = Path(hparams["output_folder"]) / subset_name(fraction=fraction)

    def make():
        rows = read_manifest(train_csv, required=("ID",))  # wav resolved: the subset lives in another folder
        keyed = [dict(r, _stratum=stratify_key(r) if stratify_key else None) for r in rows]
        subset = nested_subset(keyed, fraction=fraction, seed=int(hparams["subset_seed"]),
                               stratify="_stratum" if stratify_key else None)
        atomic_write_csv(target, list(rows[0].keys()), subset)
        logger.info("train_fraction %g: %d of %d rows of %s -> %s", fraction, len(subset), len(rows), train_csv, target)

    run_on_main(make)
    return target


def split_datasets(hparams: dict, stratify_key: Optional[Callable[[dict], str]] = None) -> Dict[str, DynamicItemDataset]:
    """{"train", "valid", "test"}: DynamicItemDatasets with `sig` (16 kHz audio of `wav`), utterances
    outside the length policy skipped (counted, listed in skipped_<split>.csv). `csv_path` is set on each."""
    paths = {"train": select_train_csv(hparams, stratify_key), "valid": Path(hparams["valid_csv"]),
             "test": Path(hparams["test_csv"])}
    datasets = {}
    for split, path in paths.items():
        ds = audio_dataset(path, data_root=hparams["data_root"])
        ds = filter_by_duration(ds, Path(hparams["output_folder"]) / f"skipped_{path.stem}.csv",
                                max_duration=hparams["max_duration"], what=str(path))
        ds.csv_path = path
        datasets[split] = ds
    return datasets

