"""eSpeak NG speech synthesis and IPA phonemization through ctypes, offline.

The shared library and its data come from the `espeakng-loader` wheel (no system package is
needed). libespeak-ng keeps global state (current voice, parameters, callback), so the process
holds one engine (`get_engine()`), every call goes through a lock, and a forked child
re-initialises the library on first use.

    from rewire_lib.views.espeak import synthesize, phonemize, phonemize_tokens
    wav, sr = synthesize("hello world", voice="en-us+f3", rate=160, pitch=60)   # float32, 22050
    phonemize("hello world")          # 'həlˈoʊ wˈɜːld'
    phonemize_tokens("hello world")   # ['h', 'ə', 'l', 'oʊ', '|', 'w', 'ɜː', 'l', 'd'] (no stress)

Reproducibility: the output of one call depends slightly on what the same process spoke before
(eSpeak keeps glottal-phase / pitch-flutter state across utterances, and neither re-initialising
nor `espeak_ng_SetRandSeed` resets it), so a repeat in one process can differ by a few samples.
A fresh process speaking the same sequence of calls gives the same bytes: deterministic corpora
render fixed chunks of utterances in fresh (spawned) worker processes (see data_prep/synth.py), and
`synthesize(..., fresh=True)` speaks each call from the engine's initial state (a child forked per call),
which the TTS views use (rewire_lib.views.tts.ESpeakBackend): a rendering then depends only on its text.

Voice names are eSpeak NG voice names, optionally with a variant after `+`
("en-us", "en+m2", "en-us+f3", "en-gb-x-rp+klatt").  A text that yields no audio gives an
empty array: callers count and skip it.
"""
from __future__ import annotations

import ctypes
import os
import threading
import zlib
from typing import List, Optional, Tuple

import numpy as np

INSTALL_HINT = "pip install espeakng-loader  (pinned in requirements.txt)"

# speak_lib.h constants
AUDIO_OUTPUT_SYNCHRONOUS = 2
espeakINITIALIZE_DONT_EXIT = 0x8000
espeakCHARS_UTF8 = 1
espeakENDPAUSE = 0x1000
POS_CHARACTER = 1
espeakRATE, espeakVOLUME, espeakPITCH, espeakRANGE, espeakWORDGAP = 1, 2, 3, 4, 7
espeakPHONEMES_IPA = 0x02
EE_OK = 0

# stress and length-free marks removed by `phonemize_tokens` (documented form: no stress)
STRESS_MARKS = "ˈˌ"
WORD_BOUNDARY = "|"

_SYNTH_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


class EspeakError(RuntimeError):
    """eSpeak NG is missing or failed."""


def _loader():
    try:
        import espeakng_loader  # noqa: WPS433
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise EspeakError(
            f"eSpeak NG is not available: the Python package 'espeakng-loader' is missing. "
            f"Install it with: {INSTALL_HINT}"
        ) from exc
    return espeakng_loader


def espeak_available() -> bool:
    """True when the eSpeak NG library can be loaded and initialised."""
    try:
        get_engine()
        return True
    except EspeakError:
        return False


class _Engine:
    """One initialised libespeak-ng; use `get_engine()` instead of making one."""

    def __init__(self) -> None:
        loader = _loader()
        try:
            lib_path = loader.get_library_path()
            data_path = loader.get_data_path()
        except Exception as exc:  # noqa: BLE001 - the loader raises RuntimeError/OSError
            raise EspeakError(f"espeakng-loader could not locate its files ({exc}); reinstall: {INSTALL_HINT}") from exc
        if not os.path.exists(lib_path):
            raise EspeakError(f"eSpeak NG library missing at {lib_path}; reinstall: {INSTALL_HINT}")
        try:
            lib = ctypes.CDLL(lib_path)
        except OSError as exc:
            raise EspeakError(f"cannot load eSpeak NG library {lib_path}: {exc}; reinstall: {INSTALL_HINT}") from exc
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
            ctypes.c_uint, ctypes.POINTER(ctypes.c_uint), ctypes.c_void_p,
        ]
        lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_char_p), ctypes.c_int, ctypes.c_int]
        # breath / roughness noise in some voice variants comes from libc rand(): reseeded per call
        try:
            lib.espeak_ng_SetRandSeed.restype = None
            lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
            self._set_seed_espeak = lib.espeak_ng_SetRandSeed
        except AttributeError:  # older library
            self._set_seed_espeak = None
        libc = ctypes.CDLL(None)
        libc.srand.argtypes = [ctypes.c_uint]
        libc.srand.restype = None
        self._srand = libc.srand
        self.lib = lib
        self.data_path = data_path
        self.lock = threading.RLock()
        self._chunks: List[np.ndarray] = []
        # keep a reference: ctypes callbacks must outlive their registration
        self._callback = _SYNTH_CALLBACK(self._on_samples)
        self.pid = -1
        self.sample_rate = 0
        self._init()

    def _init(self) -> None:
        parent = os.path.dirname(self.data_path.rstrip("/"))
        sr = self.lib.espeak_Initialize(
            AUDIO_OUTPUT_SYNCHRONOUS, 0, parent.encode(), espeakINITIALIZE_DONT_EXIT
        )
        if sr <= 0:
            raise EspeakError(f"espeak_Initialize failed (returned {sr}) with data at {self.data_path}")
        self.lib.espeak_SetSynthCallback(self._callback)
        self.sample_rate = int(sr)
        self.pid = os.getpid()
        self._voice: Optional[str] = None

    def _check_process(self) -> None:
        if self.pid != os.getpid():  # forked child: give it its own state
            self._chunks = []
            self._init()

    def _on_samples(self, wav, numsamples, _events) -> int:
        if wav and numsamples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(numsamples,)).copy())
        return 0

    def _set_voice(self, voice: str) -> None:
        if voice == self._voice:
            return
        err = self.lib.espeak_SetVoiceByName(voice.encode())
        if err != EE_OK:
            self._voice = None
            raise EspeakError(f"unknown eSpeak NG voice {voice!r} (error {err}); e.g. 'en-us', 'en-us+f3', 'en+m2'")
        self._voice = voice

    def _set(self, param: int, value: int, name: str) -> None:
        if self.lib.espeak_SetParameter(param, int(value), 0) != EE_OK:
            raise EspeakError(f"eSpeak NG rejected {name}={value}")

    def synthesize(self, text: str, voice: str = "en-us", rate: int = 175, pitch: int = 50,
                   pitch_range: int = 50, volume: int = 100, word_gap: int = 0,
                   seed: Optional[int] = None, fresh: bool = False) -> Tuple[np.ndarray, int]:
        args = (text, voice, rate, pitch, pitch_range, volume, word_gap, seed)
        with self.lock:
            if fresh and hasattr(os, "fork"):
                self._check_process()
                self._set_voice(voice)  # loading a voice costs ~0.2 s: done once here, not in every child
                return _in_forked_child(self._synthesize_in_child, args)
            return self._synthesize_locked(*args)

    def _synthesize_in_child(self, *args):
        self.pid = os.getpid()  # the parent's initialised engine, copied by fork, is this child's own
        return self._synthesize_locked(*args)

    def _synthesize_locked(self, text, voice, rate, pitch, pitch_range, volume, word_gap, seed):
        data = text.encode("utf-8")
        if seed is None:
            seed = zlib.crc32(repr((text, voice, rate, pitch, pitch_range, volume, word_gap)).encode())
        seed = int(seed) & 0x7FFFFFFF
        # the caller holds self.lock
        self._check_process()
        self._set_voice(voice)
        self._set(espeakRATE, rate, "rate")
        self._set(espeakPITCH, pitch, "pitch")
        self._set(espeakRANGE, pitch_range, "pitch_range")
        self._set(espeakVOLUME, volume, "volume")
        self._set(espeakWORDGAP, word_gap, "word_gap")
        self._chunks = []
        self._srand(seed)
        if self._set_seed_espeak is not None:
            self._set_seed_espeak(seed)
        buf = ctypes.create_string_buffer(data)
        err = self.lib.espeak_Synth(buf, len(data) + 1, 0, POS_CHARACTER, 0,
                                    espeakCHARS_UTF8 | espeakENDPAUSE, None, None)
        chunks, self._chunks = self._chunks, []
        if err != EE_OK:
            raise EspeakError(f"espeak_Synth failed (error {err}) for text {text[:60]!r}")
        wav = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
        if not wav.size or not np.any(wav):  # nothing spoken (empty text, punctuation only)
            return np.zeros(0, dtype=np.float32), self.sample_rate
        return wav.astype(np.float32) / 32768.0, self.sample_rate

    def phonemize(self, text: str, voice: str = "en-us", separator: Optional[str] = None) -> str:
        mode = espeakPHONEMES_IPA
        if separator:
            mode |= ord(separator) << 8
        data = text.encode("utf-8")
        parts: List[str] = []
        with self.lock:
            self._check_process()
            self._set_voice(voice)
            buf = ctypes.create_string_buffer(data)
            ptr = ctypes.c_char_p(ctypes.addressof(buf))
            # one clause per call; the library advances the pointer and sets it to NULL at the end
            for _ in range(len(data) + 2):
                if not ptr.value:
                    break
                out = self.lib.espeak_TextToPhonemes(ctypes.byref(ptr), espeakCHARS_UTF8, mode)
                if out:
                    parts.append(out.decode("utf-8", errors="replace").strip())
        return " ".join(p for p in parts if p)


def _in_forked_child(fn, args):
    """`fn(*args)` in a child forked for this one call; its result (or exception) comes back through a pipe.

    Why: libespeak-ng keeps state across utterances that no API call resets (see the module docstring), so
    a rendering depends on what the process spoke before. A child forked from a process that never
    synthesised in place starts every call from the same state: the bytes then depend only on the text and
    the settings, whichever worker or order renders it, as long as the forking process itself never speaks
    in place. The child runs only eSpeak and numpy and leaves with os._exit (no atexit handlers, no
    flushing of the parent's buffers)."""
    import pickle

    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        status = 1
        try:
            os.close(read_fd)
            try:
                payload = pickle.dumps(("ok", fn(*args)))
            except BaseException as exc:  # noqa: BLE001 - handed to the parent, which raises it
                payload = pickle.dumps(("error", EspeakError(f"{type(exc).__name__}: {exc}")
                                        if not isinstance(exc, EspeakError) else exc))
            with os.fdopen(write_fd, "wb") as pipe:
                pipe.write(payload)
            status = 0
        finally:
            os._exit(status)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        payload = pipe.read()
    _, code = os.waitpid(pid, 0)
    if not payload:
        raise EspeakError(f"the eSpeak NG child process ended without a result (wait status {code})")
    kind, value = pickle.loads(payload)
    if kind == "error":
        raise value
    return value


_ENGINE: Optional[_Engine] = None
_ENGINE_LOCK = threading.Lock()


def get_engine() -> _Engine:
    """The process-wide eSpeak NG engine (initialised on first use)."""
    global _ENGINE
    with _ENGINE_LOCK:
        if _ENGINE is None:
            _ENGINE = _Engine()
        return _ENGINE


def sample_rate() -> int:
    """eSpeak NG's output sample rate (22050 Hz)."""
    return get_engine().sample_rate


def synthesize(text: str, voice: str = "en-us", rate: int = 175, pitch: int = 50, pitch_range: int = 50,
               volume: int = 100, word_gap: int = 0, seed: Optional[int] = None,
               fresh: bool = False) -> Tuple[np.ndarray, int]:
    """Speak `text`; returns (float32 samples in [-1, 1], sample rate 22050).

    rate: words per minute (80..450); pitch, pitch_range: 0..100; volume: 0..200 (100 normal);
    word_gap: extra pause between words in units of 10 ms. Empty array if nothing is spoken.
    seed: seeds the noise (breath, roughness) of voice variants; default derived from the arguments.
    fresh: speak from the engine's initial state (in a child forked for the call), so the bytes do not
    depend on what this process spoke before; where fork is missing, in this process.
    """
    return get_engine().synthesize(text, voice=voice, rate=rate, pitch=pitch, pitch_range=pitch_range,
                                   volume=volume, word_gap=word_gap, seed=seed, fresh=fresh)


def phonemize(text: str, voice: str = "en-us") -> str:
    """IPA transcription of `text` (with eSpeak's stress marks; words separated by spaces)."""
    return get_engine().phonemize(text, voice=voice)


def phonemize_tokens(text: str, voice: str = "en-us", word_boundary: bool = True) -> List[str]:
    """IPA phoneme sequence of `text`: one token per phoneme (multi-letter phonemes such as 'oʊ',
    'tʃ' stay one token), stress marks ˈ ˌ removed, '|' between words when `word_boundary`."""
    ipa = get_engine().phonemize(text, voice=voice, separator="_")
    tokens: List[str] = []
    for word in ipa.split():
        phones = [p.strip(STRESS_MARKS) for p in word.split("_")]
        phones = [p for p in phones if p]
        if not phones:
            continue
        if tokens and word_boundary:
            tokens.append(WORD_BOUNDARY)
        tokens.extend(phones)
    return tokens
