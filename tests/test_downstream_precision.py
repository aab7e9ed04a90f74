"""Mixed precision on CPU for downstream training and feature extraction (SpeechBrain's `--precision` /
`--eval_precision` run options): bf16 autocast runs a recipe with a frozen encoder (the feature cache is
filled under autocast) and with fine-tuning; fp16 is refused on CPU by SpeechBrain with a clear message
(it needs a GPU's GradScaler).
"""
import math

import pytest

from rewire_lib.files.logs import read_csv
from tests.test_finetune import (TOP, changed_tensors, fast_env_log, initial_state,  # noqa: F401 (fixtures)
                                 ks, latest_checkpoint, run_ks, small_corpus)

BF16 = dict(precision="bf16", eval_precision="bf16")


def _finite_curve(out):
    rows = read_csv(out / "curve.csv")
    assert rows, f"{out / 'curve.csv'} is empty"
    for row in rows:
        for key in ("train_loss", "dev_loss", "dev_accuracy"):
            assert math.isfinite(float(row[key])), (key, row)
    return rows


def test_bf16_frozen_encoder_runs_and_differs_from_fp32_only_by_rounding(ks, tiny_encoder_dir, small_corpus, tmp_path):
    common = dict(max_steps=4, feature_cache="memory", feature_cache_dtype="float32")
    bf16 = run_ks(ks, tiny_encoder_dir, small_corpus, tmp_path / "bf16", **common, **BF16)
    fp32 = run_ks(ks, tiny_encoder_dir, small_corpus, tmp_path / "fp32", **common)
    assert bf16["steps"] == fp32["steps"] == 4
    assert bf16.get("precision") == "bf16" and fp32.get("precision") == "fp32"
    assert math.isfinite(bf16["test_accuracy"]) and bf16["feature_cache"]["misses"] > 0
    a, b = _finite_curve(tmp_path / "bf16"), _finite_curve(tmp_path / "fp32")
    dev_a, dev_b = [float(r["dev_loss"]) for r in a], [float(r["dev_loss"]) for r in b]
    assert dev_a == pytest.approx(dev_b, abs=0.05)  # the same training, rounded to bf16
    assert dev_a != dev_b, "--precision bf16 changed nothing: autocast did not run"


def test_features_cached_under_bf16_are_not_served_to_an_fp32_run(ks, tiny_encoder_dir, small_corpus, tmp_path):
    """The cache key holds every setting that changes the features; autocast does (~1e-2 relative)."""
    common = dict(max_steps=2, feature_cache="disk", feature_cache_dtype="float32")
    run_ks(ks, tiny_encoder_dir, small_corpus, tmp_path / "bf16", feature_cache_dir=tmp_path / "cache", **common, **BF16)
    after_bf16 = run_ks(ks, tiny_encoder_dir, small_corpus, tmp_path / "fp32", feature_cache_dir=tmp_path / "cache", **common)
    fresh = run_ks(ks, tiny_encoder_dir, small_corpus, tmp_path / "fresh", feature_cache_dir=tmp_path / "cache2", **common)
    assert fresh["feature_cache"]["misses"] > 0
    assert after_bf16["feature_cache"]["misses"] == fresh["feature_cache"]["misses"], \
        "an fp32 run was served features that a bf16 run had cached"


def test_bf16_finetuning_trains_the_encoder_with_finite_losses(ks, tiny_encoder_dir, small_corpus, tmp_path):
    out = tmp_path / "ft"
    before = initial_state(tiny_encoder_dir)
    result = run_ks(ks, tiny_encoder_dir, small_corpus, out, freeze_encoder=False, finetune_top_layers=1,
                    encoder_lr=0.005, max_steps=4, **BF16)
    assert result["steps"] == 4 and math.isfinite(result["test_accuracy"])
    assert result.get("nonfinite_skipped", 0) == 0
    _finite_curve(out)
    changed = changed_tensors(before, latest_checkpoint(out), "encoder")
    assert changed and all(k.startswith(TOP) for k in changed), sorted(changed)


def test_fp16_on_cpu_is_refused_naming_the_option(ks, tiny_encoder_dir, small_corpus, tmp_path):
    with pytest.raises(ValueError, match=r"fp16.*not yet supported on CPU.*bf16"):
        run_ks(ks, tiny_encoder_dir, small_corpus, tmp_path / "fp16", max_steps=1, precision="fp16")
