"""data_prep/fsdd_connected.py: connected digits cut from real FSDD recordings of one speaker."""
import json

import soundfile as sf

from data_prep import fsdd_connected as fc
from data_prep.fsdd import DIGITS
from rewire_lib.data.manifest import read_manifest
from rewire_lib.files.paths import shared_data_dir

FSDD = shared_data_dir() / "fsdd"
SPLITS = ("train", "dev", "test")


COLUMNS = ("ID", "duration", "wav", "spk_id", "wrd", "phn", "sources")


def _prepare(out, seed=0):
    fc.prepare(FSDD, out, seed=seed, per_speaker=3, dev_utterances=2, fractions=[0.5])
    return {s: read_manifest(out / f"{s}.csv", required=COLUMNS) for s in SPLITS}


def test_connected_digits_are_deterministic_speaker_disjoint_and_transcribed(tmp_path, fsdd_files):
    a = _prepare(tmp_path / "a")
    b = _prepare(tmp_path / "b")
    strip = lambda rows: [{k: v for k, v in r.items() if k != "wav"} for r in rows]  # noqa: E731
    # 4 training speakers x 3, the first 2 of the dev speaker's 3, the test speaker's 3
    assert all(strip(a[s]) == strip(b[s]) for s in SPLITS) and [len(a[s]) for s in SPLITS] == [12, 2, 3]
    for s in SPLITS:
        for ra, rb in zip(a[s], b[s]):
            assert open(ra["wav"], "rb").read() == open(rb["wav"], "rb").read()
    # speaker-disjoint, with fsdd.py's speaker split for the same seed
    speakers = {s: {r["spk_id"] for r in a[s]} for s in SPLITS}
    plan = json.loads((tmp_path / "a" / "prepared.json").read_text())["speaker_split"]
    assert all(speakers[s] == set(plan[s]) for s in SPLITS)
    assert not (set(plan["train"]) & set(plan["dev"]) or set(plan["train"]) & set(plan["test"])
                or set(plan["dev"]) & set(plan["test"]))
    assert plan == {s: sorted(k for k, v in fc.group_split(["george", "jackson", "lucas", "nicolas", "theo", "yweweler"],
                                                              fc.SPEAKER_RATIOS, 0).items() if v == s) for s in SPLITS}
    # the transcripts are the digits actually joined, each from the utterance's own speaker
    for s in SPLITS:
        for r in a[s]:
            sources = r["sources"].split()
            assert [p.rsplit("/", 1)[-1][:-4] for p in r["source_wavs"].split("|")] == sources  # resolvable paths
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
    assert fc.prepare(FSDD, tmp_path / "a", seed=0, per_speaker=3, dev_utterances=2, fractions=[0.5]) == {}


def test_speaker_folds_hold_out_every_speaker_once_and_fold1_is_the_default_split(tmp_path, fsdd_files):
    default = _prepare(tmp_path)
    folds = {f"fold{k}": {s: read_manifest(tmp_path / "folds" / f"fold{k}" / f"{s}.csv", required=COLUMNS)
                          for s in SPLITS} for k in range(1, 7)}
    assert sorted(p.name for p in (tmp_path / "folds").iterdir()) == sorted(folds)
    assert all(folds["fold1"][s] == default[s] for s in SPLITS)
    speakers = lambda rows: {r["spk_id"] for r in rows}  # noqa: E731
    tests = [speakers(f["test"]) for f in folds.values()]
    devs = [speakers(f["dev"]) for f in folds.values()]
    everyone = {"george", "jackson", "lucas", "nicolas", "theo", "yweweler"}
    assert all(len(t) == 1 and len(d) == 1 for t, d in zip(tests, devs))
    assert set().union(*tests) == everyone and set().union(*devs) == everyone  # each speaker tested once, dev once
    for f in folds.values():
        assert speakers(f["train"]) == everyone - speakers(f["test"]) - speakers(f["dev"])
        assert [len(f[s]) for s in SPLITS] == [12, 2, 3]
    # a speaker's utterances are the same files in every fold (one pool, re-cut): the test pool of a fold
    # is the training pool of that speaker elsewhere
    test3 = folds["fold3"]["test"]
    spk = test3[0]["spk_id"]
    assert [r for r in folds["fold1"]["train"] if r["spk_id"] == spk] == test3
    plan = json.loads((tmp_path / "prepared.json").read_text())["folds"]
    assert {k: v["test"] for k, v in plan.items()} == {k: sorted(t) for k, t in zip(folds, tests)}


def test_trim_silence_removes_quiet_ends():
    import numpy as np

    tone = 0.5 * np.sin(np.arange(800) / 3).astype(np.float32)
    x = np.concatenate([np.zeros(1600, np.float32), tone, 1e-4 * np.ones(2400, np.float32)])
    y = fc.trim_silence(x)
    assert 800 <= len(y) <= 800 + 4 * fc.FRAME  # a frame of margin each side, frame-aligned
    assert abs(y).max() > 0.4 and y[0] == 0.0  # faded in
