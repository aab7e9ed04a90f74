"""Fine-tuning (`freeze_encoder: false`) through the keyword-spotting recipe's command line: the encoder's
weights change where they should and stay where frozen (CNN, lower layers, warm-up steps), the training
loss falls through the encoder alone, and every stock-config family runs downstream frozen and fine-tuned.

The final weights are read from the run's latest checkpoint (save/), i.e. what a resumed run continues from.
"""
import csv
import math

import pytest
import speechbrain.utils.logger
import torch
import yaml

from downstream_helpers import make_tiny_corpus, write_csv
from rewire_lib.files.logs import read_csv
from rewire_lib.files.paths import REPO_ROOT
from rewire_lib.models.encoder import SpeechEncoder
from rewire_lib.models.tiny import STOCK_FAMILIES, make_stock_encoder
from tests.rewire_helpers import load_train_module

CNN = "model.feature_extractor."
TOP = "model.encoder.layers.1."  # the tiny encoders have 2 Transformer layers
LAYERS = "model.encoder.layers."
# The key bias of attention gets no gradient (softmax is invariant to adding q.b to every key), so
# whether Adam moves it depends on rounding noise: it is left out of "must change".
NO_GRADIENT = ("attention.k_proj.bias",)


@pytest.fixture(autouse=True)
def fast_env_log(monkeypatch):
    """SpeechBrain's env.log runs `pip freeze` and git in shells (about half of a tiny run's time); these
    tests check training, not env.log. Modules that import this fixture get it too."""
    monkeypatch.setattr(speechbrain.utils.logger, "get_environment_description", lambda: "(not recorded in tests)\n")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_tiny_corpus(tmp_path_factory.mktemp("ft_corpus"))


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    """Every other row of the tiny corpus: 12 / 6 / 6 utterances, still every digit from both speakers."""
    full, small = make_tiny_corpus(tmp_path_factory.mktemp("ft_full")), tmp_path_factory.mktemp("ft_small")
    for split in ("train", "dev", "test"):
        with open(full / f"{split}.csv", newline="") as f:
            write_csv(small / f"{split}.csv", list(csv.DictReader(f))[::2])
    return small


@pytest.fixture(scope="module")
def ks():
    return load_train_module("ks")


def ks_argv(encoder, corpus, out, **overrides):
    """The command line `recipes/ks/train.py hparams/baseline.yaml --key value ...` for the tiny corpus."""
    opts = {"encoder": encoder, "data_folder": corpus, "output_folder": out, "batch_size": 8,
            "eval_batch_size": 12, "eval_every_steps": 2, "seed": 0}
    opts.update(overrides)
    argv = [str(REPO_ROOT / "recipes" / "ks" / "hparams" / "baseline.yaml"), "--noprogressbar", "--device", "cpu"]
    for key, value in opts.items():
        argv += [f"--{key}", str(value).lower() if isinstance(value, bool) else str(value)]
    return argv


def run_ks(ks, encoder, corpus, out, **overrides):
    """recipes/ks/train.py's main with `ks_argv`; returns what result.json holds."""
    return ks.main(ks_argv(encoder, corpus, out, **overrides))


def latest_checkpoint(out):
    """The save/ checkpoint written at the highest optimiser step."""
    ckpts = [p for p in (out / "save").iterdir() if (p / "CKPT.yaml").is_file()]
    assert ckpts, f"no checkpoint under {out / 'save'}"
    return max(ckpts, key=lambda p: yaml.safe_load((p / "CKPT.yaml").read_text())["step"])


def initial_state(encoder_dir):
    return {k: v.clone() for k, v in SpeechEncoder.from_pretrained(encoder_dir).state_dict().items()}


def changed_tensors(before, ckpt, name):
    after = torch.load(ckpt / f"{name}.ckpt", map_location="cpu")
    assert set(after) == set(before), f"{name}.ckpt holds other tensors than the initial {name}"
    return {k for k in before if not torch.equal(before[k], after[k].to(before[k].dtype))}


def train_losses(out):
    return [float(r["train_loss"]) for r in read_csv(out / "curve.csv")]


def test_top_layer_finetuning_learns_there_only_and_lowers_the_loss(ks, tiny_encoder_dir, corpus, tmp_path):
    """Head and featurizer at lr 0: a falling training loss can only come from the encoder's top layer.
    24 training clips at batch 8 and a curve row every 3 steps: each row is one epoch's mean loss."""
    out = tmp_path / "top1"
    before = initial_state(tiny_encoder_dir)
    result = run_ks(ks, tiny_encoder_dir, corpus, out, freeze_encoder=False, finetune_top_layers=1, freeze_cnn=True,
                    lr=0.0, encoder_lr=0.02, encoder_warmup_steps=3, max_steps=15, eval_every_steps=3)
    assert result["steps"] == 15
    changed = changed_tensors(before, latest_checkpoint(out), "encoder")
    must_change = {k for k in before if k.startswith(TOP) and not k.endswith(NO_GRADIENT)}
    assert must_change and must_change <= changed, f"top-layer tensors not trained: {sorted(must_change - changed)}"
    assert all(k.startswith(TOP) for k in changed), f"frozen tensors changed: {sorted(k for k in changed if not k.startswith(TOP))}"
    losses = train_losses(out)
    assert len(losses) == 5 and all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0] - 0.05, f"training loss did not fall: {losses}"  # measured 1.133 -> 1.000


def test_warmup_steps_keep_the_encoder_frozen_then_release_it(ks, tiny_encoder_dir, small_corpus, tmp_path):
    before = initial_state(tiny_encoder_dir)
    common = dict(freeze_encoder=False, freeze_cnn=True, encoder_lr=0.005, encoder_warmup_steps=4, batch_size=4)
    warm = run_ks(ks, tiny_encoder_dir, small_corpus, tmp_path / "warm", max_steps=4, **common)
    assert warm["steps"] == 4
    assert changed_tensors(before, latest_checkpoint(tmp_path / "warm"), "encoder") == set(), \
        "the encoder moved during its warm-up steps"
    released = run_ks(ks, tiny_encoder_dir, small_corpus, tmp_path / "released", max_steps=6, **common)
    assert released["steps"] == 6
    changed = changed_tensors(before, latest_checkpoint(tmp_path / "released"), "encoder")
    assert any(k.startswith(LAYERS) for k in changed), "the encoder did not train after its warm-up"


@pytest.mark.parametrize("freeze_cnn", [True, False])
def test_freeze_cnn_decides_whether_the_convolutions_learn(ks, tiny_encoder_dir, small_corpus, tmp_path, freeze_cnn):
    out = tmp_path / f"cnn_{freeze_cnn}"
    before = initial_state(tiny_encoder_dir)
    run_ks(ks, tiny_encoder_dir, small_corpus, out, freeze_encoder=False, freeze_cnn=freeze_cnn, encoder_lr=0.005,
           max_steps=3, batch_size=4)
    changed = changed_tensors(before, latest_checkpoint(out), "encoder")
    layers = {k for k in before if k.startswith(LAYERS) and not k.endswith(NO_GRADIENT)}
    assert layers <= changed, f"Transformer tensors not trained: {sorted(layers - changed)}"
    cnn_changed = {k for k in changed if k.startswith(CNN)}
    if freeze_cnn:
        assert not cnn_changed, f"freeze_cnn true but the CNN changed: {sorted(cnn_changed)}"
    else:
        cnn_weights = {k for k in before if k.startswith(CNN) and k.endswith("conv.weight")}
        assert cnn_weights <= cnn_changed, f"freeze_cnn false but not trained: {sorted(cnn_weights - cnn_changed)}"


# ---------------------------------------------------------------------- stock configs
@pytest.mark.parametrize("family", STOCK_FAMILIES)
def test_stock_config_encoder_runs_downstream_frozen_and_finetuned(ks, small_corpus, tmp_path, family):
    """Each family's library-default config (LayerDrop 0.5, SpecAugment masking, its CNN and position
    encoding) through the recipe: frozen (feature cache) and fine-tuned, finite losses, a test metric."""
    encoder = make_stock_encoder(tmp_path / "enc", family, seed=0, layerdrop=0.5)
    for mode, extra in {"frozen": {}, "finetuned": dict(freeze_encoder=False, encoder_lr=0.001)}.items():
        out = tmp_path / mode
        result = run_ks(ks, encoder, small_corpus, out, max_steps=2, batch_size=4, **extra)
        assert result["steps"] == 2, (family, mode)
        assert math.isfinite(result["test_accuracy"]), (family, mode, result)
        losses = train_losses(out)
        assert losses and all(math.isfinite(x) for x in losses), (family, mode, losses)
        if mode == "finetuned":
            changed = changed_tensors(initial_state(encoder), latest_checkpoint(out), "encoder")
            assert any(k.startswith(LAYERS) for k in changed), f"{family}: the fine-tuned encoder did not change"
