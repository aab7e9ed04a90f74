"""What every recipe's `train.py` does before training: parse the command line, load and check the
YAML, set up the experiment folder and DDP. Kept here so recipes stay short and identical in this."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import ruamel.yaml
import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml

from rewire_lib.outputs import check_writable, output_error
from rewire_lib.paths import REPO_ROOT

logger = logging.getLogger(__name__)


class HparamsError(ValueError):
    """A YAML file or command-line override is missing a key, names an unknown one, or has a wrong type."""


def _check_types(hparams: dict, schema: dict, hparams_file: str) -> None:
    for key, expected in schema.items():
        if key not in hparams:
            raise HparamsError(f"{hparams_file}: required key '{key}' is missing")
        value = hparams[key]
        if value is None and type(None) in (expected if isinstance(expected, tuple) else (expected,)):
            continue
        if isinstance(value, bool) and expected in (int, float):
            raise HparamsError(f"{hparams_file}: '{key}' must be a number, got {value!r}")
        if expected is float and isinstance(value, int):
            continue
        if not isinstance(value, expected):
            names = expected.__name__ if isinstance(expected, type) else " or ".join(t.__name__ for t in expected)
            raise HparamsError(f"{hparams_file}: '{key}' must be {names}, got {value!r} ({type(value).__name__})")


def _load_overrides(text: str):
    """Parse YAML text the way hyperpyyaml parses overrides (tags such as !ref kept for later)."""
    loaded = ruamel.yaml.YAML().load(text) if text and text.strip() else None
    return loaded if loaded is not None else ruamel.yaml.comments.CommentedMap()


def resolve_extends(hparams_file: str, cli_overrides: str):
    """Follow `extends: base.yaml` (relative to the file): returns (base file, merged overrides).

    A recipe's baseline.yaml/rewired.yaml or twin.yaml/neutral.yaml hold only what differs from
    their shared file; their keys are applied to it as overrides (which must name existing keys),
    then the command line's. Chains of `extends` are followed.
    """
    merged = _load_overrides(cli_overrides)
    current = Path(hparams_file)
    seen = set()
    while True:
        doc = _load_overrides(current.read_text())
        base = doc.pop("extends", None) if hasattr(doc, "pop") else None
        if base is None:
            return current, merged
        if current.resolve() in seen:
            raise HparamsError(f"{hparams_file}: 'extends' loops back to {current}")
        seen.add(current.resolve())
        for key, value in merged.items():
            doc[key] = value
        merged = doc
        current = (current.parent / str(base))
        if not current.is_file():
            raise HparamsError(f"{hparams_file}: extends '{base}', which does not exist ({current})")


def init_ddp_once(run_opts: dict) -> None:
    """SpeechBrain's `ddp_init_group` (a no-op outside torchrun), skipped when this process already
    joined a group: the study and the tests run several recipes in one process."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        sb.utils.distributed.ddp_init_group(run_opts)


def load_hparams_file(hparams_file: str, overrides: str, run_opts: dict, schema: dict | None = None,
                      shown_name: str | None = None):
    """`load_hyperpyyaml` of `hparams_file` (its `extends:` chain applied, `repo_root` injected) with the
    command-line `overrides`, then the checks: unknown or mistyped keys and values of the wrong type are
    errors naming the file (`shown_name`, default the file) and key, not a deep traceback.
    Returns (hparams, yaml_file_to_record, override_dict)."""
    shown = shown_name or hparams_file
    if not Path(hparams_file).is_file():
        raise HparamsError(f"Hyperparameter file '{shown}' does not exist")
    base_file, override_dict = resolve_extends(hparams_file, overrides)
    text = base_file.read_text()
    if "repo_root" in text and "repo_root" not in override_dict:
        override_dict["repo_root"] = str(REPO_ROOT)
    try:
        hparams = load_hyperpyyaml(text, override_dict)
    except KeyError as err:
        raise HparamsError(f"{shown}: {err.args[0] if err.args else err} "
                           "(is the key spelled as in the YAML file?)") from None
    except OSError as err:  # an object in the YAML (e.g. the Checkpointer) could not create its folder
        if err.filename is None:
            raise
        raise output_error(err, err.filename, f"{shown}: output_folder") from err
    _check_types(hparams, schema or {}, shown)
    apply_num_threads(hparams.get("num_threads"), shown)
    if (run_opts.get("device") or "cpu").startswith("cuda") and not torch.cuda.is_available():
        raise HparamsError("--device cuda was asked for but no GPU is visible; use --device cpu")
    return hparams, base_file, override_dict


def apply_num_threads(value, shown: str) -> None:
    """The recipe's `num_threads` key: torch's CPU threads for this run (0 or absent: torch's default).
    Set before any model is loaded, so that a recipe started by hand does not take every core."""
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise HparamsError(f"{shown}: num_threads must be a whole number >= 0 (0: torch's default), got {value!r}")
    if value and torch.get_num_threads() != value:
        torch.set_num_threads(value)


def create_experiment_directory(hparams: dict, yaml_file, override_dict: dict, shown_name: str = "") -> None:
    """SpeechBrain's `create_experiment_directory` after proving the folder writable (before any work,
    not after); hyperparams.yaml is saved with every override applied: a complete record of the run."""
    check_writable(hparams["output_folder"], f"{shown_name or yaml_file}: output_folder")
    sb.create_experiment_directory(experiment_directory=hparams["output_folder"],
                                   hyperparams_to_save=str(yaml_file), overrides=override_dict)


def load_recipe(argv: list[str] | None = None, schema: dict | None = None):
    """Parse `train.py HPARAMS.yaml [--key value ...]`, load and check the YAML (`load_hparams_file`),
    join the DDP group and create the experiment folder. `repo_root` is always injected so YAML paths
    resolve the same from the recipe's folder or the repository root.
    Returns (hparams, run_opts, hparams_file, overrides)."""
    argv = sys.argv[1:] if argv is None else argv
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    hparams, yaml_file, override_dict = load_hparams_file(hparams_file, overrides, run_opts, schema)
    init_ddp_once(run_opts)
    create_experiment_directory(hparams, yaml_file, override_dict, hparams_file)
    return hparams, run_opts, hparams_file, override_dict
