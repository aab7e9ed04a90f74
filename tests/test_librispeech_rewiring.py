"""The study's rewiring corpus: LibriSpeech in its published layout (the shipped test-clean short utterances)
is prepared with speaker-disjoint splits and rewired on end to end, with the study's length rules."""
import csv
import shutil
from pathlib import Path

import pytest

from data_prep import librispeech
from data_prep.common import PrepError
from rewire_lib.files.paths import shared_data_dir
from tests.rewire_helpers import load_train_module

SHIPPED = shared_data_dir() / "librispeech_test_clean_short" / "LibriSpeech"
# three female and three male speakers of the shipped set, two chapters' first utterances each
SPEAKERS = {"121": "F", "237": "F", "1580": "F", "260": "M", "672": "M", "1089": "M"}


def small_tree(root: Path, per_speaker: int = 3) -> Path:
    """A LibriSpeech tree as the download unpacks (`<root>/LibriSpeech/test-clean/...`) with real recordings and
    their transcript lines, SPEAKERS.TXT as published."""
    dst = root / "LibriSpeech"
    (dst / "test-clean").mkdir(parents=True)
    shutil.copy(SHIPPED / "SPEAKERS.TXT", dst / "SPEAKERS.TXT")
    for spk in SPEAKERS:
        trans = sorted((SHIPPED / "test-clean" / spk).glob("*/*.trans.txt"))[0]
        lines = trans.read_text().splitlines()[:per_speaker]
        out = dst / "test-clean" / spk / trans.parent.name
        out.mkdir(parents=True)
        (out / trans.name).write_text("\n".join(lines) + "\n")
        for line in lines:
            uid = line.split()[0]
            shutil.copy(trans.parent / f"{uid}.flac", out / f"{uid}.flac")
    return root


def _rows(path):
    return list(csv.DictReader(open(path)))


def test_a_single_subset_is_split_by_speaker_with_both_sexes_in_every_split(tmp_path):
    src = small_tree(tmp_path / "src")
    kept = librispeech.prepare(src, tmp_path / "out", phonemes=False)  # the folder holding LibriSpeech/ is accepted
    speakers = {split: {r["spk_id"] for r in _rows(tmp_path / "out" / f"{split}.csv")} for split in kept}
    assert set(speakers) == {"train", "dev", "test"}
    assert not (speakers["train"] & speakers["dev"]) and not (speakers["train"] & speakers["test"])
    assert not (speakers["dev"] & speakers["test"])
    assert set().union(*speakers.values()) == set(SPEAKERS)
    for split, spk in speakers.items():  # 3 speakers of each sex: one each to dev and test, one to train
        assert sorted(SPEAKERS[s] for s in spk) == ["F", "M"], split
    row = _rows(tmp_path / "out" / "train.csv")[0]
    assert row["wrd"] and row["wrd"] == row["wrd"].upper() and float(row["duration"]) > 1


def test_a_tree_without_any_subset_names_what_it_expected(tmp_path):
    (tmp_path / "LibriSpeech" / "books").mkdir(parents=True)
    with pytest.raises(PrepError, match="no subset folder \\(train-clean-100, .*test-clean"):
        librispeech.prepare(tmp_path, tmp_path / "out", phonemes=False)


def test_librispeech_tree_prepares_and_rewires_end_to_end_with_the_length_rules(tmp_path, tiny_encoder_dir):
    src = small_tree(tmp_path / "src", per_speaker=2)
    librispeech.prepare(src, tmp_path / "data", phonemes=False)
    train = tmp_path / "data" / "train.csv"
    n = len(_rows(train))
    out = tmp_path / "neutral"
    recipe = load_train_module("rewire")
    # the study's rules: skip > 6 s, halve > 2 s (neutral pairs take the matching half of their TTS rendering)
    folder = recipe.main(["recipes/rewire/hparams/neutral.yaml", "--encoder", str(tiny_encoder_dir),
                          "--train_csv", str(train), "--output_folder", str(out), "--batch_size", "4",
                          "--number_of_epochs", "1", "--lr", "0.001", "--tts_cache_dir", str(tmp_path / "tts"),
                          "--length_rules", "True", "--max_samples", "96000", "--split_samples", "32000"])
    losses = _rows(out / "loss.csv")
    assert len(losses) == n // 4 and all(float(r["loss"]) > 0 for r in losses)
    assert (Path(folder) / "config.json").is_file()
