"""Audio I/O: load_audio / audio_info / write_audio."""
import logging
import math

import numpy as np
import pytest
import soundfile as sf
import torch

from rewire_lib.data.audio import AudioError, audio_info, load_audio, write_audio


def _tone(sr, seconds=0.5, freq=440.0):
    t = np.arange(int(sr * seconds)) / sr
    return (0.5 * np.sin(2 * math.pi * freq * t)).astype(np.float32)


def test_round_trip_16k(tmp_path):
    x = _tone(16000)
    p = tmp_path / "a.wav"
    write_audio(p, x, 16000)
    info = audio_info(p)
    assert (info.sample_rate, info.channels, info.frames) == (16000, 1, x.size)
    assert info.duration == pytest.approx(0.5)
    assert sf.info(str(p)).subtype == "PCM_16"
    y = load_audio(p)
    assert isinstance(y, torch.Tensor) and y.dtype == torch.float32 and y.ndim == 1
    assert np.allclose(y.numpy(), x, atol=1e-4)
    write_audio(p, torch.from_numpy(x * 0.5), 16000)  # overwrite, tensor input
    assert load_audio(p).abs().max() < 0.3
    assert not [f for f in tmp_path.iterdir() if f.name.endswith(".tmp")]


def test_resample_8k_to_16k(tmp_path, caplog):
    p = tmp_path / "eight.wav"
    write_audio(p, _tone(8000, 1.0), 8000)
    with caplog.at_level(logging.INFO, logger="rewire_lib.data.audio"):
        y = load_audio(p, 16000)
        load_audio(p, 16000)
    assert y.numel() == 16000
    assert sum("resampling 8000" in r.message for r in caplog.records) <= 1
    assert load_audio(p, None).numel() == 8000


def test_stereo_mixdown(tmp_path):
    left = _tone(16000)
    st = np.stack([left, np.zeros_like(left)], axis=1)
    p = tmp_path / "st.wav"
    write_audio(p, st, 16000)
    assert audio_info(p).channels == 2
    y = load_audio(p)
    assert y.ndim == 1 and np.allclose(y.numpy(), left / 2, atol=1e-4)


@pytest.mark.parametrize("subtype,fmt,name", [
    ("PCM_U8", "WAV", "u8.wav"), ("PCM_24", "WAV", "p24.wav"), ("PCM_32", "WAV", "p32.wav"),
    ("FLOAT", "WAV", "f.wav"), ("PCM_16", "FLAC", "x.flac"), ("PCM_16", "WAV", "double.wav.wav"),
])
def test_formats(tmp_path, subtype, fmt, name):
    x = _tone(16000, 0.25)
    p = tmp_path / name
    sf.write(str(p), x, 16000, subtype=subtype, format=fmt)
    y = load_audio(p)
    assert y.numel() == x.size
    assert np.allclose(y.numpy(), x, atol=2e-2)


def test_errors(tmp_path):
    with pytest.raises(AudioError, match="does not exist"):
        load_audio(tmp_path / "missing.wav")
    with pytest.raises(AudioError, match="does not exist"):
        audio_info(tmp_path / "missing.wav")
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"this is not audio at all")
    with pytest.raises(AudioError, match="bad.wav.*unreadable"):
        load_audio(bad)
    with pytest.raises(AudioError, match="unreadable"):
        audio_info(bad)
    empty = tmp_path / "empty.wav"
    sf.write(str(empty), np.zeros(0, dtype=np.float32), 16000, subtype="PCM_16")
    with pytest.raises(AudioError, match="empty"):
        load_audio(empty)
    nan = tmp_path / "nan.wav"
    x = _tone(16000, 0.1)
    x[5] = np.nan
    sf.write(str(nan), x, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="non-finite"):
        load_audio(nan)
    with pytest.raises(AudioError, match="non-finite"):
        write_audio(tmp_path / "w.wav", x, 16000)
    with pytest.raises(AudioError, match="empty"):
        write_audio(tmp_path / "w.wav", np.zeros(0), 16000)
    with pytest.raises(AudioError, match="not a regular file"):
        load_audio(tmp_path)
