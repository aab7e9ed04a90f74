"""Feature SpecAugment (`specaugment: true`) changes what it should: the weighted features that reach the
head are masked while training (whole feature channels and time frames zeroed) and untouched on dev/test.
Observed through the recipe's command line, at the head's input."""
import pytest
import torch

from rewire_lib.downstream import heads
from rewire_lib.files.paths import REPO_ROOT
from tests.rewire_helpers import load_train_module
from tests.test_finetune import fast_env_log, ks, run_ks, small_corpus  # noqa: F401 (fixtures)


def head_inputs(monkeypatch, ks, encoder, corpus, out, specaugment: bool):
    """Run 3 training steps and a dev/test pass; returns {"train": [(x, mask)], "eval": [(x, mask)]}
    of what the head received (x [B, T, D], frame mask [B, T])."""
    seen = {"train": [], "eval": []}
    forward = heads.PooledLinearHead.forward

    def spy(self, x, mask):
        seen["train" if self.training else "eval"].append((x.detach().float().clone(), mask.clone()))
        return forward(self, x, mask)

    monkeypatch.setattr(heads.PooledLinearHead, "forward", spy)
    run_ks(ks, encoder, corpus, out, max_steps=3, eval_every_steps=3, specaugment=specaugment, seed=1)
    assert seen["train"] and seen["eval"], "the head was never called in one of the stages"
    return seen


def zeroed_channels(x, mask):
    """Per example: how many feature channels are zero on every valid frame."""
    return [int((x[b, mask[b]].abs().sum(dim=0) == 0).sum()) for b in range(x.shape[0])]


def zeroed_frames(x, mask):
    """Per example: how many valid frames are zero in every channel."""
    return [int((x[b, mask[b]].abs().sum(dim=1) == 0).sum()) for b in range(x.shape[0])]


def test_specaugment_masks_training_features_only(monkeypatch, ks, tiny_encoder_dir, small_corpus, tmp_path):
    seen = head_inputs(monkeypatch, ks, tiny_encoder_dir, small_corpus, tmp_path / "on", specaugment=True)
    for x, mask in seen["train"]:
        # 1-2 feature masks of 4-16 channels on every example (the YAML's feature_drop; one at the edge may be cut)
        assert all(n >= 1 for n in zeroed_channels(x, mask)), zeroed_channels(x, mask)
    # 1-2 time masks of 2-8 frames (some may fall on padding of short clips, so over all examples)
    assert sum(sum(zeroed_frames(x, m)) for x, m in seen["train"]) > 0
    for x, mask in seen["eval"]:
        assert zeroed_channels(x, mask) == [0] * x.shape[0] and zeroed_frames(x, mask) == [0] * x.shape[0]


def test_without_specaugment_training_features_are_untouched(monkeypatch, ks, tiny_encoder_dir, small_corpus, tmp_path):
    seen = head_inputs(monkeypatch, ks, tiny_encoder_dir, small_corpus, tmp_path / "off", specaugment=False)
    for x, mask in seen["train"]:
        assert zeroed_channels(x, mask) == [0] * x.shape[0] and zeroed_frames(x, mask) == [0] * x.shape[0]
    # and padded frames reach the head as zeros either way
    assert all(float(x[~mask].abs().sum()) == 0 for x, mask in seen["train"] + seen["eval"])
    assert torch.is_tensor(seen["train"][0][1]) and seen["train"][0][1].dtype == torch.bool


def test_beam_search_was_removed_and_asking_for_it_is_an_error(tmp_path, tiny_encoder_dir):
    """Beam search was removed (ASR decodes greedily, no language
    model); `--beam_size` must then be refused by name, not silently ignored."""
    argv = [str(REPO_ROOT / "recipes" / "asr" / "hparams" / "baseline.yaml"), "--encoder", str(tiny_encoder_dir),
            "--output_folder", str(tmp_path / "asr"), "--beam_size", "4"]
    with pytest.raises(ValueError, match="beam_size"):
        load_train_module("asr").main(argv)
