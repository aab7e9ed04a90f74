"""SpeechBrain CSV manifests: validate what a preparer lists, write atomically, read with checks.

Columns: `ID,duration,wav` required, then usually `spk_id,sample_rate,channels` and the task's
columns (`wrd`, `phn`, `label`, `action,object,location`). `wav` is an absolute path or starts
with `$data_root/` (SpeechBrain replacement; pass `data_root=` here or `replacements` to
`DynamicItemDataset.from_csv`).

Every preparer goes through `validate_entries` (file exists, readable audio, not empty; records
duration, sample rate, channels) and reports failures with `report_failures` (logged count and
`<save_folder>/skipped.csv` with file and reason) -- nothing is dropped silently.
"""
from __future__ import annotations

import csv
import logging
import os
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from tqdm import tqdm

from rewire_lib.audio import AudioError, audio_info
from rewire_lib.logs import atomic_write_csv
from rewire_lib.outputs import output_error

log = logging.getLogger(__name__)

REQUIRED = ("ID", "duration", "wav")
LEADING = ("ID", "duration", "wav", "spk_id", "sample_rate", "channels")
DATA_ROOT = "$data_root"

Row = Dict[str, object]
Failure = Tuple[str, str, str]  # (ID or "", file, reason)


class ManifestError(ValueError):
    """A manifest is malformed; the message names the file, line and column."""


def resolve_wav(wav: str, data_root: Optional[os.PathLike] = None) -> str:
    """Absolute path of a `wav` field, substituting `$data_root`."""
    if wav.startswith(DATA_ROOT):
        if data_root is None:
            raise ManifestError(f"wav path {wav!r} uses {DATA_ROOT} but no data_root was given")
        return str(Path(data_root) / wav[len(DATA_ROOT):].lstrip("/"))
    return wav


MIN_DURATION = 400 / 16000  # the speech encoders' receptive field (400 samples at 16 kHz)


def _content_problem(path: str) -> Optional[str]:
    """Read the samples: a reason if they are unreadable, non-finite or all zero, else None."""
    try:
        import numpy as np
        import soundfile as sf

        data, _ = sf.read(path, dtype="float32", always_2d=True)
    except Exception as exc:  # noqa: BLE001 -- any decoder error is a reason to skip, with its text
        return f"unreadable audio ({exc})"
    if not np.isfinite(data).all():
        return "non-finite samples (NaN or Inf)"
    if data.size and not np.abs(data).max() > 0:
        return "all-silent audio (every sample is 0)"
    return None


def validate_entries(rows: Iterable[Row], data_root: Optional[os.PathLike] = None,
                     min_duration: float = MIN_DURATION, desc: str = "validating audio", progress: bool = True,
                     check_content: bool = True) -> Tuple[List[Row], List[Failure]]:
    """Check each row's `wav`; returns (kept rows, failures).

    Kept rows get `duration` (s, 4 decimals), `sample_rate` and `channels` filled in (a
    `duration` the preparer already set, e.g. for a segment, is kept). Failures are
    (ID, file, reason) for missing, unreadable, truncated, empty audio, audio shorter than
    `min_duration` (default: the encoders' receptive field, 25 ms), duplicate IDs and, with
    `check_content` (reads every file), non-finite or all-silent samples.
    """
    rows = list(rows)
    kept: List[Row] = []
    failures: List[Failure] = []
    seen = set()
    for row in tqdm(rows, desc=desc, disable=not progress or len(rows) < 200, leave=False):
        uid = str(row.get("ID", ""))
        wav = str(row.get("wav", ""))
        if not uid:
            failures.append(("", wav, "row has no ID"))
            continue
        if uid in seen:
            failures.append((uid, wav, "duplicate ID"))
            continue
        try:
            info = audio_info(resolve_wav(wav, data_root))
        except AudioError as exc:
            failures.append((uid, wav, exc.reason))
            continue
        if info.frames == 0:
            failures.append((uid, wav, "empty audio (0 samples)"))
            continue
        duration = float(row["duration"]) if row.get("duration") not in (None, "") else info.duration
        if duration < min_duration or duration <= 0:
            failures.append((uid, wav, f"too short ({duration:.4f} s < {min_duration:.4f} s, the encoders' "
                                       "receptive field)"))
            continue
        if check_content:
            problem = _content_problem(resolve_wav(wav, data_root))
            if problem:
                failures.append((uid, wav, problem))
                continue
        seen.add(uid)
        out = dict(row)
        out["duration"] = f"{duration:.4f}"
        out["sample_rate"] = info.sample_rate
        out["channels"] = info.channels
        kept.append(out)
    return kept, failures


def report_failures(save_folder: os.PathLike, failures: Sequence[Failure], what: str = "",
                    name: str = "skipped.csv") -> Path:
    """Log a count of failures (and the first few) and write them to `<save_folder>/skipped.csv`
    (ID,file,reason; written even when empty so a run leaves a record)."""
    path = Path(save_folder) / name
    label = f" ({what})" if what else ""
    if failures:
        log.warning("%d entr%s skipped%s; see %s", len(failures), "y" if len(failures) == 1 else "ies", label, path)
        for uid, f, reason in list(failures)[:5]:
            log.warning("  skipped %s %s: %s", uid, f, reason)
    _atomic_write_csv(path, ["ID", "file", "reason"], [dict(ID=u, file=f, reason=r) for u, f, r in failures])
    return path


def _columns(rows: Sequence[Row], columns: Optional[Sequence[str]]) -> List[str]:
    if columns is not None:
        return list(columns)
    present: List[str] = []
    for row in rows:
        for key in row:
            if key not in present:
                present.append(key)
    lead = [c for c in LEADING if c in present]
    return lead + [c for c in present if c not in lead]


def _atomic_write_csv(path: Path, columns: Sequence[str], rows: Iterable[Row]) -> None:
    """Crash-safe CSV write; an OSError (disk full, read-only, ...) becomes one line naming the file."""
    try:
        atomic_write_csv(path, columns, rows)
    except OSError as err:
        raise output_error(err, path, "manifest") from err


def write_manifest(path: os.PathLike, rows: Sequence[Row], columns: Optional[Sequence[str]] = None) -> Path:
    """Write rows as a SpeechBrain CSV (ID, duration, wav, spk_id, sample_rate, channels first,
    then the other columns in first-seen order), atomically. Returns the path."""
    rows = list(rows)
    cols = _columns(rows, columns)
    missing = [c for c in REQUIRED if c not in cols]
    if missing:
        raise ManifestError(f"{path}: cannot write a manifest without column(s) {missing}")
    path = Path(path)
    _atomic_write_csv(path, cols, rows)
    return path


def read_manifest(path: os.PathLike, required: Sequence[str] = REQUIRED,
                  data_root: Optional[os.PathLike] = None) -> List[Dict[str, str]]:
    """Read a manifest as a list of dicts, checking required columns, non-empty required fields,
    numeric positive durations and unique IDs. `data_root` substitutes `$data_root` in `wav`."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in required if c not in header]
        if missing:
            raise ManifestError(f"{path}: line 1: missing column(s) {missing} (header is {header})")
        rows: List[Dict[str, str]] = []
        seen: Dict[str, int] = {}
        for row in reader:
            line = reader.line_num
            if None in row:
                raise ManifestError(f"{path}: line {line}: more fields than the header's {len(header)}")
            for col in required:
                if row.get(col) in (None, ""):
                    raise ManifestError(f"{path}: line {line}: column '{col}' is empty")
            uid = row["ID"]
            if uid in seen:
                raise ManifestError(f"{path}: line {line}: column 'ID': duplicate ID {uid!r} (first on line {seen[uid]})")
            seen[uid] = line
            if "duration" in row and row["duration"] not in (None, ""):
                try:
                    dur = float(row["duration"])
                except ValueError:
                    raise ManifestError(f"{path}: line {line}: column 'duration': not a number: {row['duration']!r}") from None
                if not dur > 0:
                    raise ManifestError(f"{path}: line {line}: column 'duration': must be > 0, got {dur}")
            if data_root is not None and "wav" in row:
                row["wav"] = resolve_wav(row["wav"], data_root)
            rows.append(row)
    return rows
