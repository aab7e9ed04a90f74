"""Reading, inspecting and writing audio (soundfile for I/O, torchaudio for resampling).

- `load_audio(path, target_sr=16000) -> torch.FloatTensor [samples]`: mono (channels averaged),
  resampled, float32. Any format soundfile reads: WAV 8/16/24/32-bit integer or float, FLAC, ...
  Names with a doubled extension (`x.wav.wav`, as the Speech Commands test set ships them) are
  read by content, not by name.
- `read_mono(path) -> (numpy float32 [samples], sample rate)`: the same checks and down-mix, no resampling.
- `audio_info(path) -> AudioInfo(sample_rate, channels, frames, duration)` from the header only.
- `write_audio(path, wav, sr)`: 16-bit PCM WAV, crash-safe (`rewire_lib.files.atomic`).

Problems raise `AudioError` naming the file and the reason (missing, unreadable, truncated,
empty, non-finite samples). Resampling and down-mixing are logged once per distinct source format.
"""
from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import NamedTuple, Union

import numpy as np
import soundfile as sf

from rewire_lib.files.atomic import atomic_path

# torch is imported inside the functions that need it, so that light worker processes
# (corpus synthesis) can write audio without paying for importing torch.

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

_noted = set()
_noted_lock = threading.Lock()


class AudioError(RuntimeError):
    """An audio file is missing, unreadable, empty or holds non-finite samples."""

    def __init__(self, path: PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class AudioInfo(NamedTuple):
    sample_rate: int
    channels: int
    frames: int
    duration: float  # seconds


def _note_once(key, message: str) -> None:
    with _noted_lock:
        if key in _noted:
            return
        _noted.add(key)
    log.info(message)


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise AudioError(path, "file does not exist")
    if not path.is_file():
        raise AudioError(path, "not a regular file")


def _check_wav_complete(path: Path) -> None:
    """A RIFF/WAVE file whose `data` chunk declares more bytes than the file holds was cut short
    (copy interrupted, disk full): libsndfile would silently read the part that is there."""
    import struct

    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return
            pos = 12
            while pos + 8 <= size:
                f.seek(pos)
                chunk = f.read(8)
                if len(chunk) < 8:
                    return
                cid, clen = chunk[:4], struct.unpack("<I", chunk[4:])[0]
                if cid == b"data":
                    have = size - (pos + 8)
                    if clen not in (0, 0xFFFFFFFF) and clen > have:  # 0 / -1: streamed, size never filled in
                        raise AudioError(path, f"truncated WAV: the header declares {clen} bytes of audio, "
                                               f"the file holds {have}")
                    return
                pos += 8 + clen + (clen & 1)
    except OSError as exc:
        raise AudioError(path, f"unreadable file ({exc})") from exc


def audio_info(path: PathLike) -> AudioInfo:
    """Sample rate, channel count, frame count and duration read from the file header."""
    path = Path(path)
    _check_exists(path)
    _check_wav_complete(path)
    try:
        info = sf.info(str(path))
    except Exception as exc:  # soundfile raises LibsndfileError / RuntimeError / TypeError
        raise AudioError(path, f"unreadable audio ({exc})") from exc
    if info.samplerate <= 0:
        raise AudioError(path, f"invalid sample rate {info.samplerate}")
    return AudioInfo(int(info.samplerate), int(info.channels), int(info.frames),
                     float(info.frames) / float(info.samplerate))


def resample(wav, orig_sr: int, target_sr: int):
    """Resample a [samples] or [channels, samples] float tensor (torchaudio, band-limited sinc)."""
    if orig_sr == target_sr:
        return wav
    import torchaudio.functional as AF

    return AF.resample(wav, int(orig_sr), int(target_sr))


def read_mono(path: PathLike):
    """(samples, sample rate) of `path`: a mono float32 numpy array (channels averaged) at the file's own
    rate, checked (exists, complete, readable, not empty, finite). Without torch, for light readers (the
    leakage audit's content fingerprints); `load_audio` is this plus resampling."""
    path = Path(path)
    _check_exists(path)
    _check_wav_complete(path)
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:
        raise AudioError(path, f"unreadable audio ({exc})") from exc
    if data.shape[0] == 0:
        raise AudioError(path, "empty audio (0 samples)")
    if not np.isfinite(data).all():
        raise AudioError(path, "non-finite samples (NaN or Inf)")
    if data.shape[1] > 1:
        _note_once(("mix", data.shape[1]), f"mixing {data.shape[1]} channels down to mono (first seen: {path})")
        data = data.mean(axis=1)
    else:
        data = data[:, 0]
    return np.ascontiguousarray(data, dtype=np.float32), int(sr)


def load_audio(path: PathLike, target_sr: int = 16000):
    """Mono float32 waveform (torch.FloatTensor [samples]) of `path` at `target_sr` Hz (None keeps the file's rate)."""
    import torch

    data, sr = read_mono(path)
    wav = torch.from_numpy(data)
    if target_sr is not None and sr != target_sr:
        _note_once(("resample", sr, target_sr), f"resampling {sr} Hz -> {target_sr} Hz (first seen: {path})")
        wav = resample(wav, sr, target_sr)
    return wav.to(torch.float32)


def write_audio(path: PathLike, wav, sr: int) -> None:
    """Write mono ([samples]) or multi-channel ([samples, channels]) audio as 16-bit PCM WAV,
    atomically. Accepts numpy arrays or torch tensors of floats in [-1, 1] (clipped)."""
    path = Path(path)
    if type(wav).__module__.startswith("torch"):
        wav = wav.detach().cpu().numpy()
    wav = np.asarray(wav)
    if wav.size == 0:
        raise AudioError(path, "refusing to write empty audio")
    if np.issubdtype(wav.dtype, np.floating):
        if not np.isfinite(wav).all():
            raise AudioError(path, "refusing to write non-finite samples (NaN or Inf)")
        wav = np.clip(wav, -1.0, 1.0).astype(np.float32)
    with atomic_path(path) as tmp:
        sf.write(str(tmp), wav, int(sr), subtype="PCM_16", format="WAV")
