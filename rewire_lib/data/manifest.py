"""SpeechBrain CSV manifests: validate what a preparer lists, write atomically, read with checks.

Columns: `ID,duration,wav` are required by every recipe; a task adds its own column (`label`, `wrd`,
`phn`, `action,object,location`, or the speaker in `label`); preparers also write `spk_id`,
`sample_rate` and `channels`, which no recipe requires.

Where `wav` points (`resolve_wav`): an absolute path is used as it is; `$data_root/...` is replaced
by the `data_root` option (portable manifests); any other path is RELATIVE TO THE MANIFEST'S FOLDER
(not to the folder a command is started from), so a folder of manifests and audio can be moved or
shared as a whole.

Finding manifests: `split_csv(data_folder, "dev")` accepts `dev.csv` or `valid.csv`;
`require_manifest(path)` turns a missing file into one line naming it and the command that makes it.

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

from rewire_lib.data.audio import AudioError, audio_info
from rewire_lib.files.logs import atomic_write_csv
from rewire_lib.files.outputs import output_error

log = logging.getLogger(__name__)

REQUIRED = ("ID", "duration", "wav")
LEADING = ("ID", "duration", "wav", "spk_id", "sample_rate", "channels")
DATA_ROOT = "$data_root"

Row = Dict[str, object]
Failure = Tuple[str, str, str]  # (ID or "", file, reason)


class ManifestError(ValueError):
    """A manifest is malformed; the message names the file, line and column."""


class ManifestNotFoundError(ManifestError):
    """A manifest does not exist; the message names it and the command that makes it."""


SPLIT_FILES = {"train": ("train.csv",), "dev": ("dev.csv", "valid.csv"), "valid": ("dev.csv", "valid.csv"),
               "test": ("test.csv",)}


def make_hint(path: os.PathLike) -> str:
    """The command that makes a manifest: the default data's, or a corpus preparer's."""
    from rewire_lib.files.paths import data_dir

    try:
        Path(path).resolve().relative_to(data_dir().resolve())
        return "make the default data with `python data_prep/prepare_all.py`"
    except ValueError:
        return ("make it with the preparer of that corpus (data_prep/README.md); for a folder of audio files: "
                f"`python data_prep/own_folder.py --data_folder AUDIO_FOLDER --save_folder {Path(path).parent}`")


def require_manifest(path: os.PathLike, hint: Optional[str] = None) -> Path:
    """`path` as a Path if it is a file; else ManifestNotFoundError naming it and `hint` (default: the
    command that makes it, see `make_hint`)."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a manifest" if path.is_dir() else "manifest not found"
        raise ManifestNotFoundError(f"{path}: {what}; {hint or make_hint(path)}")
    return path


def split_csv(data_folder: os.PathLike, split: str, must_exist: bool = True) -> str:
    """The manifest of `split` in `data_folder`: `train.csv`, `test.csv`, and for "dev" (or "valid")
    `dev.csv` or else `valid.csv`. Missing: ManifestNotFoundError listing the names looked for (or, with
    `must_exist=False`, the first name, for a preparer that runs later). For YAML:
    `valid_csv: !apply:rewire_lib.data.manifest.split_csv [!ref <data_folder>, dev]`."""
    names = SPLIT_FILES.get(split, (f"{split}.csv",))
    folder = Path(data_folder)
    for name in names:
        if (folder / name).is_file():
            return str(folder / name)
    if must_exist:
        raise ManifestNotFoundError(f"{folder}: no {split} manifest (looked for {', '.join(names)}); "
                                    f"{make_hint(folder / names[0])}")
    return str(folder / names[0])


def resolve_wav(wav: str, data_root: Optional[os.PathLike] = None, base: Optional[os.PathLike] = None) -> str:
    """Path of a `wav` field: `$data_root/...` gets `data_root` (ManifestError if there is none), a
    relative path is taken relative to `base` (the manifest's folder; None: left as it is)."""
    if wav.startswith(DATA_ROOT):
        if data_root is None:
            raise ManifestError(f"wav path {wav!r} uses {DATA_ROOT} but no data_root was given "
                                "(set the data_root option: `--data_root DIR` on a recipe's command line)")
        return str(Path(data_root) / wav[len(DATA_ROOT):].lstrip("/"))
    if base is not None and not os.path.isabs(wav):
        return os.path.normpath(os.path.join(os.path.abspath(base), wav))
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
                  data_root: Optional[os.PathLike] = None, hint: Optional[str] = None) -> List[Dict[str, str]]:
    """Read a manifest as a list of dicts, checking required columns, non-empty required fields,
    numeric positive durations and unique IDs. `wav` comes back resolved (`resolve_wav`): relative
    paths against the manifest's folder, `$data_root` by `data_root` (kept as written when None).
    A missing file is a ManifestNotFoundError naming `hint` or the command that makes it."""
    path = require_manifest(path, hint)
    base = path.absolute().parent
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
            wav = row.get("wav")
            if wav and not (data_root is None and wav.startswith(DATA_ROOT)):
                row["wav"] = resolve_wav(wav, data_root, base)
            rows.append(row)
    return rows


def audio_rows(path: os.PathLike, data_root: Optional[os.PathLike] = None, required: Sequence[str] = REQUIRED,
               hint: Optional[str] = None) -> List[Dict[str, str]]:
    """`read_manifest` for code that is about to read the audio: every `wav` must resolve to an
    existing file. Errors are one line naming the manifest and the first bad row: `$data_root`
    without a data_root (names the option), another `$variable`, audio files not found (counted)."""
    rows = read_manifest(path, required=required, data_root=data_root, hint=hint)
    missing = []
    for line, row in enumerate(rows, start=2):
        wav = row["wav"]
        if wav.startswith(DATA_ROOT):
            raise ManifestError(f"{path}: line {line} (ID {row['ID']}): wav {wav!r} uses {DATA_ROOT} but no data_root "
                                "was given: set the data_root option (`--data_root DIR` on a recipe's command line, "
                                "`data_root: DIR` in its YAML)")
        if wav.startswith("$"):
            raise ManifestError(f"{path}: line {line} (ID {row['ID']}): wav {wav!r}: only {DATA_ROOT} is replaced in "
                                "wav paths (or give absolute paths, or paths relative to the manifest's folder)")
        if not os.path.isfile(wav):
            missing.append((line, row["ID"], wav))
    if missing:
        line, uid, wav = missing[0]
        more = f" ({len(missing) - 1} more of {len(rows)} rows are missing too)" if len(missing) > 1 else ""
        raise ManifestError(f"{path}: line {line} (ID {uid}): audio file not found: {wav}{more}; relative wav paths "
                            "are taken relative to the manifest's folder")
    return rows
