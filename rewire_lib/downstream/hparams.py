"""Loading a downstream recipe's hparams: `extends:` chains ending in recipes/common/downstream.yaml.

The chain (`rewired.yaml` -> `baseline.yaml` -> `../../common/downstream.yaml`, or a per-dataset file
-> `baseline.yaml` -> ...) is followed by `rewire_lib.recipe.resolve_extends`. Unlike a plain
hyperpyyaml override, a task file's key REPLACES the shared file's value and may add keys: a task
declares its own objects (`head: !name:...` with its arguments, its error-rate computer) next to the
shared ones. The merged YAML is then loaded by `rewire_lib.recipe.load_recipe` (command-line
overrides, which must name existing keys; DDP group; experiment folder with the merged
hyperparams.yaml as the complete record of the run).
"""
from __future__ import annotations

import io
import sys
import tempfile
from pathlib import Path
from dataclasses import dataclass
from typing import List, Optional

import ruamel.yaml

import speechbrain as sb

from rewire_lib.recipe import (HparamsError, create_experiment_directory, init_ddp_once, load_hparams_file,
                             resolve_extends)


def merged_yaml_text(hparams_file: str) -> str:
    """The shared file at the end of the `extends` chain with every key of the files above it replacing its own."""
    shared_file, task_doc = resolve_extends(hparams_file, "")
    yaml = ruamel.yaml.YAML()
    doc = yaml.load(shared_file.read_text())
    for key, value in task_doc.items():
        doc[key] = value
    out = io.StringIO()
    yaml.dump(doc, out)
    return out.getvalue()


@dataclass
class RunRecord:
    """What create_run_folder saves as the run's hyperparams.yaml: the merged YAML and the overrides."""
    hparams_file: str
    yaml_text: str
    overrides: dict


def load_hparams(hparams_file: str, overrides: str, run_opts: dict, schema: Optional[dict] = None):
    """`load_hyperpyyaml` of the merged `extends:` chain of `hparams_file` with the command-line
    `overrides` (which must name existing keys; types checked). Returns (hparams, RunRecord); nothing is
    written yet: the experiment folder is made by `create_run_folder`, once the run folder is checked."""
    if not Path(hparams_file).is_file():
        raise HparamsError(f"Hyperparameter file '{hparams_file}' does not exist "
                           "(usage: train.py hparams/<name>.yaml [--key value ...])")
    text = merged_yaml_text(hparams_file)
    with tempfile.TemporaryDirectory(prefix="hparams-") as folder:
        merged = Path(folder) / Path(hparams_file).name
        merged.write_text(text)
        hparams, _, override_dict = load_hparams_file(str(merged), overrides, run_opts, schema,
                                                      shown_name=hparams_file)  # errors name the user's file
    return hparams, RunRecord(hparams_file, text, override_dict)


def create_run_folder(hparams: dict, record: RunRecord) -> None:
    """SpeechBrain's experiment folder (log, env.log, hyperparams.yaml with every override applied) in
    `output_folder`, written after `prepare_run` so a refused run never overwrites the record of the run
    the folder holds."""
    with tempfile.TemporaryDirectory(prefix="hparams-") as folder:
        merged = Path(folder) / Path(record.hparams_file).name
        merged.write_text(record.yaml_text)
        create_experiment_directory(hparams, merged, record.overrides, record.hparams_file)


def load_hparams_from_argv(argv: Optional[List[str]] = None, schema: Optional[dict] = None):
    """The whole set-up in one call (for tests and tools): parse, DDP group, load, experiment folder.
    Recipes spell these steps out in their main(); returns (hparams, run_opts)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("--") or not Path(argv[0]).is_file():
        raise HparamsError(f"Hyperparameter file '{argv[0] if argv else ''}' does not exist "
                           "(usage: train.py hparams/<name>.yaml [--key value ...])")
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    init_ddp_once(run_opts)
    hparams, record = load_hparams(hparams_file, overrides, run_opts, schema)
    create_run_folder(hparams, record)
    return hparams, run_opts
