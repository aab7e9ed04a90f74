"""The embedded eSpeak NG corpus at a tiny scale: manifests, labels, splits, determinism."""
import filecmp

import pytest

from data_prep import synth
from rewire_lib.data.manifest import read_manifest

# espeakng-loader is a required dependency (requirements.txt): without it these tests fail, they do not skip.


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synth")
    synth.generate(folder, scale=0.01, seed=0, num_workers=2)
    return folder


def test_manifests(corpus):
    asr = {s: read_manifest(corpus / "asr" / f"{s}.csv", required=("ID", "duration", "wav", "spk_id", "wrd", "phn"))
           for s in ("train", "dev", "test")}
    spk = {s: {r["spk_id"] for r in rows} for s, rows in asr.items()}
    assert not (spk["train"] & spk["dev"]) and not (spk["train"] & spk["test"]) and not (spk["dev"] & spk["test"])
    r = asr["train"][0]
    assert r["sample_rate"] == "16000" and len(r["wrd"].split()) >= 3 and len(r["phn"].split()) >= 5
    assert "ˈ" not in r["phn"]
    ks = read_manifest(corpus / "ks" / "train.csv", required=("ID", "label"))
    assert all(float(x["duration"]) == 1.0 for x in ks)
    assert {x["label"] for x in ks} <= set(synth.KS_CLASSES)
    ic = read_manifest(corpus / "ic" / "train.csv", required=("action", "object", "location", "wrd"))
    assert all(x["action"] and x["object"] and x["location"] for x in ic)
    er = read_manifest(corpus / "er" / "train.csv", required=("label",))
    assert {x["label"] for x in er} <= {"neutral", "happy", "sad", "angry"}
    assert (corpus / "rewire" / "train.csv").exists() and (corpus / "sid" / "train.csv").exists()
    for task in ("asr", "ks", "ic", "er", "rewire", "sid"):
        assert (corpus / task / "train_frac0.1.csv").exists() and (corpus / task / "skipped.csv").exists()


def test_same_bytes_twice_and_skip(corpus, tmp_path):
    synth.generate(tmp_path, scale=0.01, seed=0, num_workers=1)
    for name in ("asr/train.csv", "ks/test.csv", "er/dev.csv"):
        a = (corpus / name).read_text().replace(str(corpus), "X")
        b = (tmp_path / name).read_text().replace(str(tmp_path), "X")
        assert a == b
    wavs = sorted(p.relative_to(corpus) for p in (corpus / "wav").rglob("*.wav"))
    assert wavs and all(filecmp.cmp(corpus / w, tmp_path / w, shallow=False) for w in wavs)
    before = (tmp_path / "prepared.json").stat().st_mtime_ns
    synth.generate(tmp_path, scale=0.01, seed=0)  # same arguments: skipped
    assert (tmp_path / "prepared.json").stat().st_mtime_ns == before


def test_plan_is_varied():
    items = synth.plan(scale=1.0, seed=0)
    asr = [i for i in items if i["task"] == "asr"]
    assert len({i["text"] for i in asr}) > 0.9 * len(asr)
    assert len({i["spk"]["voice"] for i in items}) >= 12
    assert {i["label"] for i in items if i["task"] == "ks"} == set(synth.KS_CLASSES)
