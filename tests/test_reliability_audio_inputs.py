"""Every kind of bad or unusual audio, through each entry point that reads audio:

- `load_audio` (what the recipes and the isotropy command read with): a clear `AudioError` naming
  the file and the problem, or a correct mono 16 kHz float waveform;
- `validate_entries` (what every preparer runs): a counted skip with that reason, or a kept row;
- a recipe's data loading (`audio_dataset` + `filter_by_duration`, and a whole downstream run):
  too short / too long is a listed skip, anything unreadable an error that names the file.
"""
import csv
import math

import numpy as np
import pytest
import soundfile as sf
import torch

from downstream_helpers import make_tiny_corpus, run_task
from rewire_lib.data.audio import AudioError, load_audio
from rewire_lib.data.dataio import MIN_SAMPLES, ManifestFormatError, audio_dataset, filter_by_duration
from rewire_lib.data.manifest import validate_entries
from rewire_lib.files.paths import REPO_ROOT

SR = 16000


def _tone(seconds, sr=SR, channels=1):
    t = np.arange(int(round(seconds * sr))) / sr
    x = (0.4 * np.sin(2 * math.pi * 220 * t)).astype(np.float32)
    return np.stack([x] * channels, axis=1) if channels > 1 else x


def _write(path, data, sr=SR, **kw):
    sf.write(str(path), data, sr, **kw)
    return path


def _bytes(path, data):
    path.write_bytes(data)
    return path


def _truncate(path, keep):
    data = path.read_bytes()
    path.write_bytes(data[:keep] if keep > 0 else data[:len(data) // 2])
    return path


# name -> (maker(folder) -> path, expected samples at 16 kHz or an error regex for load_audio,
#          the reason validate_entries gives or None when the row is kept)
CASES = {
    "missing": (lambda d: d / "missing.wav", "does not exist", "does not exist"),
    "empty_file": (lambda d: _bytes(d / "empty_file.wav", b""), "unreadable", "unreadable"),
    "not_audio": (lambda d: _bytes(d / "text.wav", b"hello, this is text"), "unreadable", "unreadable"),
    "zero_length": (lambda d: _write(d / "zero.wav", np.zeros(0, np.float32), subtype="PCM_16"), "empty", "empty"),
    "truncated_wav": (lambda d: _truncate(_write(d / "cut.wav", _tone(0.5), subtype="PCM_16"), 0), "truncated WAV",
                      "truncated WAV"),
    "truncated_header": (lambda d: _truncate(_write(d / "cuthead.wav", _tone(0.5), subtype="PCM_16"), 30),
                         "unreadable", "unreadable"),
    "truncated_flac": (lambda d: _truncate(_write(d / "cut.flac", np.random.default_rng(0).uniform(-.5, .5, SR)
                                                  .astype(np.float32), format="FLAC"), 0), "unreadable", "unreadable"),
    "nan_samples": (lambda d: _write(d / "nan.wav", np.where(np.arange(SR // 4) == 7, np.nan, _tone(0.25)),
                                     subtype="FLOAT"), "non-finite", "non-finite"),
    "inf_samples": (lambda d: _write(d / "inf.wav", np.where(np.arange(SR // 4) == 7, np.inf, _tone(0.25)),
                                     subtype="DOUBLE"), "non-finite", "non-finite"),
    "all_silent": (lambda d: _write(d / "silent.wav", np.zeros(SR // 2, np.float32), subtype="PCM_16"), SR // 2,
                   "all-silent"),
    "shorter_than_receptive_field": (lambda d: _write(d / "short.wav", _tone(200 / SR), subtype="PCM_16"), 200,
                                     "too short"),
    "very_long_60s": (lambda d: _write(d / "long.wav", _tone(60.0), subtype="PCM_16"), 60 * SR, None),
    "8khz": (lambda d: _write(d / "8k.wav", _tone(0.5, 8000), 8000, subtype="PCM_16"), SR // 2, None),
    "44k1": (lambda d: _write(d / "44k.wav", _tone(0.5, 44100), 44100, subtype="PCM_16"), SR // 2, None),
    "stereo": (lambda d: _write(d / "st.wav", _tone(0.5, channels=2), subtype="PCM_16"), SR // 2, None),
    "6_channels": (lambda d: _write(d / "six.wav", _tone(0.5, channels=6), subtype="PCM_16"), SR // 2, None),
    "unsigned_8bit": (lambda d: _write(d / "u8.wav", _tone(0.5), subtype="PCM_U8"), SR // 2, None),
    "24bit": (lambda d: _write(d / "p24.wav", _tone(0.5), subtype="PCM_24"), SR // 2, None),
    "32bit": (lambda d: _write(d / "p32.wav", _tone(0.5), subtype="PCM_32"), SR // 2, None),
    "float32": (lambda d: _write(d / "f32.wav", _tone(0.5), subtype="FLOAT"), SR // 2, None),
    "float64": (lambda d: _write(d / "f64.wav", _tone(0.5), subtype="DOUBLE"), SR // 2, None),
    "flac": (lambda d: _write(d / "x.flac", _tone(0.5), format="FLAC"), SR // 2, None),
    "flac_24bit_48k": (lambda d: _write(d / "y.flac", _tone(0.5, 48000), 48000, format="FLAC", subtype="PCM_24"),
                       SR // 2, None),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad_audio")
    return {name: make(folder) for name, (make, _, _) in CASES.items()}


@pytest.mark.parametrize("case", list(CASES))
def test_load_audio(case, files):
    expected = CASES[case][1]
    path = files[case]
    if isinstance(expected, str):
        with pytest.raises(AudioError, match=expected) as err:
            load_audio(path)
        assert str(path) in str(err.value)  # the message names the file
    else:
        wav = load_audio(path)
        assert wav.dtype == torch.float32 and wav.dim() == 1
        assert abs(wav.numel() - expected) <= 2
        assert torch.isfinite(wav).all() and wav.abs().max() <= 1.0 + 1e-6


@pytest.mark.parametrize("case", list(CASES))
def test_preparer_validation_skips_with_a_reason(case, files):
    reason = CASES[case][2]
    kept, failures = validate_entries([dict(ID=case, wav=str(files[case]))], progress=False)
    if reason is None:
        assert [r["ID"] for r in kept] == [case] and not failures
    else:
        assert not kept and len(failures) == 1
        uid, wav, why = failures[0]
        assert uid == case and wav == str(files[case]) and reason in why, why


def _manifest(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ID", "duration", "wav"])
        w.writerows(rows)
    return path


def test_recipe_loading_skips_too_short_and_too_long_and_names_bad_files(files, tmp_path):
    ok = files["8khz"]
    rows = [("ok", "0.5", ok), ("short", f"{200 / SR:.4f}", files["shorter_than_receptive_field"]),
            ("long", "60.0", files["very_long_60s"]), ("silent", "0.5", files["all_silent"])]
    ds = audio_dataset(_manifest(tmp_path / "m.csv", rows))
    ds = filter_by_duration(ds, tmp_path / "out" / "skipped_m.csv", max_duration=30, what="m.csv")
    with ds.output_keys_as(["id", "sig"]):
        loaded = {item["id"]: item["sig"] for item in ds}
    assert sorted(loaded) == ["ok", "silent"]
    assert loaded["silent"].abs().max() == 0  # accepted (finite features), with a warning naming it
    report = list(csv.DictReader(open(tmp_path / "out" / "skipped_m.csv")))
    assert {r["ID"]: r["reason"].split(" (")[0] for r in report} == {
        "short": "shorter than the encoder's receptive field", "long": "longer than max_duration"}
    # a manifest whose duration lies about a too-short file, and every unreadable case: errors naming the file
    bad = ["shorter_than_receptive_field"] + [c for c, (_, exp, _) in CASES.items() if isinstance(exp, str)]
    for case in bad:
        manifest = _manifest(tmp_path / f"{case}.csv", [(case, "1.0", files[case])])
        if case == "missing":  # found before any audio is read: one line naming the manifest, row and file
            with pytest.raises(ManifestFormatError) as err:
                audio_dataset(manifest)
            assert f"{case}.csv: line 2 (ID missing): audio file not found: {files[case]}" in str(err.value)
            continue
        ds = audio_dataset(manifest)
        with ds.output_keys_as(["sig"]), pytest.raises(AudioError) as err:
            next(iter(ds))
        assert str(files[case]) in str(err.value) and f"{case}.csv" in str(err.value), case
    assert MIN_SAMPLES == 400


def test_downstream_run_skips_listed_and_reports_a_bad_file_by_name(tmp_path, tiny_encoder_dir, files):
    corpus = make_tiny_corpus(tmp_path / "corpus")
    rows = list(csv.DictReader(open(corpus / "train.csv")))
    extra = [dict(rows[0], ID="too_short", duration=f"{200 / SR:.4f}", wav=str(files["shorter_than_receptive_field"])),
             dict(rows[0], ID="too_long", duration="60.0", wav=str(files["very_long_60s"]))]
    with open(corpus / "train.csv", "w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        w.writerows(rows + extra)
    argv = [str(REPO_ROOT / "recipes" / "ks" / "hparams" / "baseline.yaml"), "--noprogressbar",
            "--encoder", str(tiny_encoder_dir), "--data_folder", str(corpus), "--batch_size", "8",
            "--max_steps", "2", "--eval_every_steps", "2", "--max_duration", "30"]
    result = run_task("ks", argv + ["--output_folder", str(tmp_path / "out")])
    assert result["num_train"] == len(rows) and math.isfinite(result["test_accuracy"])
    skipped = {r["ID"] for r in csv.DictReader(open(tmp_path / "out" / "skipped_train.csv"))}
    assert skipped == {"too_short", "too_long"}
    # a NaN file in the dev set: the run stops with an error naming it
    dev = list(csv.DictReader(open(corpus / "dev.csv")))
    dev[1]["wav"] = str(files["nan_samples"])
    with open(corpus / "dev.csv", "w", newline="") as f:
        w = csv.DictWriter(f, list(dev[0]))
        w.writeheader()
        w.writerows(dev)
    with pytest.raises(AudioError, match=r"nan\.wav: non-finite"):
        run_task("ks", argv + ["--output_folder", str(tmp_path / "out2")])
