"""Bad manifests and configuration at the recipes' entry points: each is an error naming the file,
line, column or key and what was expected, or a counted skip listed in a report file.

Covered elsewhere and not repeated here: unknown dev/test labels in a whole downstream run
(test_downstream.py), empty / punctuation-only / digit / non-ASCII texts in the TTS cache
(test_tts.py), missing or non-speech encoder folders in SpeechEncoder (test_encoder.py), the
isotropy command's manifests (test_isotropy_cli.py), unknown/mistyped override keys of the
rewiring recipe (test_rewire_recipe.py).
"""
import csv
import json

import numpy as np
import pytest
import soundfile as sf

from rewire_lib.data.audio import AudioError
from rewire_lib.data.dataio import ManifestFormatError, audio_dataset
from rewire_lib.files.paths import REPO_ROOT
from rewire_lib.models.encoder import EncoderLoadError
from rewire_lib.training.recipe import HparamsError, load_recipe

SR = 16000


@pytest.fixture
def wav(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(str(path), (0.3 * np.sin(np.arange(SR // 2) / 5)).astype(np.float32), SR)
    return path


BAD_MANIFESTS = {
    "missing_wav_column": ("ID,duration\nu1,0.5\n", r"line 1: missing column\(s\) \['wav'\]"),
    "missing_duration_column": ("ID,wav\nu1,{wav}\n", r"line 1: missing column\(s\) \['duration'\]"),
    "duplicate_id": ("ID,duration,wav\nu1,0.5,{wav}\nu1,0.5,{wav}\n", r"line 3: column 'ID': duplicate ID 'u1' \(first on line 2\)"),
    "empty_id": ("ID,duration,wav\n,0.5,{wav}\n", r"line 2: column 'ID' is empty"),
    "empty_wav": ("ID,duration,wav\nu1,0.5,\n", r"line 2: column 'wav' is empty"),
    "bad_duration": ("ID,duration,wav\nu1,half,{wav}\n", r"line 2: column 'duration': not a number: 'half'"),
    "negative_duration": ("ID,duration,wav\nu1,-1,{wav}\n", r"line 2: column 'duration': must be > 0"),
    "extra_field": ("ID,duration,wav\nu1,0.5,{wav},oops\n", r"line 2: more fields than the header"),
    "missing_file": ("", r"manifest not found"),
}


@pytest.mark.parametrize("case", list(BAD_MANIFESTS))
def test_bad_manifest_is_named_with_line_and_column(case, tmp_path, wav):
    text, pattern = BAD_MANIFESTS[case]
    path = tmp_path / f"{case}.csv"
    if case != "missing_file":
        path.write_text(text.format(wav=wav))
    with pytest.raises(ManifestFormatError, match=rf"{case}\.csv: .*{pattern}"):
        audio_dataset(path)


def test_relative_and_data_root_paths(tmp_path, wav, monkeypatch):
    # relative paths resolve against the manifest's folder, whatever folder the recipe is started from
    (tmp_path / "sub").mkdir()
    (tmp_path / "rel.csv").write_text("ID,duration,wav\nu1,0.5,a.wav\n")
    (tmp_path / "sub" / "up.csv").write_text("ID,duration,wav\nu1,0.5,../a.wav\n")
    for cwd in (tmp_path, REPO_ROOT, tmp_path / "sub"):
        monkeypatch.chdir(cwd)
        for manifest in (tmp_path / "rel.csv", tmp_path / "sub" / "up.csv"):
            with audio_dataset(manifest).output_keys_as(["wav", "sig"]) as ds:
                item = next(iter(ds))
                assert item["wav"] == str(wav) and item["sig"].numel() == SR // 2
    # $data_root: portable manifests
    (tmp_path / "root.csv").write_text("ID,duration,wav\nu1,0.5,$data_root/a.wav\n")
    with audio_dataset(tmp_path / "root.csv", data_root=str(tmp_path)).output_keys_as(["sig"]) as ds:
        assert next(iter(ds))["sig"].numel() == SR // 2


def test_data_root_without_a_value_names_the_manifest_row_and_option(tmp_path, wav):
    (tmp_path / "root.csv").write_text(f"ID,duration,wav\nok,0.5,{wav}\nu1,0.5,$data_root/a.wav\n")
    with pytest.raises(ManifestFormatError) as err:
        audio_dataset(tmp_path / "root.csv")
    text = str(err.value)
    assert "\n" not in text
    assert "root.csv: line 3 (ID u1)" in text and "$data_root" in text and "--data_root DIR" in text


def test_missing_audio_is_one_line_naming_file_and_manifest(tmp_path, wav, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where a.wav is: a relative path must still not be taken from here
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "gone.csv").write_text(f"ID,duration,wav\nok,0.5,{wav}\nu1,0.5,a.wav\nu2,0.5,/nowhere/b.wav\n")
    with pytest.raises(ManifestFormatError) as err:
        audio_dataset(tmp_path / "m" / "gone.csv")
    text = str(err.value)
    assert "\n" not in text
    assert f"gone.csv: line 3 (ID u1): audio file not found: {tmp_path / 'm' / 'a.wav'}" in text
    assert "1 more of 3 rows" in text
    # a file that disappears after the check: the load error names the file and the manifest
    (tmp_path / "m" / "late.csv").write_text(f"ID,duration,wav\nu1,0.5,{wav}\n")
    ds = audio_dataset(tmp_path / "m" / "late.csv")
    wav.unlink()
    with ds.output_keys_as(["sig"]), pytest.raises(AudioError, match=r"a\.wav: file does not exist \(listed in .*late\.csv\)"):
        next(iter(ds))


def _write(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


@pytest.mark.parametrize("column,kind", [("label", "classes"), ("object", "classes"), ("wrd", "tokens"),
                                         ("phn", "tokens")])
def test_downstream_label_columns(column, kind, tmp_path, wav):
    from rewire_lib.downstream.labels import LabelError, fit_ctc_tokenizer, fit_label_encoder

    header = ["ID", "duration", "wav", "label", "action", "object", "location", "wrd", "phn"]
    row = ["u1", "0.5", str(wav), "yes", "on", "lights", "kitchen", "HELLO", "h e l ow"]
    train = _write(tmp_path / "train.csv", header, [row])
    missing = _write(tmp_path / "dev.csv", [h for h in header if h != column],
                     [[v for h, v in zip(header, row) if h != column]])

    def fit(dev, name):
        if kind == "classes":
            return fit_label_encoder(train, column, [dev], tmp_path / f"{name}.txt")
        return fit_ctc_tokenizer(train, column, str.split, [dev], tmp_path / f"{name}.txt")

    with pytest.raises(LabelError, match=rf"dev\.csv: missing column\(s\) \['{column}'\]"):
        fit(missing, "a")
    if kind == "classes":  # an unknown class in dev/test: named with its line and the training manifest
        other = list(row)
        other[header.index(column)] = "garage"
        dev = _write(tmp_path / "dev2.csv", header, [row, other])
        with pytest.raises(LabelError, match=rf"dev2\.csv: line 3 \(ID u1\): {column} 'garage' never occurs "
                                             rf"in the training manifest .*train\.csv"):
            fit(dev, "b")


def test_empty_numeric_and_non_ascii_transcripts_in_neutral_rewiring(tmp_path, wav):
    """The neutral view renders each transcript with TTS: an empty one is a listed skip, digits and
    non-ASCII text are spoken (eSpeak) and kept."""
    from rewire_lib.rewiring.brain import build_rewire_dataset
    from rewire_lib.views.pairs import make_pair_builder

    manifest = _write(tmp_path / "train.csv", ["ID", "duration", "wav", "wrd"],
                      [["plain", "0.5", str(wav), "hello world"], ["empty", "0.5", str(wav), ""],
                       ["digits", "0.5", str(wav), "42 7"], ["accents", "0.5", str(wav), "café à Zürich"],
                       ["punct", "0.5", str(wav), "?!"]])
    builder = make_pair_builder("neutral", tts_cache_dir=tmp_path / "tts")
    ds = build_rewire_dataset(manifest, builder, tmp_path / "out")
    with ds.output_keys_as(["id"]):
        kept = sorted(item["id"] for item in ds)
    skipped = {r["ID"]: r["reason"] for r in csv.DictReader(open(tmp_path / "out" / "skipped.csv"))}
    assert "plain" in kept and "digits" in kept and "accents" in kept
    assert "empty" in skipped and "no TTS rendering" in skipped["empty"]
    assert set(kept) | set(skipped) == {"plain", "empty", "digits", "accents", "punct"}


def test_neutral_view_without_transcripts_is_named(tmp_path, wav):
    from rewire_lib.rewiring.brain import build_rewire_dataset
    from rewire_lib.views.pairs import make_pair_builder

    manifest = _write(tmp_path / "train.csv", ["ID", "duration", "wav"], [["u1", "0.5", str(wav)]])
    with pytest.raises(ValueError, match=r"train\.csv: the neutral view needs transcripts.*'wrd'"):
        build_rewire_dataset(manifest, make_pair_builder("neutral", tts_cache_dir=tmp_path / "tts"), tmp_path / "o")


YAML = REPO_ROOT / "recipes" / "ks" / "hparams" / "baseline.yaml"


def test_yaml_file_errors_name_the_file_and_key(tmp_path, tiny_encoder_dir):
    from rewire_lib.downstream.run import SCHEMA

    load_hparams = load_recipe

    base = ["--encoder", str(tiny_encoder_dir), "--output_folder", str(tmp_path / "o")]
    with pytest.raises(HparamsError, match="lerning_rate"):  # unknown override key
        load_hparams([str(YAML), *base, "--lerning_rate", "0.1"], SCHEMA)
    with pytest.raises(HparamsError, match=r"'lr' must be float, got 'fast' \(str\)"):
        load_hparams([str(YAML), *base, "--lr", "fast"], SCHEMA)
    with pytest.raises(HparamsError, match=r"'freeze_encoder' must be bool"):
        load_hparams([str(YAML), *base, "--freeze_encoder", "3"], SCHEMA)
    # mistyped value in a file of the user's that extends a recipe's
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"extends: {YAML}\nbatch_size: thirty-two\n")
    with pytest.raises(HparamsError, match=r"bad\.yaml: 'batch_size' must be int, got 'thirty-two'"):
        load_hparams([str(bad), *base], SCHEMA)
    # required key missing from the file
    missing = tmp_path / "missing.yaml"
    missing.write_text(f"output_folder: {tmp_path / 'o2'}\nlr: 0.1\n")
    with pytest.raises(HparamsError, match=r"missing\.yaml: required key 'eval_every_steps' is missing"):
        load_recipe([str(missing)], {"lr": float, "eval_every_steps": int})
    # extends: a base file that does not exist; a YAML file that does not exist
    child = tmp_path / "child.yaml"
    child.write_text("extends: nowhere.yaml\nview: twin\n")
    with pytest.raises(HparamsError, match=r"child\.yaml: extends 'nowhere\.yaml', which does not exist"):
        load_recipe([str(child)])
    with pytest.raises(HparamsError, match=r"nope\.yaml' does not exist"):
        load_recipe([str(tmp_path / "nope.yaml")])


def test_encoder_path_missing_or_not_a_speech_encoder_through_a_recipe(tmp_path):
    twin = REPO_ROOT / "recipes" / "rewire" / "hparams" / "twin.yaml"
    out = ["--output_folder", str(tmp_path / "o")]
    with pytest.raises(EncoderLoadError, match=r"no_such_model' does not exist"):
        load_recipe([str(twin), "--encoder", str(tmp_path / "no_such_model"), *out])
    text_model = tmp_path / "bert"
    text_model.mkdir()
    (text_model / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(EncoderLoadError, match=r"bert' is a 'bert' model, not a speech encoder|not a supported"):
        load_recipe([str(twin), "--encoder", str(text_model), *out])
    empty = tmp_path / "empty_folder"
    empty.mkdir()
    with pytest.raises(EncoderLoadError, match=r"empty_folder' has no config\.json"):
        load_recipe([str(twin), "--encoder", str(empty), *out])
