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
from typing import List, Optional

import ruamel.yaml

from rewire_lib.recipe import HparamsError, load_recipe, resolve_extends


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


def load_hparams(argv: Optional[List[str]] = None, schema: Optional[dict] = None):
    """`train.py HPARAMS.yaml [--key value ...]` -> (hparams, run_opts): sb.parse_arguments,
    load_hyperpyyaml with the overrides, ddp_init_group and create_experiment_directory (through
    `load_recipe`), on the merged chain of YAML files."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("--") or not Path(argv[0]).is_file():
        raise HparamsError(f"Hyperparameter file '{argv[0] if argv else ''}' does not exist "
                           "(usage: train.py hparams/<name>.yaml [--key value ...])")
    with tempfile.TemporaryDirectory(prefix="hparams-") as folder:
        merged = Path(folder) / Path(argv[0]).name  # errors name the file the user gave
        merged.write_text(merged_yaml_text(argv[0]))
        hparams, run_opts, _, _ = load_recipe([str(merged), *argv[1:]], schema)
    return hparams, run_opts
