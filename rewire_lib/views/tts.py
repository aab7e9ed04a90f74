"""Text-to-speech for the "neutral" views: backends, a shared disk cache, and a pre-synthesis command.

Backends (one interface, `TTSBackend`; all return float32 numpy audio at 16 kHz):

- `ESpeakBackend(voice="en-us", rate=175, pitch=50, pitch_range=50)`: eSpeak NG through the library
  shipped by the `espeakng-loader` wheel (`rewire_lib.views.espeak`, ctypes; no system package).
- `FestivalBackend(voice=None, text2wave="text2wave")`: Festival's `text2wave` as a subprocess (the
  authors' choice; Debian package `festival`). `voice=None` is Festival's default voice (kal_diphone
  on Debian); otherwise e.g. "kal_diphone" is passed as `-eval (voice_kal_diphone)`. Every call uses
  its own temporary files (unique names, in the cache folder when driven by `TTSCache`), never fixed
  names in the working directory, so any number of processes may run at once. Text is folded to ASCII
  first (`ascii_fold=True`: "café" -> "cafe"; characters with no ASCII form are dropped), since Festival
  reads bytes as Latin-1; digits are read as numbers by Festival itself.
- `make_backend(name, **settings)`: "espeak" or "festival", for YAML (`tts_backend: espeak`).

A missing backend raises `TTSUnavailable` naming what to install. A text that yields no audio
(empty, punctuation only, a synthesiser error for that text) is not an error: it is a logged,
counted skip.

Cache (`TTSCache(root, backend)`), each transcript is synthesised once, ever::

    <root>/<backend name>/<sha1 of the canonical JSON of {"backend": name, "settings": settings}>/
        settings.json               what the folder holds (human-readable)
        <sha1 of the text>.wav      16 kHz, 16-bit PCM
        <sha1 of the text>.skip.json  a text that gave no audio: {"text", "reason"}; never retried
                                      unless `retry_skipped=True` (or the marker is deleted)
        skipped.csv                 summary of the markers, rewritten by `synthesize_missing`

The text key is the exact text after `str.strip()` (case, punctuation and inner spacing are kept:
they can change the rendering). Every file is written to a temporary file in the same folder and
renamed (`rewire_lib.files.atomic`), so two processes filling one cache never expose a partial file; if both
render the same text, the last rename wins and both renderings are identical anyway.

Command (pre-synthesise every `wrd` of one or more manifests, in parallel processes)::

    python -m rewire_lib.views.tts --manifest data/synth/train.csv --backend espeak --num-workers 2
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import math
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from rewire_lib.files.atomic import atomic_write_text

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000

FESTIVAL_MISSING = (
    "Festival's text2wave was not found: install the Debian package `festival` "
    "(apt-get install festival) or use tts_backend: espeak"
)
ESPEAK_MISSING = (
    "eSpeak NG is not available: install the Python package `espeakng-loader` "
    "(pip install espeakng-loader, pinned in requirements.txt) or use tts_backend: festival"
)


class TTSUnavailable(RuntimeError):
    """The requested TTS backend is not installed (the message names what to install)."""


class TTSFailure(RuntimeError):
    """The backend could not render this particular text (a counted skip, not a crash)."""


def to_16k(wav: np.ndarray, sr: int) -> np.ndarray:
    """Mono float32 audio resampled to 16 kHz (polyphase filter; numpy/scipy only, fork-safe)."""
    wav = np.asarray(wav, dtype=np.float32)
    if wav.ndim > 1:
        wav = wav.mean(axis=1)
    if sr == SAMPLE_RATE or wav.size == 0:
        return np.ascontiguousarray(wav, dtype=np.float32)
    from scipy.signal import resample_poly

    g = math.gcd(int(sr), SAMPLE_RATE)
    return resample_poly(wav, SAMPLE_RATE // g, int(sr) // g).astype(np.float32)


class TTSBackend:
    """Interface: `name`, `settings()` (everything that changes the audio: part of the cache key),
    `synthesize(text) -> np.float32 [samples] at 16 kHz` (empty when nothing is spoken; raises
    `TTSFailure` for a text it cannot render). Backends are plain picklable objects, so they can
    be sent to worker processes."""

    name = "base"

    def settings(self) -> Dict:
        raise NotImplementedError

    def synthesize(self, text: str, tmp_dir: Optional[str] = None) -> np.ndarray:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.settings()})"


class ESpeakBackend(TTSBackend):
    """eSpeak NG (ctypes, `rewire_lib.views.espeak`). Voice names like "en-us", "en-us+f3", "en+m2";
    rate in words per minute; pitch and pitch_range 0..100. Digits are spoken as words."""

    name = "espeak"

    def __init__(self, voice: str = "en-us", rate: int = 175, pitch: int = 50, pitch_range: int = 50):
        self.voice = str(voice)
        self.rate = int(rate)
        self.pitch = int(pitch)
        self.pitch_range = int(pitch_range)
        espeak = _espeak_module()
        try:
            espeak.get_engine()
        except espeak.EspeakError as exc:
            raise TTSUnavailable(f"{ESPEAK_MISSING} ({exc})") from exc
        try:  # a wrong voice is a configuration error, not a per-text skip: fail now
            espeak.synthesize("a", voice=self.voice, rate=self.rate, pitch=self.pitch,
                              pitch_range=self.pitch_range, fresh=True)
        except espeak.EspeakError as exc:
            raise ValueError(f"eSpeak NG backend: {exc}") from exc

    def settings(self) -> Dict:
        # "state": every text is rendered from eSpeak's initial state (synthesize(fresh=True)); renderings
        # made before that (which depended on the texts rendered before them) live in another cache folder
        return {"voice": self.voice, "rate": self.rate, "pitch": self.pitch, "pitch_range": self.pitch_range,
                "state": "fresh"}

    def synthesize(self, text: str, tmp_dir: Optional[str] = None) -> np.ndarray:
        espeak = _espeak_module()
        try:
            # fresh: each text from eSpeak's initial state, so a rendering depends only on its text and
            # settings, not on which worker rendered it after which other texts (rewire_lib.views.espeak)
            wav, sr = espeak.synthesize(text, voice=self.voice, rate=self.rate, pitch=self.pitch,
                                        pitch_range=self.pitch_range, fresh=True)
        except espeak.EspeakError as exc:
            raise TTSFailure(str(exc)) from exc
        return to_16k(wav, sr)


def _espeak_module():
    try:
        from rewire_lib.views import espeak
    except ImportError as exc:  # pragma: no cover - the module is part of the project
        raise TTSUnavailable(f"{ESPEAK_MISSING} ({exc})") from exc
    return espeak


def ascii_fold(text: str) -> str:
    """Accents removed (NFKD), typographic quotes/dashes mapped, other non-ASCII characters dropped."""
    table = {"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-", "\u2014": "-",
             "\u2026": "...", "\u00a0": " "}
    text = "".join(table.get(c, c) for c in text)
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")


class FestivalBackend(TTSBackend):
    """Festival's `text2wave` in a subprocess (Debian package `festival`).

    voice: None for Festival's default voice, else a voice name such as "kal_diphone" (run as
    `(voice_<name>)`). text2wave: the program (name on PATH or path); not part of the cache key.
    ascii_fold: fold the text to ASCII before synthesis (see `ascii_fold`). timeout: seconds per text.
    require: raise `TTSUnavailable` now when text2wave is missing (False: only when synthesising).
    """

    name = "festival"

    def __init__(self, voice: Optional[str] = None, text2wave: str = "text2wave", ascii_fold: bool = True,
                 timeout: float = 120.0, require: bool = True):
        self.voice = voice or None
        if self.voice is not None and not all(c.isalnum() or c in "_-" for c in self.voice):
            raise ValueError(f"Festival voice name {self.voice!r}: letters, digits, '_' and '-' only")
        self.text2wave = text2wave
        self.ascii_fold = bool(ascii_fold)
        self.timeout = float(timeout)
        if require:
            self._program()

    def _program(self) -> str:
        found = shutil.which(self.text2wave)
        if not found:
            raise TTSUnavailable(f"{FESTIVAL_MISSING} (looked for {self.text2wave!r})")
        return found

    def settings(self) -> Dict:
        return {"voice": self.voice, "ascii_fold": self.ascii_fold}

    def synthesize(self, text: str, tmp_dir: Optional[str] = None) -> np.ndarray:
        program = self._program()
        if self.ascii_fold:
            text = ascii_fold(text)
        if not any(c.isalnum() for c in text):
            # text2wave crashes (SIOD error, segfault) on empty input and says nothing for punctuation
            return np.zeros(0, dtype=np.float32)
        import soundfile as sf

        if tmp_dir is not None:
            os.makedirs(tmp_dir, exist_ok=True)
        # absolute: text2wave runs with cwd=work, so a relative tmp_dir (a relative cache root) would make it
        # look for work/work/in.txt, print nothing, exit 0, and every text would be cached as "no audio"
        work = os.path.abspath(tempfile.mkdtemp(prefix=".festival-", dir=tmp_dir))
        try:
            txt = os.path.join(work, "in.txt")
            out = os.path.join(work, "out.wav")
            with open(txt, "w", encoding="latin-1", errors="replace") as fh:
                fh.write(text + "\n")
            cmd = [program, txt, "-o", out]
            if self.voice:
                cmd += ["-eval", f"(voice_{self.voice})"]
            try:
                proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=work,
                                      timeout=self.timeout)
            except subprocess.TimeoutExpired as exc:
                raise TTSFailure(f"text2wave took more than {self.timeout:.0f} s") from exc
            err = proc.stderr.decode("utf-8", "replace").strip()
            if proc.returncode != 0:
                raise TTSFailure(f"text2wave exited with status {proc.returncode}: {err[-300:]}")
            if not os.path.exists(out) or os.path.getsize(out) == 0:
                return np.zeros(0, dtype=np.float32)
            try:
                wav, sr = sf.read(out, dtype="float32", always_2d=False)
            except Exception as exc:  # noqa: BLE001 - libsndfile raises several types
                raise TTSFailure(f"text2wave wrote unreadable audio ({exc}); stderr: {err[-300:]}") from exc
            return to_16k(wav, sr)
        finally:
            shutil.rmtree(work, ignore_errors=True)


BACKENDS = {"espeak": ESpeakBackend, "festival": FestivalBackend}


def make_backend(name: str, **settings) -> TTSBackend:
    """Backend by name ("espeak" or "festival"); `settings` go to its constructor (None values are
    dropped, so a YAML `voice: null` means the backend's default)."""
    key = str(name).strip().lower()
    if key in ("espeak-ng", "espeak_ng", "espeakng"):
        key = "espeak"
    if key not in BACKENDS:
        raise ValueError(f"unknown TTS backend {name!r}; expected one of {sorted(BACKENDS)}")
    settings = {k: v for k, v in settings.items() if v is not None}
    return BACKENDS[key](**settings)


def text_key(text: str) -> str:
    """Cache key of a text: sha1 of its UTF-8 bytes after `strip()` (nothing else is normalised)."""
    return hashlib.sha1(text.strip().encode("utf-8")).hexdigest()


@dataclass
class TTSStats:
    """done: synthesised now; cached: already on disk; skipped: no audio (reasons counted)."""

    done: int = 0
    cached: int = 0
    skipped: int = 0
    reasons: Counter = field(default_factory=Counter)

    def add(self, status: str, reason: Optional[str] = None) -> None:
        if status == "done":
            self.done += 1
        elif status == "cached":
            self.cached += 1
        else:
            self.skipped += 1
            self.reasons[reason or "unknown"] += 1

    def as_dict(self) -> Dict:
        return {"done": self.done, "cached": self.cached, "skipped": self.skipped,
                "reasons": dict(self.reasons)}

    def __str__(self) -> str:
        text = f"synthesised {self.done}, already cached {self.cached}, skipped {self.skipped}"
        if self.reasons:
            text += " (" + "; ".join(f"{r}: {n}" for r, n in self.reasons.most_common()) + ")"
        return text


class TTSCache:
    """Disk cache of TTS renderings (see the module docstring for the layout and guarantees).

    `get(text)` returns a 16 kHz float tensor, synthesising and storing it on a miss, or None when
    the text yields no audio (counted in `stats`, logged, remembered on disk). `retry_skipped=True`
    ignores earlier skip markers.
    """

    def __init__(self, root: Union[str, os.PathLike, None], backend: TTSBackend, retry_skipped: bool = False):
        if root is None:
            from rewire_lib.files.paths import cache_dir

            root = cache_dir() / "tts"
        self.root = Path(root)
        self.backend = backend
        self.retry_skipped = bool(retry_skipped)
        settings = backend.settings()
        canonical = json.dumps({"backend": backend.name, "settings": settings}, sort_keys=True,
                               separators=(",", ":"), ensure_ascii=True)
        self.settings_hash = hashlib.sha1(canonical.encode("utf-8")).hexdigest()
        self.folder = self.root / backend.name / self.settings_hash
        self.folder.mkdir(parents=True, exist_ok=True)
        info = self.folder / "settings.json"
        if not info.exists():
            atomic_write_text(info, json.dumps({"backend": backend.name, "settings": settings,
                                                 "sample_rate": SAMPLE_RATE}, indent=2, sort_keys=True) + "\n")
        self.stats = TTSStats()

    def __getstate__(self):  # stats are per process
        state = dict(self.__dict__)
        state["stats"] = TTSStats()
        return state

    def path(self, text: str) -> Path:
        return self.folder / f"{text_key(text)}.wav"

    def skip_path(self, text: str) -> Path:
        return self.folder / f"{text_key(text)}.skip.json"

    def has(self, text: str) -> bool:
        """True when the rendering of `text` is on disk (never synthesises)."""
        return self.path(text).exists()

    def skip_reason(self, text: str) -> Optional[str]:
        """Why `text` was skipped earlier, or None (never synthesises)."""
        if text is None or not str(text).strip():
            return "empty text"
        marker = self.skip_path(text)
        if not marker.exists():
            return None
        try:
            return json.loads(marker.read_text(encoding="utf-8")).get("reason", "unknown")
        except (OSError, ValueError):
            return "unknown"

    def ensure(self, text: Optional[str]) -> Tuple[str, Optional[str]]:
        """Make sure `text` is rendered or recorded as skipped; returns (status, reason) with status
        "done" (synthesised now), "cached" or "skipped". Does not touch `stats`."""
        if text is None or not str(text).strip():
            return "skipped", "empty text"
        text = str(text).strip()
        wav_path = self.path(text)
        if wav_path.exists():
            return "cached", None
        if not self.retry_skipped:
            reason = self.skip_reason(text)
            if reason is not None:
                return "skipped", reason
        reason = None
        try:
            audio = self.backend.synthesize(text, tmp_dir=str(self.folder))
        except TTSFailure as exc:
            reason = f"synthesis failed: {exc}"
            audio = None
        if audio is not None:
            audio = np.asarray(audio, dtype=np.float32).reshape(-1)
            if audio.size == 0 or not np.any(audio):
                reason = "no audio"
            elif not np.isfinite(audio).all():
                reason = "non-finite audio"
        if reason is not None:
            log.warning("TTS %s: skipping %r: %s", self.backend.name, text[:80], reason)
            atomic_write_text(self.skip_path(text), json.dumps({"text": text, "reason": reason}) + "\n")
            return "skipped", reason
        from rewire_lib.data.audio import write_audio

        write_audio(wav_path, audio, SAMPLE_RATE)
        return "done", None

    def get(self, text: Optional[str]):
        """The 16 kHz rendering of `text` as a float32 torch tensor, or None when it yields no audio."""
        status, reason = self.ensure(text)
        self.stats.add(status, reason)
        if status == "skipped":
            return None
        from rewire_lib.data.audio import load_audio

        return load_audio(self.path(str(text).strip()), target_sr=SAMPLE_RATE)

    def skipped(self) -> List[Dict[str, str]]:
        """Every text recorded as skipped in this cache folder: [{"key", "text", "reason"}]."""
        rows = []
        for marker in sorted(self.folder.glob("*.skip.json")):
            try:
                data = json.loads(marker.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                data = {}
            rows.append({"key": marker.name[: -len(".skip.json")], "text": data.get("text", ""),
                         "reason": data.get("reason", "unknown")})
        return rows

    def write_skipped_csv(self) -> Path:
        """Rewrite `skipped.csv` (key, text, reason) from the skip markers; returns its path."""
        import io

        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=["key", "text", "reason"])
        writer.writeheader()
        writer.writerows(self.skipped())
        out = self.folder / "skipped.csv"
        atomic_write_text(out, buf.getvalue())
        return out

    def synthesize_missing(self, texts: Iterable[Optional[str]], num_workers: int = 1, progress: bool = True,
                           mp_context: Optional[str] = None) -> TTSStats:
        """Render every distinct text not yet in the cache, in `num_workers` processes (1: in this
        process), with a tqdm bar. Returns the counts over the distinct texts; also rewrites
        `skipped.csv` when anything is skipped."""
        unique: Dict[str, str] = {}
        stats = TTSStats()
        for text in texts:
            if text is None or not str(text).strip():
                stats.add("skipped", "empty text")
                continue
            text = str(text).strip()
            unique.setdefault(text_key(text), text)
        todo = []
        for text in unique.values():
            if self.has(text):
                stats.add("cached")
            elif not self.retry_skipped and self.skip_reason(text) is not None:
                stats.add("skipped", self.skip_reason(text))
            else:
                todo.append(text)
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc=f"TTS {self.backend.name}", unit="text", disable=not progress)
        try:
            if num_workers <= 1 or len(todo) <= 1:
                for text in todo:
                    stats.add(*self.ensure(text))
                    bar.update(1)
            else:
                ctx = multiprocessing.get_context(mp_context or _default_start_method())
                workers = min(int(num_workers), len(todo))
                chunk = max(1, min(16, len(todo) // (workers * 8)))
                with ctx.Pool(workers, initializer=_worker_init, initargs=(self,)) as pool:
                    for status, reason in pool.imap_unordered(_worker_ensure, todo, chunksize=chunk):
                        stats.add(status, reason)
                        bar.update(1)
        finally:
            bar.close()
        if stats.skipped:
            self.write_skipped_csv()
        return stats


def _default_start_method() -> str:
    # forkserver: workers start clean (no inherited threads/locks from torch in the parent), cheaply
    methods = multiprocessing.get_all_start_methods()
    return "forkserver" if "forkserver" in methods else "spawn"


_WORKER_CACHE: Optional[TTSCache] = None


def _worker_init(cache: TTSCache) -> None:
    global _WORKER_CACHE
    _WORKER_CACHE = cache


def _worker_ensure(text: str) -> Tuple[str, Optional[str]]:
    return _WORKER_CACHE.ensure(text)


def read_manifest_texts(path: Union[str, os.PathLike], column: str = "wrd") -> List[str]:
    """The `column` values of a SpeechBrain CSV manifest (error naming the file if it lacks it)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} does not exist")
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or column not in reader.fieldnames:
            raise ValueError(f"manifest {path}: no column {column!r} (columns: {reader.fieldnames})")
        return [row[column] for row in reader]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rewire_lib.views.tts",
        description="Pre-synthesise the transcripts of SpeechBrain manifests into the TTS cache.")
    parser.add_argument("--manifest", action="append", required=True, help="CSV manifest (repeatable)")
    parser.add_argument("--column", default="wrd", help="text column (default: wrd)")
    parser.add_argument("--backend", default="espeak", choices=sorted(BACKENDS))
    parser.add_argument("--voice", default=None, help="backend voice (default: the backend's default)")
    parser.add_argument("--rate", type=int, default=None, help="eSpeak: words per minute (175)")
    parser.add_argument("--pitch", type=int, default=None, help="eSpeak: pitch 0..100 (50)")
    parser.add_argument("--cache", default=None, help="cache root (default: <repo>/cache/tts)")
    parser.add_argument("--num-workers", type=int, default=max(1, os.cpu_count() or 1))
    parser.add_argument("--retry-skipped", action="store_true", help="try texts skipped before again")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    settings = {"voice": args.voice}
    if args.backend == "espeak":
        settings.update(rate=args.rate, pitch=args.pitch)
    elif args.rate is not None or args.pitch is not None:
        parser.error("--rate/--pitch apply to the espeak backend only")
    try:
        backend = make_backend(args.backend, **settings)
    except TTSUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    texts: List[str] = []
    for manifest in args.manifest:
        try:
            texts.extend(read_manifest_texts(manifest, args.column))
        except (OSError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    cache = TTSCache(args.cache, backend, retry_skipped=args.retry_skipped)
    stats = cache.synthesize_missing(texts, num_workers=args.num_workers, progress=not args.no_progress)
    print(f"{len(texts)} rows from {len(args.manifest)} manifest(s) -> {cache.folder}")
    print(f"done={stats.done} cached={stats.cached} skipped={stats.skipped}")
    for reason, n in stats.reasons.most_common():
        print(f"  skipped {n}: {reason}")
    if stats.skipped:
        print(f"skipped texts listed in {cache.folder / 'skipped.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
