"""data_prep/fsdd_connected.py: connected digits cut from real FSDD recordings of one speaker."""
import json

import soundfile as sf

from data_prep import fsdd_connected as fc
from data_prep.fsdd import DIGITS
from rewire_lib.manifest import read_manifest
from rewire_lib.paths import shared_data_dir

FSDD = shared_data_dir() / "fsdd"
SPLITS = ("train", "dev", "test")


def _prepare(out, seed=0):
    fc.prepare(FSDD, out, seed=seed, utterances=(6, 2, 2), fractions=[0.5])
    return {s: read_manifest(out / f"{s}.csv", required=("ID", "duration", "wav", "spk_id", "wrd", "phn", "sources"))
            for s in SPLITS}


def test_connected_digits_are_deterministic_speaker_disjoint_and_transcribed(tmp_path, fsdd_files):
    a = _prepare(tmp_path / "a")
    b = _prepare(tmp_path / "b")
    strip = lambda rows: [{k: v for k, v in r.items() if k != "wav"} for r in rows]  # noqa: E731
    assert all(strip(a[s]) == strip(b[s]) for s in SPLITS) and [len(a[s]) for s in SPLITS] == [6, 2, 2]
    for s in SPLITS:
        for ra, rb in zip(a[s], b[s]):
            assert open(ra["wav"], "rb").read() == open(rb["wav"], "rb").read()
    # speaker-disjoint, with fsdd.py's speaker split for the same seed
    speakers = {s: {r["spk_id"] for r in a[s]} for s in SPLITS}
    plan = json.loads((tmp_path / "a" / "prepared.json").read_text())["speaker_split"]
    assert all(speakers[s] <= set(plan[s]) for s in SPLITS)
    assert not (set(plan["train"]) & set(plan["dev"]) or set(plan["train"]) & set(plan["test"])
                or set(plan["dev"]) & set(plan["test"]))
    assert plan == {s: sorted(k for k, v in fc.group_split(["george", "jackson", "lucas", "nicolas", "theo", "yweweler"],
                                                              fc.SPEAKER_RATIOS, 0).items() if v == s) for s in SPLITS}
    # the transcripts are the digits actually joined, each from the utterance's own speaker
    for s in SPLITS:
        for r in a[s]:
            sources = r["sources"].split()
            assert 2 <= len(sources) <= 5
            assert r["wrd"].split() == [DIGITS[int(src.split("_")[0])] for src in sources]
            assert {src.split("_")[1] for src in sources} == {r["spk_id"]}
            assert r["phn"] == " ".join(fc.LEXICON[w] for w in r["wrd"].split())
            assert r["ID"].endswith("_" + "".join(src.split("_")[0] for src in sources))
            info = sf.info(r["wav"])
            assert (info.samplerate, info.channels) == (8000, 1) and r["sample_rate"] == "8000"
            trimmed = sum(len(fc.trim_silence(sf.read(str(FSDD / "recordings" / f"{src}.wav"), dtype="float32")[0]))
                          for src in sources)
            gaps = info.frames - trimmed
            assert (len(sources) + 1) * 0.05 * 8000 - 1 <= gaps <= (len(sources) + 1) * 0.25 * 8000 + 1
    assert {r["ID"] for r in read_manifest(tmp_path / "a" / "train_frac0.5.csv")} < {r["ID"] for r in a["train"]}
    # another seed, other utterances; the same command again is skipped
    c = _prepare(tmp_path / "c", seed=1)
    assert strip(c["train"]) != strip(a["train"])
    assert fc.prepare(FSDD, tmp_path / "a", seed=0, utterances=(6, 2, 2), fractions=[0.5]) == {}


def test_trim_silence_removes_quiet_ends():
    import numpy as np

    tone = 0.5 * np.sin(np.arange(800) / 3).astype(np.float32)
    x = np.concatenate([np.zeros(1600, np.float32), tone, 1e-4 * np.ones(2400, np.float32)])
    y = fc.trim_silence(x)
    assert 800 <= len(y) <= 800 + 4 * fc.FRAME  # a frame of margin each side, frame-aligned
    assert abs(y).max() > 0.4 and y[0] == 0.0  # faded in
