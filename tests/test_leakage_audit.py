"""The leakage audit (rewire_lib.data.leakage, rewire_study.audit): each constructed leak is found by audio content,
a clean design passes with zeros, a rewiring overlap with dev/test is a one-line error naming what it found
unless --allow-rewire-overlap, which marks the report; pre-training read from the encoder's folder."""
import csv
import json
import shutil

import numpy as np
import pytest
import soundfile as sf

from rewire_lib.data.leakage import (FingerprintCache, compare, pretraining_manifests, read_set, row_recordings,
                                transcripts)
from rewire_study.audit import marked_cells, run_audit, write_audit_csv
from rewire_study.config import build_parser, parse_args
from rewire_study.units import StageError

SR = 8000


def wav(path, seed, stereo=False, fmt="WAV"):
    """A short noise recording (16-bit samples, written as they are: a lossless copy), distinct per seed."""
    x = np.random.default_rng(seed).integers(-16000, 16000, SR // 5).astype(np.int16)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.stack([x, x], 1) if stereo else x, SR, subtype="PCM_16", format=fmt)
    return path


def manifest(path, rows):
    """A SpeechBrain CSV of rows (dicts with ID, wav, spk_id, wrd[, source_wavs])."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = ["ID", "duration", "wav", "spk_id", "wrd"]
    fields += ["source_wavs"] if any("source_wavs" in r for r in rows) else []
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fields)
        w.writeheader()
        w.writerows({"duration": "0.2", **r, "wav": str(r["wav"])} for r in rows)
    return path


def test_each_constructed_leak_is_found_and_a_clean_design_gives_zeros(tmp_path):
    a = tmp_path / "audio"
    test_clip, clip_of_connected, other = wav(a / "t1.wav", 1), wav(a / "c1.wav", 2), wav(a / "t2.wav", 3)
    renamed = tmp_path / "elsewhere" / "renamed_copy.flac"  # the test file again, another name and format
    wav(renamed, 1, fmt="FLAC")
    stereo = wav(a / "stereo_copy.wav", 3, stereo=True)  # channels averaged: the same audio as t2
    rewiring = manifest(tmp_path / "rw.csv", [
        {"ID": "rw_a", "wav": renamed, "spk_id": "anna", "wrd": "three one"},
        {"ID": "rw_b", "wav": clip_of_connected, "spk_id": "bob", "wrd": "four"}])
    connected = wav(a / "joined.wav", 9)  # its own new file, cut from c1.wav
    test = manifest(tmp_path / "test.csv", [
        {"ID": "t1", "wav": test_clip, "spk_id": "carl", "wrd": "three"},
        {"ID": "joined", "wav": connected, "spk_id": "carl", "wrd": "four five", "source_wavs": "audio/c1.wav"},
        {"ID": "t2", "wav": other, "spk_id": "carl", "wrd": "six"}])
    dev = manifest(tmp_path / "dev.csv", [{"ID": "d1", "wav": stereo, "spk_id": "anna", "wrd": "one"}])
    cache = FingerprintCache(tmp_path / "fp.json")
    src = read_set([rewiring], cache)
    found = compare(src, read_set([test], cache))
    assert found["shared_utterances"] == 2 and found["first"] == ["t1", "joined"]
    assert found["first_matches"] == ["renamed_copy.flac", "c1.wav"] and found["shared_recordings"] == 2
    assert found["shared_speakers"] == [] and found["word_share"] == 0.5  # three, four of 4 tokens
    by_dev = compare(src, read_set([dev], cache))  # a shared speaker, no shared audio
    assert by_dev["shared_utterances"] == 0 and by_dev["shared_speakers"] == ["anna"]
    assert transcripts(src) == {"distinct": 2, "total": 2}
    # relative source_wavs resolve against the manifest's folder, like wav
    assert row_recordings({"wav": "x.wav", "source_wavs": "a/b.wav|/abs/c.wav"}, tmp_path) == \
        ["x.wav", str(tmp_path / "a" / "b.wav"), "/abs/c.wav"]
    # a clean design: other audio, other speakers, no words in common
    clean = manifest(tmp_path / "clean.csv",
                     [{"ID": "c", "wav": wav(a / "clean.wav", 7), "spk_id": "dora", "wrd": "ten"}])
    zero = compare(read_set([clean], cache), read_set([test], cache))
    assert (zero["shared_utterances"], zero["shared_recordings"], zero["shared_speakers"], zero["word_share"]) == \
        (0, 0, [], 0.0)
    cache.save()
    again = FingerprintCache(tmp_path / "fp.json")  # a re-run reads no file it has seen unchanged
    read_set([rewiring, test, dev, clean], again)
    assert again.read == 0 and again.hits == 7  # c1.wav: once, though listed twice
    # held-out files are removed by path (as the pre-training recipe did)
    assert read_set([rewiring], again, exclude_wavs=[str(renamed)]).ids == ["rw_b"]


def study(tmp_path, *options):
    """A study folder with KS and SID manifests, a rewiring manifest and an encoder whose folder records
    its pre-training (one pre-training file is a KS dev clip, one is removed as held out)."""
    out, data, a = tmp_path / "out", tmp_path / "data", tmp_path / "audio"
    enc = tmp_path / "enc"
    (enc / "training").mkdir(parents=True)
    (enc / "config.json").write_text("{}")
    (enc / "training" / "hyperparams.yaml").write_text(
        "data_root: data\ntrain_manifests:\n- data/pre/train.csv\n- data/notprepared/train.csv\n"
        "heldout_manifests:\n- data/pre/test.csv\n")
    work = out / "study" / "data"
    for task, spk in (("ks", "kim"), ("sid", "sam")):
        for i, split in enumerate(("train", "dev", "test")):
            manifest(work / task / f"{split}.csv", [
                {"ID": f"{task}_{split}_{j}", "wav": wav(a / task / f"{split}{j}.wav", hash((task, i, j)) % 10**6),
                 "spk_id": spk, "wrd": "yes"} for j in range(3)])
    setting = lambda n: {"utterances": n, "same_as": None}  # noqa: E731 -- as the data stage writes sizes.json
    (work / "sizes.json").write_text(json.dumps({"ks": {"settings": {"all": setting(3), "k1": setting(1)}},
                                                 "sid": {"settings": {"all": setting(3)}}}))
    manifest(data / "pre" / "train.csv", [{"ID": "p1", "wav": a / "ks" / "dev1.wav", "spk_id": "kim", "wrd": "yes"},
                                          {"ID": "p2", "wav": a / "sid" / "test0.wav", "spk_id": "sam", "wrd": "x"}])
    manifest(data / "pre" / "test.csv", [{"ID": "h", "wav": a / "sid" / "test0.wav", "spk_id": "sam", "wrd": "x"}])
    cfg = parse_args(["--out", str(out), "--data-dir", str(data), "--cache-dir", str(tmp_path / "cache"),
                      "--encoders", f"base={enc}", "--tasks", "ks,sid", "--views", "twin,neutral", *options])
    return cfg, a


def rewire_on(cfg, rows):
    manifest(cfg.work / "data" / "rewire" / "train.csv", rows)


def test_rewiring_overlap_is_a_one_line_error_and_pretraining_is_reported(tmp_path):
    cfg, a = study(tmp_path)
    copy = shutil.copy(a / "ks" / "test2.wav", tmp_path / "innocent_name.wav")
    rewire_on(cfg, [{"ID": "r1", "wav": copy, "spk_id": "rita", "wrd": "no"},
                    {"ID": "r2", "wav": wav(a / "r2.wav", 77), "spk_id": "sam", "wrd": "yes"}])
    with pytest.raises(StageError) as err:
        run_audit(cfg)
    msg = str(err.value)
    assert "\n" not in msg and "ks test: 1 of 3 utterances" in msg and "ks_test_2" in msg
    assert "innocent_name.wav" in msg and "--allow-rewire-overlap" in msg and "sid" not in msg.split("(see")[0]
    audit = json.loads((cfg.work / "audit.json").read_text())
    rewiring, pre = audit["sources"]
    assert rewiring["encoders"] == ["twin", "neutral"] and rewiring["transcripts"] == \
        {"distinct": 2, "total": 2, "views": ["neutral"]}
    assert rewiring["labelled_train"]["ks"] == {"all": 3, "k1": 1}
    sid_test = next(r for r in rewiring["rows"] if (r["task"], r["split"]) == ("sid", "test"))
    assert sid_test["shared_utterances"] == 0 and sid_test["shared_speakers"] == ["sam"] and sid_test["word_share"] == 1
    # pre-training: the KS dev clip found (reported, no error); the held-out SID file removed; unprepared noted
    assert pre["kind"] == "pre-training" and pre["utterances"] == 1 and "notprepared" in pre["note"]
    assert [(r["task"], r["split"]) for r in pre["rows"] if r["held_out_leak"]] == [("ks", "dev")]
    assert not any(r["error"] for r in pre["rows"]) and "base" in pre["encoders"] and "twin" in pre["encoders"]
    # a clean rewiring set passes (the pre-training overlap alone is no error) with zeros
    rewire_on(cfg, [{"ID": "r3", "wav": wav(a / "r3.wav", 78), "spk_id": "rita", "wrd": "no"}])
    counts = run_audit(cfg)
    clean = json.loads((cfg.work / "audit.json").read_text())["sources"][0]
    assert all(r["shared_utterances"] == 0 and not r["shared_speakers"] for r in clean["rows"])
    assert counts["audit_held_out_leaks"] == 1 and counts["audit_files_read"] == 1  # only the new file read


def test_allowed_overlap_marks_the_report(tmp_path):
    from rewire_study.report import verdict_lines, write_markdown
    from rewire_lib.analysis.stats import NO_DIFFERENCE

    cfg, a = study(tmp_path, "--allow-rewire-overlap")
    assert cfg.allow_rewire_overlap
    rewire_on(cfg, [{"ID": "r1", "wav": a / "sid" / "dev0.wav", "spk_id": "sam", "wrd": "yes"}])
    run_audit(cfg)  # no error
    audit = json.loads((cfg.work / "audit.json").read_text())
    marks = marked_cells(audit)
    assert marks[("sid", "twin")] == ["rewiring"] and ("sid", "base") not in marks and \
        marks[("ks", "base")] == ["pre-training"]
    cells = {("sid", "all"): {"encoders": {"twin": {"compare": {"verdict": NO_DIFFERENCE}}}}}
    line = next(x for x in verdict_lines(cfg, cells, marks) if x.startswith("- **twin**"))
    assert "⚠" in line and "sid: rewiring" in line
    write_markdown(cfg.out / "summary.md", cfg, {}, [], {}, {})
    md = (cfg.out / "summary.md").read_text()
    assert "## What rewiring saw" in md and "| sid | dev ⚠ | 3 | 1 (sid_dev_0) |" in md
    assert "`--allow-rewire-overlap` is given (this study: given)" in md
    write_audit_csv(cfg.out / "audit.csv", audit)
    rows = list(csv.DictReader(open(cfg.out / "audit.csv")))
    assert {(r["source"], r["task"], r["split"]) for r in rows if r["held_out_leak"] == "True"} == \
        {("rewiring", "sid", "dev"), ("pre-training", "ks", "dev")}


def test_pretraining_manifests_of_the_default_encoder(tmp_path):
    from rewire_lib.files.paths import default_encoder_dir

    pre = pretraining_manifests(default_encoder_dir(), tmp_path)
    assert pre["train"] == [] and str(tmp_path / "fsdd" / "speakers" / "train.csv") in pre["missing"]
    assert str(tmp_path / "speech_commands" / "test.csv") in pre["missing"]
    assert pretraining_manifests(tmp_path, tmp_path) is None  # no training/ record: nothing to audit


def test_audit_before_the_data_stage_says_so(tmp_path):
    cfg = parse_args(["--out", str(tmp_path), "--tasks", "ks", "--views", "twin", "--encoders", f"base={tmp_path}"])
    with pytest.raises(StageError, match="does not exist .*did the data stage run"):
        run_audit(cfg)
    assert "--allow-rewire-overlap" in build_parser().format_help()
