"""A run folder knows what made it: `run_stamp.json` records what defines a run (encoder fingerprint,
the manifests' content fingerprint, the settings that change results).

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

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Dict

from speechbrain.utils.distributed import ddp_barrier, run_on_main

from rewire_lib.atomic import atomic_write_json

logger = logging.getLogger(__name__)

STAMP_FILE = "run_stamp.json"
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


def _short(value: Any, width: int = 24) -> str:
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
