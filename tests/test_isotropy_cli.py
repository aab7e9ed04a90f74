"""Isotropy of a tiny random encoder on real FSDD speech: measure_encoder, the command line, and bad inputs."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from rewire_lib.analysis.isotropy import IsotropyError, collect_vectors, measure_encoder
from rewire_lib.analysis.isotropy.cli import CSV_COLUMNS, main, parse_layers
from rewire_lib.models.encoder import SpeechEncoder
from rewire_lib.models.featurizer import masked_mean

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def manifest(tmp_path_factory, fsdd_files):
    """12 FSDD utterances (different speakers and digits) as an ID,duration,wav manifest."""
    files = fsdd_files[::250][:12]
    path = tmp_path_factory.mktemp("iso_manifest") / "fsdd12.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ID", "duration", "wav"])
        for p in files:
            w.writerow([p.stem, f"{sf.info(p).duration:.4f}", str(p)])
    return path


@pytest.fixture(scope="module")
def encoder(tiny_encoder_dir):
    return SpeechEncoder.from_pretrained(tiny_encoder_dir).eval()


def test_cli_writes_three_files(tmp_path, tiny_encoder_dir, manifest):
    other = tmp_path / "enc_b"
    from rewire_lib.models.tiny import make_tiny_encoder
    make_tiny_encoder(other, "hubert", seed=1)
    out = tmp_path / "out"
    rc = subprocess.run([sys.executable, "-m", "rewire_lib.analysis.isotropy", "--encoder", str(tiny_encoder_dir),
                         "--encoder", str(other), "--manifest", str(manifest), "--level", "frame", "--out", str(out),
                         "--max-vectors", "200", "--seed", "3", "--no-progress"],
                        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert rc.returncode == 0, rc.stderr
    data = json.loads((out / "isotropy.json").read_text())
    s = data["settings"]
    assert (s["level"], s["centred"], s["normalised"], s["max_vectors"], s["seed"]) == ("frame", False, False, 200, 3)
    rows = data["rows"]
    assert len(rows) == 2 * 3  # two encoders x (CNN output + 2 Transformer layers)
    for r in rows:
        assert r["n_vectors"] == 200 < r["n_seen"]  # the cap held; more frames than that were seen
        assert 0.0 <= r["iw"] <= 1.0 and 0.0 <= r["iw_centred"] <= 1.0
        assert -1.0 <= r["avg_cosine"] <= 1.0 and 0.0 <= r["isoscore"] <= 1.0 and 0.0 <= r["top_pc_share"] <= 1.0
    with open(out / "isotropy.csv") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == CSV_COLUMNS and len(table) == 6
    assert {t["encoder"] for t in table} == {str(tiny_encoder_dir), str(other)}
    png = (out / "isotropy.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert not list(out.glob(".*tmp"))  # atomic writes left no temp file


def test_cli_both_levels_and_layer_selection(tmp_path, tiny_encoder_dir, manifest):
    out = tmp_path / "out"
    assert main(["--encoder", str(tiny_encoder_dir), "--manifest", str(manifest), "--level", "both", "--out",
                 str(out), "--layers", "0,2", "--max-vectors", "150", "--center", "--normalize", "--top-k", "3",
                 "--no-progress"]) == 0
    rows = json.loads((out / "isotropy.json").read_text())["rows"]
    assert [(r["level"], r["layer"]) for r in rows] == [("frame", 0), ("frame", 2), ("utterance", 0), ("utterance", 2)]
    for r in rows:
        assert r["centred"] and r["normalised"] and r["top_k"] == 3
        assert r["iw"] == pytest.approx(r["iw_centred"])  # --center makes the headline the centred one
    assert [r["n_vectors"] for r in rows if r["level"] == "utterance"] == [12, 12]
    assert (out / "isotropy.png").is_file() and (out / "isotropy.csv").is_file()


def test_measure_encoder_seeded_and_bounded(encoder, manifest):
    a = measure_encoder(encoder, manifest, level="frame", max_vectors=100, seed=0, layers=[1], progress=False)
    b = measure_encoder(encoder, manifest, level="frame", max_vectors=100, seed=0, layers=[1], batch_size=3,
                        progress=False)
    c = measure_encoder(encoder, manifest, level="frame", max_vectors=100, seed=1, layers=[1], progress=False)
    assert len(a) == 1 and a[0]["n_vectors"] == 100 and a[0]["n_seen"] > 100
    # same frames whatever the batch size (values differ only by padding round-off in the encoder)
    assert a[0]["iw"] == pytest.approx(b[0]["iw"], rel=1e-4)
    assert a[0]["avg_cosine"] == pytest.approx(b[0]["avg_cosine"], rel=1e-4)
    assert a[0]["iw"] != c[0]["iw"]  # the seed does


def test_collected_vectors_are_the_valid_frames(encoder, manifest):
    """Batched, padded collection = each utterance run alone: padding never leaks into the sample."""
    with open(manifest) as f:
        rows = list(csv.DictReader(f))[:5]
    got = collect_vectors(encoder, rows, ["frame", "utterance"], [0, 2], max_vectors=10_000, seed=0,
                          batch_size=5, progress=False)
    from rewire_lib.data.audio import load_audio
    frames, pooled = [], []
    with torch.no_grad():
        for row in rows:
            wav = load_audio(row["wav"])[None]
            out = encoder(wav, torch.ones(1))
            h = out.hidden_states[[0, 2], 0]  # [2, T, D]
            frames.append(h.permute(1, 0, 2))
            pooled.append(torch.stack([masked_mean(x[None], out.frame_mask) for x in h], dim=1)[0])
    fr, ut = got["frame"]["reservoir"], got["utterance"]["reservoir"]
    expected_frames = torch.cat(frames)  # reservoir order = sorted by duration; compare as sets via sort
    assert fr.seen == len(fr) == expected_frames.shape[0]
    key = lambda t: t[:, 0, :].sum(-1)  # noqa: E731
    torch.testing.assert_close(fr.samples[key(fr.samples).argsort()],
                               expected_frames[key(expected_frames).argsort()], atol=2e-4, rtol=1e-3)
    order = np.argsort(ut.groups)
    torch.testing.assert_close(ut.samples[order], torch.stack(pooled), atol=2e-4, rtol=1e-3)


def test_unreadable_audio_is_skipped_and_counted(tmp_path, encoder, manifest):
    with open(manifest) as f:
        rows = list(csv.DictReader(f))
    rows.append({"ID": "ghost", "duration": "1.0", "wav": str(tmp_path / "ghost.wav")})
    res = measure_encoder(encoder, rows, level="utterance", layers=[0], progress=False)
    assert res[0]["n_skipped"] == 1 and res[0]["n_vectors"] == 12


def test_parse_layers():
    assert parse_layers(None) is None
    assert parse_layers("0, 3,5-7") == [0, 3, 5, 6, 7]
    with pytest.raises(IsotropyError, match="layers"):
        parse_layers("a")


def _run(capsys, *args):
    rc = main(list(args) + ["--no-progress"])
    return rc, capsys.readouterr().err


def test_missing_encoder_folder(tmp_path, manifest, capsys):
    rc, err = _run(capsys, "--encoder", str(tmp_path / "no_such_encoder"), "--manifest", str(manifest),
                   "--out", str(tmp_path / "o"))
    assert rc == 2 and "no_such_encoder" in err and "does not exist" in err


def test_empty_manifest(tmp_path, tiny_encoder_dir, capsys):
    for name, text in [("header_only.csv", "ID,duration,wav\n"), ("zero_bytes.csv", "")]:
        path = tmp_path / name
        path.write_text(text)
        rc, err = _run(capsys, "--encoder", str(tiny_encoder_dir), "--manifest", str(path),
                       "--out", str(tmp_path / "o"))
        assert rc == 2 and name in err and ("no rows" in err or "is empty" in err)
    bad = tmp_path / "no_wav_column.csv"
    bad.write_text("ID,duration\nx,1.0\n")
    rc, err = _run(capsys, "--encoder", str(tiny_encoder_dir), "--manifest", str(bad), "--out", str(tmp_path / "o"))
    assert rc == 2 and "no_wav_column.csv" in err and "wav" in err
    rc, err = _run(capsys, "--encoder", str(tiny_encoder_dir), "--manifest", str(tmp_path / "absent.csv"),
                   "--out", str(tmp_path / "o"))
    assert rc == 2 and "absent.csv" in err


def test_layer_out_of_range(tmp_path, tiny_encoder_dir, manifest, capsys):
    rc, err = _run(capsys, "--encoder", str(tiny_encoder_dir), "--manifest", str(manifest), "--layers", "1,7",
                   "--out", str(tmp_path / "o"))
    assert rc == 2 and "layer 7" in err and "0..2" in err
    assert not (tmp_path / "o" / "isotropy.json").exists()


def test_bad_level_in_python_api(encoder, manifest):
    with pytest.raises(IsotropyError, match="level"):
        measure_encoder(encoder, manifest, level="sentence")


def test_csv_fallback_without_shared_reader(tmp_path, monkeypatch, manifest):
    """Where rewire_lib.data.manifest is absent, the CSV is read with the csv module and the same checks."""
    from rewire_lib.analysis.isotropy import _read_rows
    monkeypatch.setitem(sys.modules, "rewire_lib.data.manifest", None)  # import now raises ImportError
    rows = _read_rows(manifest)
    assert len(rows) == 12 and {"ID", "duration", "wav"} <= set(rows[0])
    (tmp_path / "h.csv").write_text("ID,duration,wav\n")
    with pytest.raises(IsotropyError, match="no rows"):
        _read_rows(tmp_path / "h.csv")
    (tmp_path / "m.csv").write_text("ID,wav\nx,/a.wav\n")
    with pytest.raises(IsotropyError, match="missing column"):
        _read_rows(tmp_path / "m.csv")
    (tmp_path / "r.csv").write_text("ID,duration,wav\nx,1.0,$data_root/a.wav\n")
    assert _read_rows(tmp_path / "r.csv", data_root="/d")[0]["wav"] == "/d/a.wav"


def test_measures_and_command_line_do_not_import_each_other():
    code = ("import sys, rewire_lib.analysis.isotropy; assert 'rewire_lib.analysis.isotropy.cli' not in sys.modules; "
            "import rewire_lib.analysis.isotropy.cli")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-1500:]
