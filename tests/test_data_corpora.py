"""Preparers for the real corpora, on tiny trees laid out as published (generated audio), and on
the shared FSDD / Speech Commands test set (header reads only)."""
import numpy as np
import pytest
import soundfile as sf

from data_prep import fluent_speech_commands, fsdd, iemocap, librispeech, speech_commands_test, speech_commands_v1, voxceleb1
from data_prep.common import PrepError
from rewire_lib.data.manifest import read_manifest
from rewire_lib.files.paths import shared_data_dir


def _audio(path, seconds=0.5, sr=16000, fmt="WAV", seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    x = np.random.default_rng(seed).uniform(-0.2, 0.2, int(sr * seconds)).astype(np.float32)
    sf.write(str(path), x, sr, subtype="PCM_16", format=fmt)


def _skipped(folder):
    return folder.joinpath("skipped.csv").read_text()


def test_librispeech(tmp_path):
    src = tmp_path / "LibriSpeech"
    for split, spk in (("train-clean-100", "19"), ("dev-clean", "84"), ("test-clean", "121")):
        ch = src / split / spk / "198"
        lines = []
        for u in range(3):
            uid = f"{spk}-198-{u:04d}"
            _audio(ch / f"{uid}.flac", fmt="FLAC", seed=u)
            lines.append(f"{uid} HELLO WORLD NUMBER {u}")
        lines.append(f"{spk}-198-0009 A LINE WITH NO AUDIO")
        (ch / f"{spk}-198.trans.txt").write_text("\n".join(lines) + "\n")
    _audio(src / "train-clean-100" / "19" / "198" / "19-198-0007.flac", fmt="FLAC")  # no transcript
    out = tmp_path / "out"
    librispeech.prepare(src, out, fractions=(0.5,))
    rows = read_manifest(out / "train.csv", required=("ID", "wrd", "phn", "spk_id"))
    assert len(rows) == 3 and rows[0]["wrd"] == "HELLO WORLD NUMBER 0" and rows[0]["spk_id"] == "19"
    assert rows[0]["phn"].startswith("h ə l")
    assert len(read_manifest(out / "test.csv")) == 3 and (out / "train_frac0.5.csv").exists()
    sk = _skipped(out)
    assert sk.count("no audio file") == 3 and "no transcript" in sk
    with pytest.raises(PrepError, match="folder not found"):
        librispeech.prepare(tmp_path / "nope", tmp_path / "o2")


def test_speech_commands_v1(tmp_path):
    src = tmp_path / "sc"
    dev, test = [], []
    for w in ("yes", "no", "bed", "marvin"):
        for i, spk in enumerate(("0a7c2a8d", "1b4c9b89", "2c5d0c90")):
            _audio(src / w / f"{spk}_nohash_0.wav", 1.0, seed=i)
            (dev if i == 1 else test if i == 2 else []).append(f"{w}/{spk}_nohash_0.wav")
    _audio(src / "_background_noise_" / "white_noise.wav", 10.0)
    (src / "validation_list.txt").write_text("\n".join(dev) + "\n")
    (src / "testing_list.txt").write_text("\n".join(test + ["yes/ffffffff_nohash_0.wav"]) + "\n")
    out = tmp_path / "out"
    speech_commands_v1.prepare(src, out)
    train = read_manifest(out / "train.csv", required=("label",))
    labels = {r["label"] for r in train}
    assert labels == {"yes", "no", "_unknown_", "_silence_"}
    assert sum(r["label"] == "_silence_" for r in train) == 8
    assert len(read_manifest(out / "dev.csv")) == 4 + 1 and "no audio file" in _skipped(out)


def test_fluent_speech_commands(tmp_path):
    src = tmp_path / "fluent_speech_commands_dataset"
    header = ",path,speakerId,transcription,action,object,location\n"
    for split, n in (("train", 4), ("valid", 2), ("test", 2)):
        lines = [header]
        for i in range(n):
            rel = f"wavs/speakers/2BqVo8kVB2Skwgyb/{split}-{i}.wav"
            _audio(src / rel, seed=i)
            act = "activate" if i % 2 else "deactivate"
            lines.append(f"{i},{rel},2BqVo8kVB2Skwgyb,Turn on the lights,{act},lights,kitchen\n")
        if split == "test":
            lines.append(f"9,wavs/speakers/x/t.wav,x,Dance,dance,none,none\n")  # unknown label
        (src / "data").mkdir(parents=True, exist_ok=True)
        (src / "data" / f"{split}_data.csv").write_text("".join(lines))
    out = tmp_path / "out"
    fluent_speech_commands.prepare(src, out)
    rows = read_manifest(out / "train.csv", required=("action", "object", "location", "wrd"))
    assert len(rows) == 4 and rows[0]["location"] == "kitchen"
    assert len(read_manifest(out / "test.csv")) == 2 and "unknown label" in _skipped(out)


def test_voxceleb1(tmp_path):
    src = tmp_path / "vox1"
    lines = []
    for s, spk in enumerate(("id10001", "id10002")):
        for k, split in enumerate((1, 1, 2, 3)):
            rel = f"{spk}/1zcIwhmdeo4/{k:05d}.wav"
            _audio(src / "wav" / rel, seed=k)
            lines.append(f"{split} {rel}")
    lines += ["3 id10003/abc/00001.wav", "7 id10001/x/1.wav"]
    (src / "iden_split.txt").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    voxceleb1.prepare(src, out)
    assert len(read_manifest(out / "train.csv", required=("label",))) == 4
    sk = _skipped(out)
    assert "does not exist" in sk and "expected '<1|2|3>" in sk


def test_iemocap(tmp_path):
    src = tmp_path / "IEMOCAP_full_release"
    emos = ["neu", "hap", "exc", "sad", "ang", "fru"]
    for k in range(1, 6):
        dialog = f"Ses0{k}F_impro01"
        lines = ["% header", ""]
        for i, emo in enumerate(emos):
            utt = f"{dialog}_{'FM'[i % 2]}{i:03d}"
            _audio(src / f"Session{k}" / "sentences" / "wav" / dialog / f"{utt}.wav", seed=i)
            lines.append(f"[1.0 - 2.0]\t{utt}\t{emo}\t[2.5, 2.5, 2.5]")
        lines.append(f"[1.0 - 2.0]\t{dialog}_F099\tsad\t[2.5, 2.5, 2.5]")  # no audio
        d = src / f"Session{k}" / "dialog" / "EmoEvaluation"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{dialog}.txt").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    iemocap.prepare(src, out)
    test = read_manifest(out / "fold2" / "test.csv", required=("label", "spk_id"))
    assert {r["spk_id"] for r in test} == {"Ses02F", "Ses02M"} and len(test) == 5
    assert {r["label"] for r in test} == {"neutral", "happy", "sad", "angry"}
    train = read_manifest(out / "fold2" / "train.csv") + read_manifest(out / "fold2" / "dev.csv")
    assert len(train) == 20 and not any(r["ID"].startswith("Ses02") for r in train)
    assert "no audio file" in _skipped(out / "fold1")


def test_fsdd_shared(tmp_path):
    out = tmp_path / "fsdd"
    fsdd.prepare(shared_data_dir() / "fsdd", out)
    d = {s: read_manifest(out / "digits" / f"{s}.csv", required=("label", "wrd")) for s in ("train", "dev", "test")}
    assert sum(len(v) for v in d.values()) == 3000 and d["train"][0]["sample_rate"] == "8000"
    assert not ({r["spk_id"] for r in d["train"]} & {r["spk_id"] for r in d["test"]})
    sp = {s: read_manifest(out / "speakers" / f"{s}.csv") for s in ("train", "dev", "test")}
    assert [len(sp[s]) for s in ("train", "dev", "test")] == [2400, 300, 300]
    assert len({r["label"] for r in sp["test"]}) == 6
    assert len({r["label"] for r in read_manifest(out / "digits" / "train_frac0.01.csv")}) == 10


def test_speech_commands_shared(tmp_path):
    out = tmp_path / "sc"
    speech_commands_test.prepare(shared_data_dir() / "speech_commands_v0.02_test", out)
    s = {k: read_manifest(out / f"{k}.csv", required=("label", "spk_id")) for k in ("train", "dev", "test")}
    assert sum(len(v) for v in s.values()) == 4890
    spk = {k: {r["spk_id"] for r in v} - {"none"} for k, v in s.items()}
    assert not (spk["train"] & spk["dev"] or spk["train"] & spk["test"] or spk["dev"] & spk["test"])
    assert all(len({r["label"] for r in v}) == 12 for v in s.values())
    assert any(r["wav"].endswith(".wav.wav") for r in s["train"])
    before = (out / "train.csv").read_text()
    speech_commands_test.prepare(shared_data_dir() / "speech_commands_v0.02_test", out, force=True)
    assert (out / "train.csv").read_text() == before
