"""eSpeak NG wrapper: synthesis and IPA phonemization (offline, fast)."""
import numpy as np
import pytest

from rewire_lib.views import espeak

# espeakng-loader is a required dependency (requirements.txt): without it these tests fail with its install hint.


def test_synthesize_hello_world():
    wav, sr = espeak.synthesize("hello world")
    assert sr == 22050
    assert wav.dtype == np.float32 and wav.ndim == 1
    assert wav.size / sr > 0.3
    assert np.abs(wav).max() > 0.05 and np.abs(wav).max() <= 1.0
    # enough non-silent frames
    frames = wav[: wav.size // 220 * 220].reshape(-1, 220)
    assert (np.sqrt((frames ** 2).mean(1)) > 0.01).sum() * 0.01 > 0.2


def test_synthesize_repeatable_and_voices_differ():
    # eSpeak's glottal phase / flutter state carries over between utterances of one process, so
    # repeats match closely but not bit for bit (data_prep/synth.py renders in fresh processes).
    a, _ = espeak.synthesize("seven", voice="en-us+f3", pitch=70)
    b, _ = espeak.synthesize("seven", voice="en-us+f3", pitch=70)
    c, _ = espeak.synthesize("seven", voice="en+m2", pitch=30, rate=250)
    assert abs(a.size - b.size) < 0.02 * a.size
    assert abs(a.size - c.size) > 0.05 * a.size
    slow, _ = espeak.synthesize("one two three", rate=100)
    fast, _ = espeak.synthesize("one two three", rate=300)
    assert slow.size > fast.size


def test_empty_text_gives_empty_audio():
    for text in ("", "   ", "..."):
        wav, sr = espeak.synthesize(text)
        assert wav.size == 0 and sr == 22050


def test_unknown_voice_is_a_clear_error():
    with pytest.raises(espeak.EspeakError, match="voice"):
        espeak.synthesize("hello", voice="no-such-voice-xx")
    wav, _ = espeak.synthesize("hello")  # engine still usable
    assert wav.size > 0


def test_phonemize_ipa():
    ipa = espeak.phonemize("hello")
    assert "h" in ipa and ("ə" in ipa or "l" in ipa)
    two = espeak.phonemize("hello world. how are you?")  # several clauses: all consumed
    assert "w" in two and "j" in two


def test_phonemize_tokens():
    toks = espeak.phonemize_tokens("hello church")
    assert toks[:2] == ["h", "ə"]
    assert "|" in toks and "tʃ" in toks
    assert not any(m in t for t in toks for m in "ˈˌ")
    assert "|" not in espeak.phonemize_tokens("hello church", word_boundary=False)


def test_fresh_synthesis_does_not_depend_on_what_was_spoken_before():
    first, _ = espeak.synthesize("seven", fresh=True)
    espeak.synthesize("three four", fresh=True)
    again, _ = espeak.synthesize("seven", fresh=True)
    assert first.size > 0 and np.array_equal(first, again)


_RENDER = """
import hashlib, sys
from rewire_lib.views.tts import make_backend
backend = make_backend("espeak")
for text in sys.argv[1:-1]:
    backend.synthesize(text)
print(hashlib.sha1(backend.synthesize(sys.argv[-1]).tobytes()).hexdigest())
"""


def test_tts_workers_render_a_text_the_same_whatever_they_rendered_before():
    """The study's TTS stage shares texts between workers differently each run; the neutral view's audio
    (and so the rewired encoder) must not depend on that."""
    import subprocess
    import sys

    def render(*texts):
        out = subprocess.run([sys.executable, "-c", _RENDER, *texts], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout.strip()

    assert render("seven") == render("three", "one two", "seven")


def test_an_error_in_the_forked_child_reaches_the_caller():
    def boom():
        raise ValueError("boom")

    with pytest.raises(espeak.EspeakError, match="ValueError: boom"):
        espeak._in_forked_child(boom, ())
    with pytest.raises(espeak.EspeakError, match="voice"):
        espeak.synthesize("hello", voice="no-such-voice-xx", fresh=True)
