"""A run folder knows what made it: `run_stamp.json` records what defines a run (encoder fingerprint,
the manifests' content fingerprint, the settings that change results).

Which settings change results is declared once, by exclusion: every key of a recipe's merged hparams does,
and so does the precision, unless HARMLESS_KEYS names it (where files are, how the work is shown or
split, the budget). `result_settings` derives the run's settings from that; the stamp, result.json and a
rewired encoder's model card all record them, so a new YAML key is stamped and recorded without touching
any list, and a key that does not change results is added to HARMLESS_KEYS with its reason.

Why: recipes resume from the latest checkpoint in their output folder. Without a stamp, a run whose
data or settings changed silently resumed the old run's checkpoints and label encoders and reported
the old model (`--lr 0.5` "finished" in seconds with the lr 0.002 result). `check_run_folder` is
called before anything is loaded from the folder:

- no stamp yet, or a stamp but nothing trained (no checkpoint in save/, no result.json): the folder
  is (re)stamped and used;
- the same stamp: the folder is returned and the run resumes;
- a different stamp over checkpoints or results: `on_mismatch="error"` raises `RunFolderMismatch`
  naming the keys that differ, `on_mismatch="new"` returns a fresh sibling `<folder>-<8 hex>`
  (named after the new stamp, so the same changed command resumes there next time).

Only the main process writes (DDP). Every process reads the stamp, then all wait for each other before
anything is written, so all ranks see the same old stamp, take the same branch and meet the same barriers.
"""
from __future__ import annotations

import copy
import functools
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Dict

from speechbrain.utils.distributed import ddp_barrier, run_on_main

from rewire_lib.files.atomic import atomic_write_json

logger = logging.getLogger(__name__)

STAMP_FILE = "run_stamp.json"
# Keys of a recipe's hparams that do not change what a run computes (see the module docstring).
HARMLESS_KEYS = frozenset({
    # where things are: the encoder's weights and the manifests' content are fingerprinted instead
    "repo_root", "encoder", "rewire_results", "data_folder", "folds_dir", "folds", "corpus_folder", "prepare",
    "train_csv", "valid_csv", "test_csv", "data_root", "output_folder", "save_folder", "loss_csv", "train_log",
    "feature_cache_dir", "tts_cache_dir", "hub_datasets",
    # how the work is split, shown and kept: the same numbers either way
    "feature_cache", "num_threads", "num_workers", "tts_workers", "on_changed_run", "log_every_steps", "plot_smooth",
    "find_unused_parameters", "gradient_checkpointing", "eval_batch_size", "ckpt_interval_steps",
    "max_nonfinite_in_a_row", "checkpointer", "epoch_counter", "train_logger", "modules",
    "checkpoint_every_eval", "hold_dev_features", "hold_train_items", "plots",
    "pool_before_head", "pooled_eval_batch_size",  # the same linear arithmetic in another order (float rounding)
    # the budget and the evaluation cadence: the same run started again with a larger budget trains on from its
    # checkpoint (its patience counter included), with a smaller or spent one it stops at once
    "number_of_epochs", "max_steps", "patience", "eval_every_steps",
})
DEFAULT_PRECISION = "fp32"
ON_MISMATCH = ("error", "new")
_ABSENT = "<absent>"


class RunFolderMismatch(ValueError):
    """The output folder holds checkpoints or results of a run with a different stamp."""


def manifest_fingerprint(*csv_paths: str | os.PathLike) -> str:
    """sha256 of the manifests' bytes, in the order given (not of their names or modification times:
    touching or copying a manifest keeps its fingerprint, editing one row changes it)."""
    h = hashlib.sha256()
    for path in csv_paths:
        try:
            data = Path(path).read_bytes()
        except FileNotFoundError:
            raise FileNotFoundError(f"manifest {path} does not exist (needed for the run stamp)") from None
        h.update(f"{len(data)}:".encode())  # length prefix: the files' boundaries are part of the content
        h.update(data)
    return h.hexdigest()


def _plain(node: Any) -> Any:
    """A YAML node (ruamel round-trip) as plain JSON values: a tagged mapping or list keeps its tag under "!"
    (`head: !name:...ConvCTCHead {hidden_dim: 128}` -> {"!": "!name:...ConvCTCHead", "hidden_dim": 128}), a
    tagged scalar becomes "TAG VALUE" (`!ref <lr>`)."""
    tag = getattr(getattr(node, "tag", None), "value", None)
    if isinstance(node, dict):
        out = {str(k): _plain(v) for k, v in node.items()}
        return {"!": tag, **out} if tag else out
    if isinstance(node, (list, tuple)):
        items = [_plain(v) for v in node]
        return {"!": tag, "items": items} if tag else items
    if tag is not None and hasattr(node, "value"):
        return f"{tag} {node.value}".strip()
    if isinstance(node, bool) or node is None:
        return node
    for kind in (int, float, str):
        if isinstance(node, kind):
            return kind(node)
    return str(node)


def _flatten(prefix: str, value: Any, out: Dict[str, Any]) -> None:
    if isinstance(value, dict) and value:
        for k, v in value.items():
            _flatten(f"{prefix}.{k}", v, out)
    else:
        out[prefix] = value


@functools.lru_cache(maxsize=16)
def _plain_yaml(yaml_text: str) -> Dict[str, Any]:
    """The merged YAML's keys as plain values, parsed once per text (a study worker stamps hundreds of runs of
    the same few YAML texts; the parse was 12 ms a run). Callers copy it before changing it."""
    import ruamel.yaml

    doc = ruamel.yaml.YAML().load(yaml_text) or {}
    return {str(k): _plain(v) for k, v in doc.items()}


def result_settings(yaml_text: str, overrides: Dict[str, Any], run_opts: Dict[str, Any] | None = None) -> Dict[str, Any]:
    """Every setting of a run that changes its results, flattened (`lr`, `head.!`, `head.hidden_dim`, ...): the
    merged YAML under the command line's overrides, minus HARMLESS_KEYS, plus the `precision` run option."""
    values = copy.deepcopy(_plain_yaml(yaml_text))
    values.update({str(k): _plain(v) for k, v in (overrides or {}).items()})
    out: Dict[str, Any] = {}
    for key in sorted(values):
        if key not in HARMLESS_KEYS:
            _flatten(key, values[key], out)
    out["precision"] = (run_opts or {}).get("precision") or DEFAULT_PRECISION
    if (run_opts or {}).get("eval_precision"):
        out["eval_precision"] = run_opts["eval_precision"]
    return out


def _canonical(value: Any) -> Any:
    """The JSON form of a value (tuples -> lists, Paths -> str), as it reads back from run_stamp.json."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def settings_fingerprint(settings: Dict[str, Any]) -> str:
    """sha256 of the settings' canonical JSON (key order, tuple/list and Path/str do not matter)."""
    text = json.dumps(_canonical(settings), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _has_run(folder: Path) -> bool:
    save = folder / "save"
    return (folder / "result.json").is_file() or (save.is_dir() and any(save.iterdir()))


def _read_stamp(folder: Path) -> Dict[str, Any] | None:
    path = folder / STAMP_FILE
    if not path.is_file():
        return None
    try:
        stamp = json.loads(path.read_text(encoding="utf-8")).get("stamp")
    except (ValueError, AttributeError):
        stamp = None
    if not isinstance(stamp, dict):
        logger.warning("%s cannot be read as a run stamp; every key counts as changed", path)
        return {}
    return stamp


def _short(value: Any, width: int = 60) -> str:
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else value
    return text if len(text) <= width else text[: width - 3] + "..."


def stamp_differences(old: Dict[str, Any], new: Dict[str, Any]) -> Dict[str, tuple]:
    """key -> (old value, new value) for every key whose canonical value differs (absent keys included)."""
    old, new = _canonical(old), _canonical(new)
    return {k: (old.get(k, _ABSENT), new.get(k, _ABSENT)) for k in sorted(set(old) | set(new))
            if old.get(k, _ABSENT) != new.get(k, _ABSENT)}


def _write_stamp(folder: Path, stamp: Dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / STAMP_FILE, {"fingerprint": settings_fingerprint(stamp), "stamp": _canonical(stamp)})


def check_run_folder(output_folder: str | os.PathLike, stamp: Dict[str, Any], on_mismatch: str = "error") -> Path:
    """The folder this run may use (see the module docstring); stamps it when needed."""
    if on_mismatch not in ON_MISMATCH:
        raise ValueError(f"on_changed_run must be one of {list(ON_MISMATCH)}, got {on_mismatch!r}")
    folder = Path(output_folder)
    old = _read_stamp(folder)
    ddp_barrier()  # no rank writes before every rank has read
    if old is not None and not stamp_differences(old, stamp):
        return folder  # same run: resume
    if old is None or not _has_run(folder):
        run_on_main(_write_stamp, args=[folder, stamp])
        return folder
    changes = stamp_differences(old, stamp)
    if on_mismatch == "new":
        sibling = folder.with_name(f"{folder.name}-{settings_fingerprint(stamp)[:8]}")
        logger.warning("%s holds a run with other %s: this run goes to %s", folder, ", ".join(changes), sibling)
        return check_run_folder(sibling, stamp, on_mismatch="error")
    described = "; ".join(f"{k} {_short(a)} -> {_short(b)}" for k, (a, b) in changes.items())
    raise RunFolderMismatch(
        f"{folder} holds checkpoints/results of a different run ({described}): give another output_folder, "
        f"or on_changed_run: new (--on_changed_run new) to start this run in a fresh sibling folder")
