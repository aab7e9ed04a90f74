"""TTS backends, the disk cache (hits, skips, two real processes at once) and the pre-synthesis CLI."""
import csv
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from rewire_lib.views.tts import (ESpeakBackend, FestivalBackend, TTSBackend, TTSCache, TTSFailure, TTSUnavailable,
                            make_backend, text_key)

REPO = Path(__file__).resolve().parent.parent
HAVE_FESTIVAL = shutil.which("text2wave") is not None
needs_festival = pytest.mark.skipif(
    not HAVE_FESTIVAL, reason="Festival's text2wave is not installed (Debian package `festival`)")


class CountingBackend(TTSBackend):
    """Deterministic stub: a tone whose length grows with the text; counts its calls."""

    name = "stub"

    def __init__(self, fail_on=()):
        self.calls = []
        self.fail_on = set(fail_on)

    def settings(self):
        return {"kind": "tone"}

    def synthesize(self, text, tmp_dir=None):
        self.calls.append(text)
        if text in self.fail_on:
            raise TTSFailure("stub refuses")
        if not any(c.isalnum() for c in text):
            return np.zeros(0, dtype=np.float32)
        n = 1600 * len(text)
        return (0.3 * np.sin(np.arange(n) * 0.05)).astype(np.float32)


def _no_tmp_left(folder):
    return [p.name for p in Path(folder).rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]


# ---- backends -------------------------------------------------------------------------------

def test_espeak_backend_16k_plausible_length():
    from rewire_lib.views import espeak

    backend = ESpeakBackend()
    wav = backend.synthesize("hello world")
    assert wav.dtype == np.float32 and wav.ndim == 1
    raw, sr = espeak.synthesize("hello world")
    assert sr == 22050
    # resampled to 16 kHz (eSpeak's length varies by ~1-2% with what the engine said before)
    assert abs(len(wav) - len(raw) * 16000 / 22050) <= 0.05 * len(wav)
    assert 0.4 < len(wav) / 16000 < 3.0
    assert np.abs(wav).max() > 0.05 and np.isfinite(wav).all()
    longer = backend.synthesize("hello world, this is a much longer sentence to read aloud")
    assert len(longer) > 2 * len(wav)


def test_espeak_digits_and_non_ascii_do_not_crash():
    backend = ESpeakBackend(voice="en-us", rate=160, pitch=60)
    assert backend.settings() == {"voice": "en-us", "rate": 160, "pitch": 60, "pitch_range": 50, "state": "fresh"}
    digits = backend.synthesize("1999")
    assert len(digits) / 16000 > 0.5  # read as "nineteen ninety-nine"
    assert len(backend.synthesize("café naïve – “quoted” 日本")) > 0
    assert len(backend.synthesize("...")) == 0  # nothing spoken: empty, the cache skips it


def test_espeak_bad_voice_is_a_config_error():
    with pytest.raises(ValueError, match="voice"):
        ESpeakBackend(voice="no-such-voice-xx")


@needs_festival
def test_festival_backend(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    backend = FestivalBackend()
    assert backend.settings() == {"voice": None, "ascii_fold": True}
    wav = backend.synthesize("hello world 42", tmp_dir=str(tmp_path / "work"))
    assert wav.dtype == np.float32 and 0.5 < len(wav) / 16000 < 4.0
    assert np.abs(wav).max() > 0.05
    # non-ASCII is folded, digits read as numbers; text with nothing to say gives no audio, no crash
    assert len(backend.synthesize("café 1999 日本", tmp_dir=str(tmp_path / "work"))) > 0
    assert len(backend.synthesize("日本", tmp_dir=str(tmp_path / "work"))) == 0
    assert len(backend.synthesize("!!! ...", tmp_dir=str(tmp_path / "work"))) == 0
    assert len(backend.synthesize("")) == 0
    # temporary files are unique and removed; nothing is written to the working directory
    assert list((tmp_path / "work").iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]
    named = FestivalBackend(voice="kal_diphone")
    assert len(named.synthesize("hello", tmp_dir=str(tmp_path / "work"))) > 0


def test_missing_backend_errors_name_the_package(monkeypatch):
    with pytest.raises(TTSUnavailable, match=r"apt-get install festival"):
        FestivalBackend(text2wave="/nonexistent/text2wave")
    with pytest.raises(TTSUnavailable, match=r"Debian package `festival`"):
        make_backend("festival", text2wave="no-such-text2wave-program")
    lazy = FestivalBackend(text2wave="/nonexistent/text2wave", require=False)
    with pytest.raises(TTSUnavailable, match="festival"):
        lazy.synthesize("hello")

    from rewire_lib.views import espeak

    def broken():
        raise espeak.EspeakError("library missing")

    monkeypatch.setattr(espeak, "get_engine", broken)
    with pytest.raises(TTSUnavailable, match="espeakng-loader"):
        make_backend("espeak")
    with pytest.raises(ValueError, match="unknown TTS backend"):
        make_backend("sam")


def test_make_backend_drops_none_settings():
    b = make_backend("espeak", voice=None, rate=150)
    assert isinstance(b, ESpeakBackend) and b.voice == "en-us" and b.rate == 150


# ---- cache ----------------------------------------------------------------------------------

def test_cache_hit_does_not_resynthesise(tmp_path):
    backend = CountingBackend()
    cache = TTSCache(tmp_path, backend)
    a = cache.get("hello there")
    assert isinstance(a, torch.Tensor) and a.dtype == torch.float32 and len(a) == 1600 * 11
    b = cache.get("  hello there \n")  # key = text after strip()
    assert torch.equal(a, b)
    assert backend.calls == ["hello there"]
    # a fresh cache object on the same folder (another run, another epoch) reuses the file
    backend2 = CountingBackend()
    cache2 = TTSCache(tmp_path, backend2)
    assert torch.equal(cache2.get("hello there"), a) and backend2.calls == []
    assert cache.path("hello there").name == text_key("hello there") + ".wav"
    info = json.loads((cache.folder / "settings.json").read_text())
    assert info["backend"] == "stub" and info["settings"] == {"kind": "tone"}
    assert cache.folder.parent.name == "stub"
    assert cache.stats.done == 1 and cache.stats.cached == 1
    assert _no_tmp_left(tmp_path) == []


def test_cache_key_depends_on_settings(tmp_path):
    a = TTSCache(tmp_path, ESpeakBackend(rate=175))
    b = TTSCache(tmp_path, ESpeakBackend(rate=150))
    c = TTSCache(tmp_path, ESpeakBackend(rate=175))
    assert a.folder != b.folder and a.folder == c.folder


def test_cache_skips_are_counted_recorded_and_not_retried(tmp_path, caplog):
    backend = CountingBackend(fail_on={"bad text"})
    cache = TTSCache(tmp_path, backend)
    with caplog.at_level("WARNING"):
        assert cache.get("...") is None
        assert cache.get("bad text") is None
    assert "skipping" in caplog.text
    assert cache.get("") is None and cache.get(None) is None  # empty: skipped, backend not called
    assert backend.calls == ["...", "bad text"]
    assert cache.get("...") is None and cache.get("bad text") is None
    assert backend.calls == ["...", "bad text"]  # remembered on disk
    assert cache.stats.skipped == 6
    reasons = {r["text"]: r["reason"] for r in cache.skipped()}
    assert reasons["..."] == "no audio" and reasons["bad text"].startswith("synthesis failed")
    stats = cache.synthesize_missing(["...", "ok", "ok", ""], num_workers=1, progress=False)
    assert (stats.done, stats.cached, stats.skipped) == (1, 0, 2)
    rows = list(csv.DictReader(open(cache.folder / "skipped.csv")))
    assert {r["text"] for r in rows} == {"...", "bad text"}
    retry = TTSCache(tmp_path, CountingBackend(), retry_skipped=True)
    assert retry.get("bad text") is not None


def test_synthesize_missing_parallel_and_cached(tmp_path):
    cache = TTSCache(tmp_path, ESpeakBackend())
    texts = ["one", "two", "three", "two", "four five", "", "..."]
    stats = cache.synthesize_missing(texts, num_workers=2, progress=False)
    assert (stats.done, stats.cached, stats.skipped) == (4, 0, 2)
    assert stats.reasons == {"empty text": 1, "no audio": 1}
    again = cache.synthesize_missing(texts, num_workers=2, progress=False)
    assert (again.done, again.cached, again.skipped) == (0, 4, 2)
    wav = cache.get("four five")
    ref = ESpeakBackend().synthesize("four five")
    # eSpeak's length depends a little (~1-2%) on what the engine said before in the process
    assert abs(len(wav) - len(ref)) <= 0.05 * len(ref)
    assert _no_tmp_left(tmp_path) == []


def _fill_worker(root, backend_name, texts, barrier, queue):
    try:
        cache = TTSCache(root, make_backend(backend_name))
        barrier.wait(timeout=60)
        statuses = [cache.ensure(t)[0] for t in texts]
        queue.put(("ok", statuses))
    except BaseException as exc:  # report to the parent instead of dying silently
        queue.put(("error", repr(exc)))


def _two_process_fill(root, backend_name, texts):
    ctx = multiprocessing.get_context("spawn")
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_fill_worker, args=(str(root), backend_name, texts, barrier, queue))
             for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert all(r[0] == "ok" for r in results), results
    return [r[1] for r in results]


@pytest.mark.parametrize("backend_name,num_texts", [
    ("espeak", 24),
    pytest.param("festival", 3, marks=needs_festival),
])
def test_two_processes_fill_one_cache(tmp_path, backend_name, num_texts):
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]
    texts = [f"{words[i % 8]} {i} {words[(3 * i) % 8]}" for i in range(num_texts)] + ["", "..."]
    results = _two_process_fill(tmp_path / "shared", backend_name, texts)
    for statuses in results:
        assert statuses[-2:] == ["skipped", "skipped"]
        assert set(statuses[:-2]) <= {"done", "cached"}
    # every rendering is complete and matches a serial, single-process fill (eSpeak's output
    # length depends a little, ~1-2%, on what the engine said before, so lengths are compared within 5%)
    shared = TTSCache(tmp_path / "shared", make_backend(backend_name))
    serial = TTSCache(tmp_path / "serial", make_backend(backend_name))
    for text in texts[:-2]:
        path = shared.path(text)
        assert path.exists(), text
        info = sf.info(str(path))
        got, sr = sf.read(str(path), dtype="int16")
        assert sr == 16000 and info.frames == len(got) and np.abs(got).max() > 1000, text
        serial.ensure(text)
        want, _ = sf.read(str(serial.path(text)), dtype="int16")
        assert abs(len(got) - len(want)) <= 0.05 * len(want), text
        if backend_name == "festival":  # deterministic
            assert np.array_equal(got, want), text
    assert len(list(shared.folder.glob("*.wav"))) == num_texts
    assert [r["text"] for r in shared.skipped()] == ["..."]
    assert _no_tmp_left(tmp_path) == []


# ---- command --------------------------------------------------------------------------------

def _run_cli(*args):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "rewire_lib.views.tts", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_cli_on_a_five_row_manifest(tmp_path):
    manifest = tmp_path / "m.csv"
    with open(manifest, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["ID", "duration", "wav", "wrd"])
        for i, text in enumerate(["HELLO WORLD", "the year 1999 café", "one two three", "HELLO WORLD", ""]):
            w.writerow([f"u{i}", "1.0", f"/nowhere/u{i}.wav", text])
    cache_root = tmp_path / "cache"
    first = _run_cli("--manifest", str(manifest), "--backend", "espeak", "--cache", str(cache_root),
                     "--num-workers", "2")
    assert first.returncode == 0, first.stderr
    assert "done=3 cached=0 skipped=1" in first.stdout
    assert "empty text" in first.stdout
    assert "TTS espeak" in first.stderr  # the tqdm bar
    folder = next((cache_root / "espeak").iterdir())
    assert len(list(folder.glob("*.wav"))) == 3
    second = _run_cli("--manifest", str(manifest), "--cache", str(cache_root), "--num-workers", "2",
                      "--no-progress")
    assert second.returncode == 0, second.stderr
    assert "done=0 cached=3 skipped=1" in second.stdout

    bad = tmp_path / "bad.csv"
    bad.write_text("ID,duration,wav\nu0,1.0,/x.wav\n")
    out = _run_cli("--manifest", str(bad), "--cache", str(cache_root))
    assert out.returncode == 2 and "no column 'wrd'" in out.stderr
