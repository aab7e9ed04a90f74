"""The rewired encoder folder is a complete hub model: weights, feature extractor and a model card."""
import re

from huggingface_hub import ModelCard
from transformers import AutoFeatureExtractor, AutoModel

from rewire_lib.files.paths import REPO_ROOT
from rewire_lib.rewiring.model_card import is_hub_id, portable_command, read_front_matter, render_model_card
from tests.rewire_helpers import fsdd_manifest, load_train_module

HPARAMS = REPO_ROOT / "recipes" / "rewire" / "hparams"


def test_recipe_writes_a_hub_model_card_without_machine_paths(tmp_path, tiny_encoder_dir):
    manifest = fsdd_manifest(tmp_path / "data" / "train.csv", takes=range(1), digits=range(4))
    out = tmp_path / "run"
    folder = load_train_module("rewire").main([
        str(HPARAMS / "twin.yaml"), "--encoder", str(tiny_encoder_dir), "--train_csv", str(manifest),
        "--output_folder", str(out), "--batch_size", "2", "--noprogressbar"])
    assert AutoModel.from_pretrained(folder).config.model_type == "wav2vec2"
    assert AutoFeatureExtractor.from_pretrained(folder).sampling_rate == 16000
    text = (folder / "README.md").read_text()
    meta = read_front_matter(text)
    assert meta["library_name"] == "transformers" and "rewiring" in meta["tags"]
    assert "base_model" not in meta  # a local folder is no hub id
    card = ModelCard(text)  # what push_to_hub uploads
    assert card.data.library_name == "transformers"
    for needle in ("View: twin", "4 utterances", "2 optimiser steps", "| `lr` |", "final loss"):
        assert needle in text, needle
    assert str(tmp_path) not in text and str(REPO_ROOT) not in text and not re.search(r"\s/(tmp|work|home)/", text)
    assert "python recipes/rewire/train.py recipes/rewire/hparams/twin.yaml" in text
    assert "<output_folder>/../data/train.csv" in text


def test_hub_base_model_and_datasets_go_into_the_front_matter():
    text = render_model_card(base_encoder="facebook/wav2vec2-large-lv60", view="neutral", utterances=3, hours=0.5,
                             steps=7, epochs=1, settings={"lr": 1e-6}, final_loss=1.25, command="python x",
                             isotropy={"I(W) layer 24": (0.01, 0.3)}, datasets=["openslr/librispeech_asr"])
    meta = read_front_matter(text)
    assert meta["base_model"] == "facebook/wav2vec2-large-lv60"
    assert meta["datasets"] == ["openslr/librispeech_asr"]
    assert "| I(W) layer 24 | 0.01 | 0.3 |" in text and "1.2500" in text


def test_portable_command_and_hub_ids(tmp_path):
    out = tmp_path / "out"
    cmd = portable_command(["a.yaml", str(REPO_ROOT / "recipes" / "x.yaml"), "--train_csv", str(tmp_path / "t.csv"),
                            "--output_folder", str(out)], REPO_ROOT, out)
    assert cmd == ("python recipes/rewire/train.py a.yaml recipes/x.yaml --train_csv '<output_folder>/../t.csv' "
                   "--output_folder '<output_folder>'")
    assert is_hub_id("facebook/wav2vec2-base") and is_hub_id("wav2vec2-base")
    assert not is_hub_id(str(tmp_path)) and not is_hub_id("./enc") and not is_hub_id("a/b/c")
