"""Shared manifest validation/writing/reading and nested subsets."""
import numpy as np
import pytest
import soundfile as sf

from rewire_lib.data.manifest import (ManifestError, ManifestNotFoundError, read_manifest, report_failures, require_manifest,
                                 split_csv, validate_entries, write_manifest)
from rewire_lib.data.subsets import nested_subset, subset_name


def _wav(path, seconds=0.2, sr=16000, ch=1):
    x = np.random.default_rng(0).uniform(-0.3, 0.3, (int(sr * seconds), ch)).astype(np.float32)
    sf.write(str(path), x, sr, subtype="PCM_16")
    return str(path)


def test_validate_write_read(tmp_path):
    rows = [dict(ID="a", wav=_wav(tmp_path / "a.wav", sr=8000, ch=2), spk_id="s1", wrd="hi"),
            dict(ID="b", wav=str(tmp_path / "missing.wav"), spk_id="s1"),
            dict(ID="c", wav=_wav(tmp_path / "c.wav", seconds=0), spk_id="s2"),
            dict(ID="a", wav=_wav(tmp_path / "d.wav"), spk_id="s2")]
    (tmp_path / "bad.wav").write_bytes(b"junk")
    rows.append(dict(ID="e", wav=str(tmp_path / "bad.wav"), spk_id="s3"))
    kept, fails = validate_entries(rows)
    assert [r["ID"] for r in kept] == ["a"]
    assert kept[0]["sample_rate"] == 8000 and kept[0]["channels"] == 2 and kept[0]["duration"] == "0.2000"
    reasons = {uid: reason for uid, _, reason in fails}
    assert "does not exist" in reasons["b"] and "empty" in reasons["c"] and "unreadable" in reasons["e"]
    assert any("duplicate" in r for _, _, r in fails)
    p = report_failures(tmp_path, fails)
    assert len(p.read_text().splitlines()) == 1 + len(fails)
    m = write_manifest(tmp_path / "m.csv", kept)
    assert m.read_text().splitlines()[0] == "ID,duration,wav,spk_id,sample_rate,channels,wrd"
    assert read_manifest(m)[0]["wrd"] == "hi"


def test_read_manifest_errors(tmp_path):
    p = tmp_path / "m.csv"
    p.write_text("ID,duration,wav\nx,1.0,/a.wav\nx,1.0,/b.wav\n")
    with pytest.raises(ManifestError, match=r"m.csv: line 3: column 'ID': duplicate"):
        read_manifest(p)
    p.write_text("ID,wav\nx,/a.wav\n")
    with pytest.raises(ManifestError, match="line 1: missing column"):
        read_manifest(p)
    p.write_text("ID,duration,wav\nx,abc,/a.wav\n")
    with pytest.raises(ManifestError, match="line 2: column 'duration'"):
        read_manifest(p)
    p.write_text("ID,duration,wav\nx,1,$data_root/a.wav\n")
    assert read_manifest(p, data_root="/root")[0]["wav"] == "/root/a.wav"
    with pytest.raises(ManifestError, match="not found"):
        read_manifest(tmp_path / "nope.csv")


def test_read_manifest_resolves_relative_paths_against_its_folder(tmp_path, monkeypatch):
    (tmp_path / "d").mkdir()
    p = tmp_path / "d" / "m.csv"
    p.write_text("ID,duration,wav\na,1,a.wav\nb,1,../x/b.wav\nc,1,/abs/c.wav\nd,1,$data_root/d.wav\n")
    monkeypatch.chdir(tmp_path)
    rows = read_manifest(p.relative_to(tmp_path))
    assert [r["wav"] for r in rows] == [str(tmp_path / "d" / "a.wav"), str(tmp_path / "x" / "b.wav"), "/abs/c.wav",
                                        "$data_root/d.wav"]  # kept as written until a data_root is given
    assert read_manifest(p, data_root="/r")[3]["wav"] == "/r/d.wav"


def test_split_csv_accepts_dev_or_valid(tmp_path):
    for name in ("train.csv", "valid.csv", "test.csv"):
        (tmp_path / name).write_text("ID,duration,wav\n")
    assert split_csv(tmp_path, "dev") == str(tmp_path / "valid.csv")
    assert split_csv(tmp_path, "valid") == str(tmp_path / "valid.csv")
    assert split_csv(tmp_path, "train") == str(tmp_path / "train.csv")
    (tmp_path / "dev.csv").write_text("ID,duration,wav\n")
    assert split_csv(tmp_path, "dev") == str(tmp_path / "dev.csv")  # dev.csv first when both exist
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ManifestNotFoundError, match=r"empty: no dev manifest \(looked for dev.csv, valid.csv\); make it "
                                                    r"with the preparer .*own_folder.py"):
        split_csv(empty, "dev")
    assert split_csv(empty, "dev", must_exist=False) == str(empty / "dev.csv")


def test_missing_manifest_names_the_command_that_makes_it(tmp_path, monkeypatch):
    monkeypatch.setenv("REWIRE_DATA", str(tmp_path / "data"))
    with pytest.raises(ManifestNotFoundError) as err:
        read_manifest(tmp_path / "data" / "fsdd" / "digits" / "train.csv")
    assert "\n" not in str(err.value)
    assert "digits/train.csv: manifest not found; make the default data with `python data_prep/prepare_all.py`" \
        in str(err.value)
    with pytest.raises(ManifestNotFoundError, match=r"mine/train.csv: manifest not found; .*own_folder.py"):
        require_manifest(tmp_path / "mine" / "train.csv")
    with pytest.raises(ManifestNotFoundError, match=r"x.csv: manifest not found; run my_prep.py"):
        require_manifest(tmp_path / "x.csv", hint="run my_prep.py")
    assert isinstance(err.value, ManifestError)  # callers that catch ManifestError keep working
    (tmp_path / "ok.csv").write_text("ID,duration,wav\n")
    assert require_manifest(tmp_path / "ok.csv") == tmp_path / "ok.csv"


def test_nested_subsets():
    rows = [dict(ID=f"u{i}", label=f"c{i % 5}", duration="2.0") for i in range(1000)]
    big = nested_subset(rows, 0.1, seed=3, stratify="label")
    small = nested_subset(rows, 0.01, seed=3, stratify="label")
    assert len(big) == 100 and len(small) == 10
    assert {r["ID"] for r in small} <= {r["ID"] for r in big}
    assert {r["label"] for r in small} == {f"c{i}" for i in range(5)}
    assert nested_subset(list(reversed(rows)), 0.1, seed=3, stratify="label")[::-1] == big  # order-independent
    assert nested_subset(rows, 0.1, seed=4) != nested_subset(rows, 0.1, seed=3)
    tiny = nested_subset(rows[:20], 0.001, seed=0, stratify="label")
    assert {r["label"] for r in tiny} == {f"c{i}" for i in range(5)}
    h = nested_subset(rows, hours=0.1, seed=3, stratify="label")
    h2 = nested_subset(rows, hours=0.2, seed=3, stratify="label")
    assert len(h) == 180 and {r["ID"] for r in h} <= {r["ID"] for r in h2}
    assert subset_name(fraction=0.1) == "train_frac0.1.csv" and subset_name(hours=1) == "train_hours1.csv"
    with pytest.raises(ValueError):
        nested_subset(rows, fraction=1.5)
