"""Bookkeeping shared by the stages: done-markers of work units, stages.json, peak memory, quiet runs."""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Optional

from rewire_lib.files.atomic import atomic_write_json
from rewire_lib.training.run_stamp import manifest_fingerprint

MARKER = "study_unit.json"


class StageError(RuntimeError):
    """A stage could not do its work (the message says what and where)."""


def _sha1_files(files, names) -> str:
    h = hashlib.sha1()
    for f, name in zip(files, names):
        h.update(f"{name}\n".encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


_STAMPS: dict = {}


def encoder_stamp(encoder: str) -> str:
    """Fingerprint of a local encoder folder's own files (weights, configs: their bytes); sub-folders
    (e.g. training logs beside the model) do not count; a hub id stands for itself. Hashed once per
    process for each (file sizes, mtimes), so a large model is read once per study."""
    path = Path(encoder)
    if not path.exists():
        return str(encoder)
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    key = (str(path.resolve()), tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files))
    if key not in _STAMPS:
        _STAMPS[key] = _sha1_files(files, [f.name for f in files])
    return _STAMPS[key]


def data_fingerprint(*csv_paths) -> str:
    """Content fingerprint of a unit's manifests (rewire_lib.training.run_stamp's, of their bytes); before they
    exist, the names of the missing ones: a unit trained on other data is another unit."""
    missing = [Path(p).name for p in csv_paths if not Path(p).is_file()]
    if missing:
        return "missing:" + ",".join(missing)
    return manifest_fingerprint(*csv_paths)


# Spec keys that say where a unit's inputs lie, not what they are: their content is in the fingerprint keys
# (encoder_stamp, data_fingerprint, fit_fingerprint), so a study folder copied or moved elsewhere, or data moved
# with the same bytes, is still the same unit.
LOCATION_KEYS = ("encoder", "train_csv", "manifest", "fit_manifest", "data_folder", "folds_dir", "tts_cache_dir")


# the key whose value fingerprints each location's content
CONTENT_KEY = {"encoder": "encoder_stamp", "manifest": "data_fingerprint", "train_csv": "data_fingerprint",
               "data_folder": "data_fingerprint", "folds_dir": "data_fingerprint", "fit_manifest": "fit_fingerprint"}


def unit_identity(spec: dict) -> dict:
    """What defines a unit: its spec without the location keys whose content is fingerprinted beside them
    (a cache folder's location never counts); a location without its fingerprint key stays."""
    def located(k: str) -> bool:
        return k in LOCATION_KEYS and (k not in CONTENT_KEY or CONTENT_KEY[k] in spec)
    return {k: v for k, v in spec.items() if not located(k)}


def spec_difference(old: dict, new: dict) -> str:
    """The keys of two specs' identities that differ, as `key: old -> new` (for the message that says why a
    unit is redone)."""
    a, b = unit_identity(old), unit_identity(new)
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return "; ".join(f"{k}: {_short(a.get(k))} -> {_short(b.get(k))}" for k in keys) or "none"


def _short(v, most: int = 60) -> str:
    text = json.dumps(v, default=str)
    return text if len(text) <= most else text[:most - 3] + "..."


def relative_spec(spec: dict, root: Optional[Path]) -> dict:
    """The spec as stored in a marker: absolute paths inside the study folder `root` written relative to it
    (a copied or moved study folder then reads the same); other values as they are."""
    if root is None:
        return spec
    root = Path(root).resolve()

    def rel(v):
        if isinstance(v, str) and os.path.isabs(v) and is_inside(Path(v).resolve(), root):
            return os.path.relpath(Path(v).resolve(), root)
        return v
    return {k: (rel(v) if k in LOCATION_KEYS else v) for k, v in spec.items()}


class Unit:
    """One piece of work in a folder: done when its marker says so with the same identity (`unit_identity`:
    settings and content fingerprints, not where the files lie) and its expected outputs exist. A folder left
    by a different spec is removed before the unit runs again, except a finished one marked `keep` (a rewired
    encoder: hours of work), which is moved aside to `<folder>.old-<time>`; one left by a killed run with the
    same spec is kept, so the recipe resumes from its checkpoints. `root`: the study folder, paths inside it
    are stored relative to it."""

    def __init__(self, folder: Path, spec: dict, outputs=(), root: Optional[Path] = None, keep: bool = False):
        self.folder = Path(folder)
        self.spec = json.loads(json.dumps(spec, default=str))  # normalised as it is stored
        self.outputs = [self.folder / o for o in outputs]
        self.root = root
        self.keep = keep

    @property
    def marker(self) -> Path:
        return self.folder / MARKER

    def _stored(self) -> Optional[dict]:
        try:
            return json.loads(self.marker.read_text())
        except (OSError, ValueError):
            return None

    def _same(self, stored: Optional[dict]) -> bool:
        return bool(stored) and isinstance(stored.get("spec"), dict) and \
            unit_identity(stored["spec"]) == unit_identity(self.spec)

    def is_done(self) -> bool:
        stored = self._stored()
        return bool(stored and stored.get("done") and self._same(stored) and all(o.exists() for o in self.outputs))

    def start(self) -> None:
        stored = self._stored()
        if self.folder.exists() and stored is not None and not self._same(stored):
            why = spec_difference(stored.get("spec") or {}, self.spec)
            if self.keep and stored.get("done"):
                aside = self.folder.with_name(f"{self.folder.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
                print(f"  settings changed since {self.folder} was made ({why}): the finished work is kept, moved "
                      f"to {aside.name}, and the unit runs again", flush=True)
                self.folder.rename(aside)
            else:
                print(f"  settings changed since {self.folder} was made ({why}): removing it and starting again",
                      flush=True)
                shutil.rmtree(self.folder)
        atomic_write_json(self.marker, {"spec": relative_spec(self.spec, self.root), "done": False,
                                        "started": time.time()})

    def finish(self, **info) -> None:
        atomic_write_json(self.marker, {"spec": relative_spec(self.spec, self.root), "done": True,
                                        "finished": time.time(), **info})


def this_invocation(stages: dict) -> dict:
    """The stage entries of stages.json recorded by its latest invocation (the one now running or last run);
    entries without an invocation come from a study folder made before invocations were recorded."""
    current = (stages.get("invocation") or {}).get("id")
    return {k: v for k, v in stages.get("stages", {}).items() if current and v.get("invocation") == current}


def peak_rss_mib() -> dict:
    """Peak resident memory so far: this process and its largest finished child (MiB)."""
    self_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"self": round(self_kib / 1024, 1), "children": round(child_kib / 1024, 1)}


def _max_known(a: Optional[float], b: Optional[float]) -> Optional[float]:
    known = [x for x in (a, b) if x is not None]
    return max(known) if known else None


def higher_peaks(old: Optional[dict], new: dict) -> dict:
    """Per-key maximum of two `peak_rss_mib()` records (the older one may be missing)."""
    return {k: _max_known((old or {}).get(k), v) for k, v in new.items()}


class StageLog:
    """`OUT/stages.json`: the study's settings and, per stage, status, wall time and peak memory.

    `wall_time_s` is the time of the stage's latest invocation (small when everything was skipped);
    `work_time_s` sums every invocation, i.e. the time the stage's work took in all; the peak memories are
    the highest over every invocation (a resumed run that skips finished work keeps the peak of the work)."""

    def __init__(self, path: Path, settings: dict):
        self.path = Path(path)
        try:
            self.data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.data = {}
        self.data["settings"] = settings
        self.data.setdefault("stages", {})
        # each stage entry names the invocation that recorded it, so that a report of a reused study folder can
        # tell this invocation's numbers from those an earlier one (maybe on other data) left
        self.invocation = f"{time.strftime('%Y-%m-%d %H:%M:%S')} pid {os.getpid()}"
        self.data["invocation"] = {"id": self.invocation, "command": settings.get("command"),
                                   "data_folders": settings.get("data_folders"), "corpora": settings.get("corpora")}

    def record(self, name: str, status: str, seconds: float, settings: dict, counts: dict,
               tree_peak_mib: Optional[float] = None) -> dict:
        old = self.data["stages"].get(name, {})
        new_peak = None if tree_peak_mib is None else round(tree_peak_mib, 1)
        entry = {
            "status": status, "wall_time_s": round(seconds, 2),
            "work_time_s": round(old.get("work_time_s", 0.0) + seconds, 2),
            "invocations": old.get("invocations", 0) + 1, "finished_at": time.strftime("%Y-%m-%d %H:%M:%S"),
            "peak_rss_mib": higher_peaks(old.get("peak_rss_mib"), peak_rss_mib()),
            "peak_tree_pss_mib": _max_known(old.get("peak_tree_pss_mib"), new_peak),
            "settings": settings, "invocation": self.invocation, **counts,
        }
        if entry["peak_tree_pss_mib"] != new_peak and "peak_processes" in old:
            entry["peak_processes"] = old["peak_processes"]  # what was resident at the peak that is kept
        self.data["stages"][name] = entry
        stages = self.data["stages"].values()
        self.data["peak_rss_mib"] = max(max(s["peak_rss_mib"]["self"], s["peak_rss_mib"]["children"]) for s in stages)
        trees = [s["peak_tree_pss_mib"] for s in stages if s.get("peak_tree_pss_mib") is not None]
        self.data["peak_tree_pss_mib"] = max(trees) if trees else None
        self.data["total_wall_time_s"] = round(sum(s["wall_time_s"] for s in stages), 2)
        self.data["total_work_time_s"] = round(sum(s["work_time_s"] for s in stages), 2)
        self.save()
        return entry

    def save(self) -> None:
        atomic_write_json(self.path, self.data)


@contextlib.contextmanager
def quiet(log_file: Optional[Path]):
    """Send a recipe's console output (SpeechBrain logs to sys.stdout) to `log_file`; afterwards put
    logging back to a plain WARNING console handler and restore sys.excepthook."""
    hook = sys.excepthook
    if log_file is None:
        try:
            yield
        finally:
            sys.excepthook = hook
            reset_logging()
        return
    Path(log_file).parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "a") as f, contextlib.redirect_stdout(f):
        try:
            yield
        finally:
            sys.excepthook = hook
            reset_logging()


def reset_logging(level=logging.WARNING) -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
        with contextlib.suppress(Exception):
            h.close()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.setLevel(level)
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def _pss_bytes(pid: str) -> Optional[int]:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


SAMPLE_EVERY_S = 2.0  # a stage's peak lasts far longer (model loading, a run's feature extraction)


class TreeMemorySampler:
    """Peak memory of this process and all its descendants together (worker processes included),
    sampled from /proc every `interval` seconds in a background thread (Linux; elsewhere None).

    Each process counts its proportional set size (PSS: private pages plus its share of pages it
    shares with others, from /proc/PID/smaps_rollup), so the libraries every worker maps (torch alone
    is hundreds of MiB) are counted once, not once per process as a sum of RSS would. Where
    smaps_rollup cannot be read, the process's RSS is used."""

    def __init__(self, interval: float = SAMPLE_EVERY_S):
        import threading

        self.interval = interval
        self.peak_mib: Optional[float] = None
        self.peak_processes: list = []  # process_breakdown() at the peak
        self.last_processes: dict = {}
        self.last_parents: dict = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        if Path("/proc/self/stat").exists():
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)

    def sample(self) -> Optional[float]:
        """One reading: the process tree from every /proc/PID/stat (parent and RSS, cheap), then PSS from
        smaps_rollup for this tree's processes only (the costly read: the kernel walks each page table, so
        reading it for every process of a busy machine cost most of the sampler's time)."""
        try:
            page = os.sysconf("SC_PAGE_SIZE")
            parents, rss = {}, {}
            for d in os.listdir("/proc"):
                if not d.isdigit():
                    continue
                try:
                    with open(f"/proc/{d}/stat") as f:
                        fields = f.read().rsplit(")", 1)[1].split()
                    parents[int(d)] = int(fields[1])
                    rss[int(d)] = int(fields[21]) * page
                except (OSError, IndexError, ValueError):
                    continue
            mine = {}
            for pid in descendants(parents, os.getpid()):
                pss = _pss_bytes(str(pid))
                mine[pid] = rss.get(pid, 0) if pss is None else pss
            self.last_processes = mine
            self.last_parents = {pid: parents.get(pid) for pid in mine}
            return sum(mine.values()) / 2 ** 20
        except OSError:
            return None

    def _run(self) -> None:
        while not self._stop.is_set():
            v = self.sample()
            if v is not None and (self.peak_mib is None or v > self.peak_mib):
                self.peak_mib = v
                self.peak_processes = process_breakdown(self.last_processes, parents=self.last_parents)
            self._stop.wait(self.interval)


def descendants(parents: dict, root: int) -> list:
    """`root` and every process below it, from a {pid: parent pid} map."""
    children: dict = {}
    for pid, parent in parents.items():
        children.setdefault(parent, []).append(pid)
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += [c for c in children.get(pid, []) if c != pid]
    return out


def process_role(pid: int, parent: Optional[int], cmd: str, main_pid: int) -> str:
    """What a study process is: the main process, the forkserver or the resource tracker (both started by
    the main process), or a worker (by pid). Workers forked from the forkserver inherit its command line,
    so only the parent tells the forkserver (a child of main) from its workers."""
    if pid == main_pid:
        return "main"
    if parent == main_pid and "forkserver" in cmd:
        return "forkserver"
    if parent == main_pid and "resource_tracker" in cmd:
        return "resource tracker"
    return f"worker {pid}"


def process_breakdown(sizes: dict, most: int = 8, parents: Optional[dict] = None) -> list:
    """[{"process": role, "mib": PSS}] of the largest processes at a peak, so that a report can say what was
    resident (`process_role`; `parents`: pid -> parent pid, read from /proc where not given)."""
    rows = []
    for pid, size in sorted(sizes.items(), key=lambda kv: -kv[1])[:most]:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            cmd = ""
        parent = parents[pid] if parents and pid in parents else _parent_pid(pid)
        rows.append({"process": process_role(pid, parent, cmd, os.getpid()), "mib": round(size / 2 ** 20, 1)})
    return rows


def _parent_pid(pid: int) -> Optional[int]:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


REPO_PREFIX = "<repo>/"


def shown_path(path, base: Path) -> str:
    """A path as the report writes it (no machine's absolute paths in summary.md, summary.csv or
    stages.json): relative to the report folder `base`, except a file of the repository seen from a report
    folder outside it, which is written `<repo>/pretrained/...` (a `../../..` walk from a scratch folder
    into the checkout would name the machine's layout); a hub id or other non-path stays as it is."""
    text = str(path)
    p = Path(text)
    if not p.is_absolute():
        return text
    from rewire_lib.files.paths import REPO_ROOT

    base, repo = Path(base).resolve(), REPO_ROOT.resolve()
    if is_inside(p, repo) and not is_inside(base, repo):
        return REPO_PREFIX + os.path.relpath(p, repo)
    return os.path.relpath(p, base)


def is_inside(path: Path, folder: Path) -> bool:
    """`path` is `folder` or lies below it (both resolved by the caller)."""
    return path == folder or folder in path.parents


def portable(obj, base: Path):
    """`obj` (settings: dicts, lists, strings, paths) with every absolute path made relative to `base`."""
    if isinstance(obj, dict):
        return {k: portable(v, base) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [portable(v, base) for v in obj]
    if isinstance(obj, Path) or (isinstance(obj, str) and os.path.isabs(obj)):
        return shown_path(obj, base)
    if isinstance(obj, str) and "=" in obj:  # NAME=/abs/path items of options (--encoders, --data-folder)
        return ",".join(_portable_item(x, base) for x in obj.split(","))
    return obj


def _portable_item(item: str, base: Path) -> str:
    key, sep, value = item.partition("=")
    return f"{key}{sep}{shown_path(value, base)}" if sep and os.path.isabs(value) else item
