"""`feature_transform: centre | whiten`: the head sees training features with zero mean (and, whitened,
identity covariance) per layer; the fit is checkpointed (a resumed run does not refit); bad settings are
one-line errors."""
import pytest
import torch

from downstream_helpers import assert_loads_without_code, make_tiny_corpus
from rewire_lib.downstream import brain as brain_module
from rewire_lib.training.recipe import HparamsError
from tests.test_downstream import run
from tests.test_finetune import fast_env_log  # noqa: F401 (autouse: no pip freeze / git per run)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_tiny_corpus(tmp_path_factory.mktemp("ft_transform_corpus"))


def record_training_states(monkeypatch):
    """{utterance ID: [L+1, T, D] hidden states as the featurizer got them while training}."""
    seen = {}
    original = brain_module.DownstreamBrain.encoder_states

    def recording(self, batch, stage):
        hidden, mask = original(self, batch, stage)
        if stage == brain_module.sb.Stage.TRAIN:
            for j, uid in enumerate(batch.id):
                seen.setdefault(uid, hidden[:, j, : int(mask[j].sum())].detach().float())
        return hidden, mask

    monkeypatch.setattr(brain_module.DownstreamBrain, "encoder_states", recording)
    return seen


@pytest.mark.parametrize("mode", ["centre", "whiten"])
def test_head_sees_transformed_training_features(mode, monkeypatch, tiny_encoder_dir, corpus, tmp_path):
    seen = record_training_states(monkeypatch)
    result = run("ks", tiny_encoder_dir, corpus, tmp_path / mode, "--max_steps", "8", "--feature_transform", mode,
                 "--feature_cache_dtype", "float32", "--pool_before_head", "false")  # frames: what the fit centres
    assert len(seen) == 24 and result["steps"] == 8 and result["settings"]["feature_transform"] == mode
    frames = torch.cat(list(seen.values()), dim=1).double()  # [L+1, N, D]: every training frame once
    mean = frames.mean(dim=1)
    assert mean.abs().max() < 1e-4, "the training features are not centred"
    if mode == "whiten":
        for layer in range(frames.shape[0]):
            x = frames[layer] - mean[layer]
            cov = x.T @ x / (x.shape[0] - 1)
            kept = torch.diagonal(cov) > 0.5  # directions the training frames span
            assert kept.sum() >= cov.shape[0] - 2
            sub = cov[kept][:, kept]
            assert torch.allclose(sub, torch.eye(sub.shape[0], dtype=sub.dtype), atol=0.02), f"layer {layer}"
    else:  # centring keeps the scale
        assert frames.var(dim=1).mean() > 1e-3


def test_resume_keeps_the_fit(monkeypatch, tiny_encoder_dir, corpus, tmp_path):
    fits = []
    original = brain_module.DownstreamBrain.fit_feature_transform
    monkeypatch.setattr(brain_module.DownstreamBrain, "fit_feature_transform",
                        lambda self, data: fits.append(1) or original(self, data))
    out = tmp_path / "resume"
    run("ks", tiny_encoder_dir, corpus, out, "--max_steps", "3", "--feature_transform", "whiten")
    assert fits == [1] and "feature_transform.ckpt" in assert_loads_without_code(out / "save")
    result = run("ks", tiny_encoder_dir, corpus, out, "--max_steps", "6", "--feature_transform", "whiten")
    assert fits == [1] and result["steps"] == 6  # recovered from the checkpoint, not refitted


def test_bad_settings_are_one_line_errors(tiny_encoder_dir, corpus, tmp_path):
    with pytest.raises(HparamsError, match="feature_transform must be one of"):
        run("ks", tiny_encoder_dir, corpus, tmp_path / "bad", "--feature_transform", "pca")
    with pytest.raises(HparamsError, match="frozen encoder"):
        run("ks", tiny_encoder_dir, corpus, tmp_path / "ft", "--feature_transform", "centre",
            "--freeze_encoder", "false", "--max_steps", "1")
