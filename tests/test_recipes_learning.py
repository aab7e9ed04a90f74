"""Each downstream recipe learns: on generated tones (one tone per class, or sequences of tones as
phonemes / one-letter words) with the committed encoder (pretrained/tiny-hubert; a random tiny
encoder's features barely tell the tones apart), the trained head's test metric ends far from what
an untrained head gets (chance, 33 %, for the classifiers; ~100 % error for CTC), and the layer
weights have left their uniform start. With the optimiser never stepping (lr 0) a run stays at the
untrained level (checked once, for KS: every recipe trains through the same DownstreamBrain)."""
import pytest
import torch

from downstream_helpers import make_tone_corpus, run_task
from rewire_lib.files.paths import REPO_ROOT
from tests.test_finetune import fast_env_log  # noqa: F401 (autouse: no pip freeze / git per run)

ENCODER = REPO_ROOT / "pretrained" / "tiny-hubert"


@pytest.fixture(scope="module")
def tones(tmp_path_factory):
    assert (ENCODER / "config.json").is_file(), f"the committed encoder {ENCODER} is missing"
    return make_tone_corpus(tmp_path_factory.mktemp("tones"))


def train(task, data, out, *extra):
    """The recipe on `data`; features cached on disk beside the data, so each clip is encoded once per module."""
    argv = [str(REPO_ROOT / "recipes" / task / "hparams" / "baseline.yaml"), "--noprogressbar", "--encoder", str(ENCODER),
            "--data_folder", str(data), "--output_folder", str(out), "--number_of_epochs", "100",
            "--batch_size", "8", "--feature_cache", "disk",
            "--feature_cache_dir", str(data.parent / "features"), *extra]
    return run_task(task, argv)


def moved(weights):
    return max(weights) - min(weights) > 1e-3  # softmax of zeros is uniform until an optimiser step


@pytest.mark.parametrize("task", ["ks", "sid", "er", "ic"])
def test_classifier_learns_tones(task, tones, tmp_path):
    result = train(task, tones / "cls", tmp_path / "on", "--max_steps", "30", "--eval_every_steps", "15", "--lr", "0.05")
    assert result["steps"] == 30 and moved(result["layer_weights"])
    assert result["test_accuracy"] >= 90.0, result["test_accuracy"]
    if task == "ic":
        assert all(result[f"test_{s}_accuracy"] >= 90.0 for s in ("action", "object", "location"))


def test_without_optimiser_steps_nothing_is_learned(tones, tmp_path):
    frozen = train("ks", tones / "cls", tmp_path / "off", "--max_steps", "10", "--eval_every_steps", "10", "--lr", "0.0")
    assert not moved(frozen["layer_weights"])
    assert frozen["test_accuracy"] <= 70.0, frozen["test_accuracy"]


@pytest.mark.parametrize("task, metric, limit, steps, extra", [
    ("pr", "per", 20.0, 40, ["--lr", "0.05"]),
    # the BiLSTM leaves CTC's all-blank plateau later than PR's linear layer: a smaller one, more steps
    ("asr", "cer", 60.0, 150, ["--lr", "0.003", "--head", "{proj_dim: 128, hidden_size: 64, num_layers: 1}"]),
])
def test_ctc_recipe_learns_tone_sequences(task, metric, limit, steps, extra, tones, tmp_path):
    torch.set_num_threads(1)  # small LSTM steps: a second thread costs more than it gives (conftest restores it)
    result = train(task, tones / "seq", tmp_path / "on", "--max_steps", str(steps), "--eval_every_steps", "50", *extra)
    assert result["steps"] == steps and moved(result["layer_weights"])
    assert result[f"test_{metric}"] <= limit, result[f"test_{metric}"]  # untrained: all blank, 100 %
