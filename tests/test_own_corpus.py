"""data_prep/own_folder.py on a small tree of real FSDD clips: every label source, transcripts,
speakers, unreadable files, other formats, the splits and what a recipe then reads."""
import json
import shutil

import numpy as np
import pytest
import soundfile as sf

from data_prep import own_folder
from data_prep.common import PrepError
from rewire_lib.data.dataio import audio_dataset
from rewire_lib.data.manifest import read_manifest

SPEAKERS = ("george", "jackson", "lucas", "theo")
WORDS = {1: "one", 2: "two"}
SPLITS = ("train", "dev", "test")


@pytest.fixture
def tree(tmp_path, fsdd_files):
    """src/<word>/<digit>_<speaker>_<take>.wav (16 clips), a stereo 16 kHz FLAC, an unreadable .wav
    and a text file."""
    by_name = {p.name: p for p in fsdd_files}
    src = tmp_path / "src"
    for digit, word in WORDS.items():
        (src / word).mkdir(parents=True)
        for spk in SPEAKERS:
            for take in (0, 1):
                shutil.copy(by_name[f"{digit}_{spk}_{take}.wav"], src / word / f"{digit}_{spk}_{take}.wav")
    data, sr = sf.read(str(by_name["2_theo_2.wav"]), dtype="float32")
    sf.write(str(src / "two" / "2_theo_2.flac"), np.stack([np.repeat(data, 2)] * 2, axis=1), 2 * sr)
    (src / "one" / "1_broken_0.wav").write_bytes(b"RIFF not really audio")
    (src / "notes.txt").write_text("not audio\n")
    return src


def _splits(out):
    return {s: read_manifest(out / f"{s}.csv") for s in SPLITS}


def _ids(splits):
    return sorted(r["ID"] for rows in splits.values() for r in rows)


GOOD = sorted([f"{w}__{d}_{s}_{t}" for d, w in WORDS.items() for s in SPEAKERS for t in (0, 1)] + ["two__2_theo_2"])


def test_subfolder_labels_and_speaker_pattern_give_speaker_disjoint_splits(tree, tmp_path):
    out = tmp_path / "out"
    kept = own_folder.prepare(tree, out, labels="subfolder", speaker=r"pattern:_(?P<speaker>[a-z]+)_\d+\.",
                              fractions=[0.5], seed=1)
    splits = _splits(out)
    assert _ids(splits) == GOOD and sum(len(v) for v in kept.values()) == len(GOOD)
    speakers = [{r["spk_id"] for r in splits[s]} for s in SPLITS]
    assert all(speakers) and not (speakers[0] & speakers[1] or speakers[0] & speakers[2] or speakers[1] & speakers[2])
    for rows in splits.values():
        for r in rows:
            assert r["label"] == r["file"].split("/")[0] and r["wav"] == str(tree / r["file"])
            assert float(r["duration"]) > 0
    flac = next(r for rows in splits.values() for r in rows if r["ID"] == "two__2_theo_2")
    assert (flac["sample_rate"], flac["channels"]) == ("16000", "2")
    wav = next(r for rows in splits.values() for r in rows if r["ID"] == "one__1_george_0")
    assert (wav["sample_rate"], wav["channels"]) == ("8000", "1")
    skipped = read_manifest_like(out / "skipped.csv")
    assert [(r["ID"], "unreadable" in r["reason"]) for r in skipped] == [("one__1_broken_0", True)]
    info = json.loads((out / "prepared.json").read_text())
    assert info["split"] == "speaker-disjoint" and info["skipped"] == 1
    assert "broken" not in sum(info["speakers_per_split"].values(), [])  # an unreadable file takes no slot
    half = read_manifest(out / "train_frac0.5.csv")
    assert {r["ID"] for r in half} < {r["ID"] for r in splits["train"]} and {r["label"] for r in half} == {"one", "two"}
    # the same command again is skipped; a changed folder is prepared again
    assert own_folder.prepare(tree, out, labels="subfolder", speaker=r"pattern:_(?P<speaker>[a-z]+)_\d+\.",
                              fractions=[0.5], seed=1) == {}
    shutil.copy(tree / "one" / "1_theo_0.wav", tree / "one" / "1_theo_7.wav")
    again = own_folder.prepare(tree, out, labels="subfolder", speaker=r"pattern:_(?P<speaker>[a-z]+)_\d+\.",
                               fractions=[0.5], seed=1)
    assert "one__1_theo_7" in {r["ID"] for rows in again.values() for r in rows}
    # what a recipe reads: resampled to 16 kHz mono
    with audio_dataset(out / "dev.csv").output_keys_as(["id", "sig", "duration"]) as ds:
        item = next(iter(ds))
        assert item["sig"].dim() == 1 and abs(item["sig"].numel() / 16000 - item["duration"]) < 0.01


def read_manifest_like(path):
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_pattern_labels_without_speakers_is_a_stated_random_split(tree, tmp_path, caplog):
    out = tmp_path / "out"
    with caplog.at_level("WARNING"):
        own_folder.prepare(tree, out, labels=r"pattern:/(\d)_", fractions=[])
    splits = _splits(out)
    assert _ids(splits) == GOOD
    assert all("spk_id" not in r for rows in splits.values() for r in rows)
    assert {r["label"] for rows in splits.values() for r in rows} == {"1", "2"}
    assert all(r["label"] == r["file"].split("/")[1][0] for rows in splits.values() for r in rows)
    assert json.loads((out / "prepared.json").read_text())["split"] == "random utterances"
    assert "NOT speaker-disjoint" in caplog.text
    assert [len(splits[s]) for s in SPLITS] == [13, 2, 2]  # 17 usable: 10 % each, rounded


def test_csv_labels_kaldi_transcripts_and_csv_speakers(tree, tmp_path):
    files = sorted(p for p in tree.rglob("*") if p.suffix in (".wav", ".flac") and "broken" not in p.name)
    labels = tmp_path / "labels.csv"
    labels.write_text("file,label\n" + "".join(f"{p.relative_to(tree).as_posix()},{'odd' if p.name[0] == '1' else 'even'}\n"
                                               for p in files))
    speakers = tmp_path / "speakers.csv"
    speakers.write_text("utt_id,speaker\n" + "".join(f"{p.stem},{p.stem.split('_')[1]}\n" for p in files))
    text = tmp_path / "text"
    lines = [f"{p.stem} {WORDS[int(p.name[0])]} {p.stem.split('_')[1]}" for p in files if p.stem != "2_lucas_1"]
    text.write_text("# utt_id transcript\n" + "\n".join(lines + ["2_nobody_0 two nobody"]) + "\n\n")
    out = tmp_path / "out"
    own_folder.prepare(tree, out, labels=f"csv:{labels}", speaker=f"csv:{speakers}", transcripts=str(text), fractions=[])
    rows = [r for rows in _splits(out).values() for r in rows]
    assert sorted(r["ID"] for r in rows) == [i for i in GOOD if i != "two__2_lucas_1"]
    for r in rows:
        digit, spk = r["file"].split("/")[1].split("_")[:2]
        assert r["label"] == ("odd" if digit == "1" else "even")
        assert r["wrd"] == f"{WORDS[int(digit)]} {spk}" and r["spk_id"] == spk
    reasons = {r["ID"]: r["reason"] for r in read_manifest_like(out / "skipped.csv")}
    assert reasons["two__2_lucas_1"].startswith("no wrd from --transcripts")
    assert reasons["2_nobody_0"].startswith("listed (line")  # a listed utterance with no audio file
    assert reasons["one__1_broken_0"].startswith("no spk_id from --speaker csv:")  # not in the lists
    assert len(reasons) == 3


def test_kaldi_labels_and_list_errors(tree, tmp_path):
    utt2label = tmp_path / "utt2label"
    utt2label.write_text("".join(f"{w}/{d}_{s}_{t} class{d}\n" for d, w in WORDS.items() for s in SPEAKERS for t in (0, 1))
                         + "two/2_theo_2.flac class2\n")
    out = tmp_path / "out"
    own_folder.prepare(tree, out, labels=f"kaldi:{utt2label}", speaker=r"pattern:_([a-z]+)_\d+\.", fractions=[])
    rows = [r for rows in _splits(out).values() for r in rows]
    assert sorted(r["ID"] for r in rows) == GOOD
    assert all(r["label"] == f"class{r['file'].split('/')[1][0]}" for r in rows)
    # a key that names two files, a line without a value, too few speakers, a bad option: one-line errors
    shutil.copy(tree / "one" / "1_theo_0.wav", tree / "two" / "1_theo_0.wav")
    (tmp_path / "amb").write_text("1_theo_0 x\n")
    with pytest.raises(PrepError, match=r"amb: line 1: key '1_theo_0' matches 2 audio files"):
        own_folder.prepare(tree, tmp_path / "o2", labels=f"kaldi:{tmp_path / 'amb'}")
    (tmp_path / "bad").write_text("one/1_theo_0 a\none/1_theo_1\n")
    with pytest.raises(PrepError, match=r"bad: line 2: expected `KEY LABEL`"):
        own_folder.prepare(tree, tmp_path / "o3", labels=f"kaldi:{tmp_path / 'bad'}")
    with pytest.raises(PrepError, match=r"2 speaker\(s\) \['george', 'jackson'\]: .* needs at least 3"):
        own_folder.prepare(tree, tmp_path / "o4", speaker=r"pattern:_(george|jackson)_")
    with pytest.raises(SystemExit) as exit_:
        own_folder.main(["--data_folder", str(tree), "--save_folder", str(tmp_path / "o5"), "--labels", "folder"])
    assert exit_.value.code == 2


def test_relative_paths_move_with_the_folder(tree, tmp_path, monkeypatch):
    """--relative_paths: wav relative to the save folder; audio and manifests moved together still load."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    shutil.move(str(tree), corpus / "audio")
    own_folder.prepare(corpus / "audio", corpus / "manifests", labels="subfolder", relative_paths=True, fractions=[])
    first = read_manifest_like(corpus / "manifests" / "train.csv")[0]
    assert first["wav"] == f"../audio/{first['file']}"
    moved = shutil.move(str(corpus), tmp_path / "elsewhere")
    monkeypatch.chdir(tmp_path)
    with audio_dataset(moved / "manifests" / "train.csv").output_keys_as(["id", "wav", "sig"]) as ds:
        item = next(iter(ds))
        assert item["wav"] == str(moved / "audio" / first["file"]) and item["sig"].numel() > 0


def test_stratified_split_keeps_every_label_in_every_split_and_maps_labels(tree, tmp_path):
    """Speaker identification on one's own recordings: the speaker is the label, so the split must keep every
    speaker in train, dev and test (a speaker-disjoint split cannot, a random one may not)."""
    out = tmp_path / "sid"
    own_folder.prepare(tree, out, labels=r"pattern:_(?P<label>[a-z]+)_\d+\.", speaker=r"pattern:_([a-z]+)_\d+\.",
                       label_map="george=g,jackson=j,lucas=l,theo=t", split="stratified", fractions=[], seed=3)
    splits = _splits(out)
    assert all({r["label"] for r in splits[s]} == {"g", "j", "l", "t"} for s in SPLITS), splits
    assert all(r["spk_id"] for rows in splits.values() for r in rows)  # the speaker column is kept
    assert _ids(splits) == GOOD
    info = json.loads((out / "prepared.json").read_text())
    assert info["split"] == "stratified by label" and info["label_map"]["theo"] == "t"
    with pytest.raises(PrepError, match=r"--label_map does not name the label\(s\) \['theo'\]"):
        own_folder.prepare(tree, tmp_path / "o2", labels=r"pattern:_(?P<label>[a-z]+)_\d+\.",
                           label_map="george=g,jackson=j,lucas=l", split="stratified")
    with pytest.raises(PrepError, match="--split stratified needs --labels"):
        own_folder.prepare(tree, tmp_path / "o3", split="stratified")
    with pytest.raises(PrepError, match=r"label\(s\) \['two/2_theo_2'\] have fewer than 3"):
        own_folder.prepare(tree, tmp_path / "o4", labels=r"pattern:^(one|two/2_theo_2)", split="stratified")
