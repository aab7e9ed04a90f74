"""What every recipe's `train.py` does before training: parse the command line, load and check the
YAML, set up the experiment folder and DDP. Kept here so recipes stay short and identical in this."""
from __future__ import annotations

import io
import logging
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import ruamel.yaml
import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml

from rewire_lib.files.outputs import check_writable, output_error
from rewire_lib.files.paths import REPO_ROOT
from rewire_lib.training.cpu_memory import bound_kernel_cache
from rewire_lib.training.run_stamp import result_settings

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


def extends_chain(hparams_file: str) -> list:
    """The files of `hparams_file`'s `extends:` chain, the file itself first, the shared file last."""
    chain, current = [], Path(hparams_file)
    while True:
        if current.resolve() in {c.resolve() for c in chain}:
            raise HparamsError(f"{hparams_file}: 'extends' loops back to {current}")
        chain.append(current)
        base = _load_overrides(current.read_text()).get("extends")
        if base is None:
            return chain
        current = current.parent / str(base)
        if not current.is_file():
            raise HparamsError(f"{hparams_file}: extends '{base}', which does not exist ({current})")


def merged_hparams_text(hparams_file: str) -> str:
    """The YAML a recipe runs: the shared file at the end of the `extends:` chain, each file above it replacing
    its keys and adding its own (a task declares its head next to the shared objects; a view file sets `view`).
    One rule for every recipe; the command line's overrides are applied on top by hyperpyyaml, and those must
    name existing keys. Kept per process while no file of the chain changes (`_MERGED`)."""
    key = str(Path(hparams_file).resolve())
    known = _MERGED.get(key)
    if known is not None and known[0] == _files_signature(known[1]):
        return known[2]
    chain = extends_chain(hparams_file)
    text = _merge_chain(chain)
    _MERGED[key] = (_files_signature(chain), chain, text)
    return text


# hparams file -> (its chain's signature, the chain, the merged text): a study worker loads the same YAML for
# each of its hundreds of runs, and parsing the chain twice with ruamel cost 30 ms a run
_MERGED: dict = {}


def _files_signature(paths: list) -> tuple:
    """The files' bytes: reading three small files is cheap, parsing them is what costs (a modification time
    can miss an edit made within the clock's granularity)."""
    try:
        return tuple((str(path), Path(path).read_bytes()) for path in paths)
    except OSError:
        return ()


def _merge_chain(chain: list) -> str:
    yaml = ruamel.yaml.YAML()
    doc = yaml.load(chain[-1].read_text())
    for path in reversed(chain[:-1]):
        for key, value in _load_overrides(path.read_text()).items():
            if key != "extends":
                doc[key] = value
    out = io.StringIO()
    yaml.dump(doc, out)
    return out.getvalue()


def hparams_value(hparams_file: str, key: str, cli_overrides: str = ""):
    """One key's value as a recipe would see it, without building any object (unresolved tags stay as text)."""
    merged = _load_overrides(merged_hparams_text(hparams_file))
    merged.update(_load_overrides(cli_overrides))
    return merged.get(key)


def unwrap_ddp(module: torch.nn.Module) -> torch.nn.Module:
    """The module itself under a DDP (or DataParallel) wrapper, which SpeechBrain puts around trainable modules:
    its own attributes and methods (a featurizer's weights, an encoder's save_pretrained) are on the inner one."""
    parallel = (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)
    return module.module if isinstance(module, parallel) else module


def init_ddp_once(run_opts: dict) -> None:
    """SpeechBrain's `ddp_init_group` (a no-op outside torchrun), skipped when this process already
    joined a group: the study and the tests run several recipes in one process."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        sb.utils.distributed.ddp_init_group(run_opts)


@dataclass
class RunRecord:
    """What `create_run_folder` saves as the run's hyperparams.yaml: the merged YAML and the overrides."""
    hparams_file: str
    yaml_text: str
    overrides: dict


def load_hparams(hparams_file: str, overrides: str, run_opts: dict, schema: dict | None = None):
    """`load_hyperpyyaml` of `hparams_file`'s merged `extends:` chain (`merged_hparams_text`, `repo_root`
    injected) with the command-line `overrides`, then the checks: unknown or mistyped keys and values of the
    wrong type are errors naming the file and key, not a deep traceback. Nothing is written yet (the folder is
    made by `create_run_folder`). Returns (hparams, RunRecord)."""
    if not Path(hparams_file).is_file():
        raise HparamsError(f"Hyperparameter file '{hparams_file}' does not exist "
                           "(usage: train.py hparams/<name>.yaml [--key value ...])")
    text = merged_hparams_text(hparams_file)
    override_dict = _load_overrides(overrides)
    if "repo_root" in text and "repo_root" not in override_dict:
        override_dict["repo_root"] = str(REPO_ROOT)
    try:
        hparams = load_hyperpyyaml(text, override_dict)
    except KeyError as err:
        raise HparamsError(f"{hparams_file}: {err.args[0] if err.args else err} "
                           "(is the key spelled as in the YAML file?)") from None
    except OSError as err:  # an object in the YAML (e.g. the Checkpointer) could not create its folder
        if err.filename is None:
            raise
        raise output_error(err, err.filename, f"{hparams_file}: output_folder") from err
    _check_types(hparams, schema or {}, hparams_file)
    apply_num_threads(hparams.get("num_threads"), hparams_file)
    bound_kernel_cache()  # before any model runs (rewire_lib.training.cpu_memory)
    if (run_opts.get("device") or "cpu").startswith("cuda") and not torch.cuda.is_available():
        raise HparamsError("--device cuda was asked for but no GPU is visible; use --device cpu")
    # every result-changing setting, derived once (rewire_lib.training.run_stamp): the stamp, result.json, model card
    hparams["run_settings"] = result_settings(text, override_dict, run_opts)
    return hparams, RunRecord(hparams_file, text, dict(override_dict))


def apply_num_threads(value, shown: str) -> None:
    """The recipe's `num_threads` key: torch's CPU threads for this run (0 or absent: torch's default).
    Set before any model is loaded, so that a recipe started by hand does not take every core."""
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise HparamsError(f"{shown}: num_threads must be a whole number >= 0 (0: torch's default), got {value!r}")
    if value and torch.get_num_threads() != value:
        torch.set_num_threads(value)


def create_run_folder(hparams: dict, record: RunRecord) -> None:
    """SpeechBrain's `create_experiment_directory` (log, env.log, hyperparams.yaml with every override applied:
    a complete record of the run) after proving the folder writable, before any work."""
    check_writable(hparams["output_folder"], f"{record.hparams_file}: output_folder")
    # SpeechBrain copies the record from a file: the merged text goes through one temporary file
    with tempfile.TemporaryDirectory(prefix="hparams-") as folder:
        merged = Path(folder) / Path(record.hparams_file).name
        merged.write_text(record.yaml_text)
        sb.create_experiment_directory(experiment_directory=hparams["output_folder"],
                                       hyperparams_to_save=str(merged), overrides=record.overrides)


def load_recipe(argv: list[str] | None = None, schema: dict | None = None):
    """The whole set-up in one call, for recipes without a run folder of their own to check first (rewiring,
    pre-training) and for tools and tests: parse `train.py HPARAMS.yaml [--key value ...]`, join the DDP group,
    load and check the YAML (`load_hparams`), create the experiment folder.
    Returns (hparams, run_opts, hparams_file, overrides)."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0].startswith("--"):
        raise HparamsError("usage: train.py hparams/<name>.yaml [--key value ...]")
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    init_ddp_once(run_opts)
    hparams, record = load_hparams(hparams_file, overrides, run_opts, schema)
    create_run_folder(hparams, record)
    return hparams, run_opts, hparams_file, record.overrides
