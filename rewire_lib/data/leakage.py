"""Leakage audit: what a label-free training set (rewiring, pre-training) shares with a task's splits.

Why: rewiring and pre-training use no labels, so nothing stops them from training on the very recordings a
downstream task later tests on (the study once rewired on FSDD clips that its connected-digit test utterances
were cut from). A file name says nothing about that: a copy under another name, in another format, or a
constructed utterance (a connected-digit string) made of a clip, is the same audio. So recordings are compared
by CONTENT: `audio_fingerprint` hashes the decoded mono samples and the sample rate (a 16-bit WAV and its FLAC
copy decode to the same samples, hence the same fingerprint; a resampled or re-encoded lossy copy does not).

A manifest row stands for its own `wav` plus, where the manifest has the column `source_wavs`, the recordings
it was built from (`|`-separated paths, relative ones taken from the manifest's folder like `wav`):
data_prep/fsdd_connected.py writes it for each connected utterance.

`compare(source, split)` gives, for one (training set, split): the split's utterances holding a recording of
the set (count and first IDs, with the set's recordings they match), the speakers both have (`spk_id`), and
the share of the split's transcript word tokens (`wrd`) that occur in the set's transcripts. `transcripts`
counts the transcripts a TTS-using view consumes. Pure functions and one on-disk cache (`FingerprintCache`,
keyed by path, size and mtime, so a re-run reads only new or changed files).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

from rewire_lib.data.audio import read_mono
from rewire_lib.data.manifest import read_manifest, resolve_wav
from rewire_lib.files.atomic import atomic_write_json

SOURCE_WAVS = "source_wavs"  # manifest column: the recordings a constructed utterance was made from
SOURCE_SEP = "|"  # between the paths of `source_wavs` (a space may be part of a path)
FIRST = 5  # IDs listed per finding
NO_SPEAKER = {"", "none", "unknown"}  # spk_id of rows without one (Speech Commands' background-noise clips)


def audio_fingerprint(path: os.PathLike) -> str:
    """Hash of the decoded mono samples (float32) and the sample rate: the same audio under any name or
    lossless container has the same fingerprint."""
    samples, sr = read_mono(path)
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{sr}:".encode())
    h.update(samples.astype("<f4", copy=False).tobytes())
    return h.hexdigest()


class FingerprintCache:
    """`audio_fingerprint` memoised on disk ({real path: [size, mtime_ns, fingerprint]}), so that auditing
    again (every rewire stage does) reads only files that are new or changed. `path` None: memory only."""

    def __init__(self, path: Optional[os.PathLike] = None):
        self.path = Path(path) if path else None
        self.entries: Dict[str, list] = {}
        self.read = 0  # files decoded (not found in the cache)
        self.hits = 0  # files found in the cache
        self._known: Dict[str, str] = {}  # this process's answers (a file listed by many manifests: one stat)
        if self.path and self.path.is_file():
            try:
                self.entries = json.loads(self.path.read_text())
            except (OSError, ValueError):  # a damaged cache is rebuilt, not trusted
                self.entries = {}

    def of(self, wav: os.PathLike) -> str:
        if str(wav) in self._known:
            return self._known[str(wav)]
        real = os.path.realpath(wav)
        self._known[str(wav)] = fp = self._lookup(real)
        return fp

    def _lookup(self, real: str) -> str:
        st = os.stat(real)
        entry = self.entries.get(real)
        if entry and entry[0] == st.st_size and entry[1] == st.st_mtime_ns:
            self.hits += 1
            return entry[2]
        fp = audio_fingerprint(real)
        self.entries[real] = [st.st_size, st.st_mtime_ns, fp]
        self.read += 1
        return fp

    def save(self) -> None:
        if self.path and self.read:
            atomic_write_json(self.path, self.entries, indent=None)


def row_recordings(row: dict, base: Optional[os.PathLike] = None) -> List[str]:
    """The recordings a manifest row stands for: its `wav` and the paths in its `source_wavs` (relative
    ones against `base`, the manifest's folder)."""
    sources = [s.strip() for s in (row.get(SOURCE_WAVS) or "").split(SOURCE_SEP) if s.strip()]
    return [row["wav"]] + [resolve_wav(s, None, base) for s in sources]


def words(text: str) -> List[str]:
    """Word tokens of a transcript, case-folded (LibriSpeech is upper case, FSDD lower)."""
    return text.lower().split()


@dataclass
class RecordingSet:
    """What the audit compares of some manifests' rows: per row its ID, recordings (fingerprint -> the
    file's name), speaker and word tokens; `has_text` False when no manifest has a `wrd` column."""
    ids: List[str] = field(default_factory=list)
    recordings: List[Dict[str, str]] = field(default_factory=list)
    speakers: List[str] = field(default_factory=list)
    words: List[List[str]] = field(default_factory=list)
    texts: List[str] = field(default_factory=list)
    has_text: bool = False

    def add(self, row: dict, base, cache: FingerprintCache, has_text: bool) -> None:
        self.ids.append(row["ID"])
        self.recordings.append({cache.of(w): Path(w).name for w in row_recordings(row, base)})
        self.speakers.append(row.get("spk_id") or "")
        text = row.get("wrd") or ""
        self.texts.append(text)
        self.words.append(words(text))
        self.has_text = self.has_text or has_text

    def fingerprints(self) -> Dict[str, str]:
        """Every recording of the set: fingerprint -> a file name it has."""
        out: Dict[str, str] = {}
        for rec in self.recordings:
            for fp, name in rec.items():
                out.setdefault(fp, name)
        return out

    def speaker_set(self) -> set:
        return {s for s in self.speakers if s.lower() not in NO_SPEAKER}

    def vocabulary(self) -> set:
        return {w for ws in self.words for w in ws}


def read_set(manifests: Sequence[os.PathLike], cache: FingerprintCache,
             exclude_wavs: Iterable[str] = ()) -> RecordingSet:
    """The rows of `manifests` as one RecordingSet; rows whose `wav` resolves (real path) to one of
    `exclude_wavs` are left out (pre-training's held-out splits, removed by path as its recipe does)."""
    exclude = {os.path.realpath(w) for w in exclude_wavs}
    out = RecordingSet()
    for manifest in manifests:
        manifest = Path(manifest)
        rows = read_manifest(manifest, required=("ID", "wav"))
        has_text = bool(rows) and "wrd" in rows[0]
        for row in rows:
            if os.path.realpath(row["wav"]) not in exclude:
                out.add(row, manifest.absolute().parent, cache, has_text)
    return out


def manifest_wavs(manifests: Sequence[os.PathLike]) -> List[str]:
    """The `wav` files (resolved) of `manifests`."""
    return [r["wav"] for m in manifests for r in read_manifest(m, required=("ID", "wav"))]


def compare(source: RecordingSet, split: RecordingSet, first: int = FIRST) -> dict:
    """What the training set `source` shares with `split` (see the module's docstring). Word share: None
    when either side has no transcripts (`wrd`) or the split has no word."""
    seen = source.fingerprints()
    hits, matched = [], {}
    for uid, rec in zip(split.ids, split.recordings):
        common = [fp for fp in rec if fp in seen]
        if common:
            hits.append(uid)
            for fp in common:
                matched.setdefault(fp, seen[fp])
    spk_source = source.speaker_set()
    spk_split = split.speaker_set()
    tokens = [w for ws in split.words for w in ws]
    vocab = source.vocabulary()
    in_vocab = sum(w in vocab for w in tokens)
    share = round(in_vocab / len(tokens), 4) if tokens and source.has_text and split.has_text else None
    return {"utterances": len(split.ids), "shared_utterances": len(hits), "first": hits[:first],
            "shared_recordings": len(matched), "first_matches": list(matched.values())[:first],
            "speakers": len(spk_split), "shared_speakers": sorted(spk_source & spk_split),
            "word_tokens": len(tokens), "word_tokens_in_source": in_vocab if share is not None else None,
            "word_share": share}


def transcripts(rows: RecordingSet) -> dict:
    """Transcripts a TTS-using view renders from the set: distinct texts and rows with one (per epoch)."""
    texts = [t.strip() for t in rows.texts if t.strip()]
    return {"distinct": len(set(texts)), "total": len(texts)}


def pretraining_manifests(encoder_dir: os.PathLike, data_dir: os.PathLike) -> Optional[dict]:
    """The pre-training data an encoder folder records (`training/hyperparams.yaml`: `train_manifests`
    minus `heldout_manifests`, as recipes/pretrain writes it), with paths under its `data_root` (`data`)
    taken under `data_dir` (where this checkout's corpora are). {"train": [...], "heldout": [...],
    "missing": [...]} of paths (missing: listed there but not prepared here); None if not recorded."""
    import yaml

    path = Path(encoder_dir) / "training" / "hyperparams.yaml"
    if not path.is_file():
        return None
    hp = yaml.safe_load(path.read_text()) or {}
    if not hp.get("train_manifests"):
        return None
    root = str(hp.get("data_root") or "data").rstrip("/")

    def local(p: str) -> Path:
        try:
            return Path(data_dir) / Path(p).relative_to(root)
        except ValueError:  # not under data_root: as written
            return Path(p)

    train = [local(p) for p in hp["train_manifests"]]
    heldout = [local(p) for p in hp.get("heldout_manifests") or []]
    return {"train": [p for p in train if p.is_file()], "heldout": [p for p in heldout if p.is_file()],
            "missing": [str(p) for p in train + heldout if not p.is_file()], "recorded_in": str(path)}
