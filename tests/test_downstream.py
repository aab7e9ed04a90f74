"""Downstream recipes end to end on tiny data with a tiny random encoder, the feature cache
(equivalence and invalidation), resuming, folds and label checks."""
import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from downstream_helpers import make_tiny_corpus, run_task, write_csv
from rewire_lib.downstream.feature_cache import FeatureCache, encoder_fingerprint
from rewire_lib.downstream.labels import LabelError
from rewire_lib.files.logs import read_csv
from rewire_lib.files.paths import REPO_ROOT
from rewire_lib.models.encoder import SpeechEncoder
from rewire_lib.models.tiny import make_tiny_encoder
from tests.test_finetune import fast_env_log  # noqa: F401 (autouse: no pip freeze / git per run)

TASKS = {"ks": "accuracy", "sid": "accuracy", "er": "accuracy", "ic": "accuracy", "pr": "per", "asr": "wer"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_tiny_corpus(tmp_path_factory.mktemp("ds_corpus"))


def run(task, encoder, corpus, out, *extra, yaml="baseline.yaml"):
    """run_task as train.py would, with `extra` (--key value pairs) overriding the test defaults."""
    opts = {"encoder": str(encoder), "data_folder": str(corpus), "output_folder": str(out), "batch_size": "4",
            "number_of_epochs": "2", "eval_every_steps": "3"}
    opts.update({k.lstrip("-"): v for k, v in zip(extra[::2], extra[1::2])})
    argv = [str(REPO_ROOT / "recipes" / task / "hparams" / yaml), "--noprogressbar"]
    for k, v in opts.items():
        argv += [f"--{k}", v]
    return run_task(task, argv)


@pytest.mark.parametrize("task", list(TASKS))
def test_recipe_end_to_end(task, tiny_encoder_dir, corpus, tmp_path):
    metric = TASKS[task]
    out = tmp_path / task
    result = run(task, tiny_encoder_dir, corpus, out, "--max_steps", "7")
    for name in ("curve.csv", "curve.png", "result.json", "layer_weights.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    rows = read_csv(out / "curve.csv")
    assert [int(r["step"]) for r in rows] == [3, 6, 7]
    for r in rows:
        for col in ("train_loss", f"dev_{metric}", "wall_time_s"):
            assert math.isfinite(float(r[col])), (col, r)
    saved = json.loads((out / "result.json").read_text())
    assert saved["task"] == task and saved["metric"] == metric and saved["steps"] == 7
    assert saved["higher_is_better"] == (metric == "accuracy")
    assert math.isfinite(saved[f"test_{metric}"]) and 0 <= saved[f"test_{metric}"] <= (100 if metric == "accuracy" else 1000)
    assert saved["best_dev_step"] in (3, 6, 7)
    weights = saved["layer_weights"]
    assert len(weights) == 3 and sum(weights) == pytest.approx(1.0, abs=1e-5)
    assert saved == json.loads(json.dumps(result, default=float))
    if task == "ic":
        assert {"test_action_accuracy", "test_object_accuracy", "test_location_accuracy"} <= set(saved)
    if task == "asr":
        assert math.isfinite(saved["test_cer"])


def test_yaml_pairs_differ_only_in_encoder():
    """rewired.yaml extends baseline.yaml and overrides nothing but `encoder`; every baseline.yaml
    extends the one shared file."""
    import ruamel.yaml

    for task in TASKS:
        folder = REPO_ROOT / "recipes" / task / "hparams"
        rewired = ruamel.yaml.YAML().load((folder / "rewired.yaml").read_text())
        assert list(rewired) == ["extends", "encoder"] and rewired["extends"] == "baseline.yaml", task
        assert str(rewired["encoder"].value) == "<rewire_results>/twin/encoder", task
        baseline = ruamel.yaml.YAML().load((folder / "baseline.yaml").read_text())
        assert baseline["extends"] == "../../common/downstream.yaml", task


def test_train_py_from_repo_root(tiny_encoder_dir, corpus, tmp_path):
    """The script itself, as a user starts it from the repository root with paths."""
    out = tmp_path / "cli"
    cmd = [sys.executable, "recipes/ks/train.py", "recipes/ks/hparams/rewired.yaml", "--encoder", str(tiny_encoder_dir),
           "--data_folder", str(corpus), "--output_folder", str(out), "--max_steps", "2", "--batch_size", "4",
           "--eval_every_steps", "2", "--noprogressbar"]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "result.json").read_text())["steps"] == 2
    log = (out / "log.txt").read_text()
    assert "ks: test accuracy" in log
    assert "matplotlib.font_manager" not in log, "matplotlib's font-search DEBUG records fill the run's log.txt"


def test_feature_cache_gives_same_training(tiny_encoder_dir, corpus, tmp_path):
    small = ("--head", "{proj_dim: 32, hidden_size: 32}")
    with_cache = run("asr", tiny_encoder_dir, corpus, tmp_path / "cache", "--max_steps", "12",
                     "--feature_cache", "memory", "--feature_cache_dtype", "float32", *small)
    without = run("asr", tiny_encoder_dir, corpus, tmp_path / "nocache", "--max_steps", "12",
                  "--feature_cache", "none", *small)
    assert with_cache["feature_cache"]["hits"] > 0 and without["feature_cache"] is None
    a, b = read_csv(tmp_path / "cache" / "curve.csv"), read_csv(tmp_path / "nocache" / "curve.csv")
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        for col in ("train_loss", "dev_loss", "dev_wer", "dev_cer"):
            assert float(ra[col]) == pytest.approx(float(rb[col]), rel=1e-4, abs=1e-4), (col, ra, rb)
    assert with_cache["layer_weights"] == pytest.approx(without["layer_weights"], abs=1e-5)
    assert with_cache["test_wer"] == pytest.approx(without["test_wer"], abs=1e-6)


def test_feature_cache_invalidation(tiny_encoder_dir, tmp_path, fsdd_files):
    enc = SpeechEncoder.from_pretrained(tiny_encoder_dir)
    fp = encoder_fingerprint(enc)
    assert fp == encoder_fingerprint(SpeechEncoder.from_pretrained(tiny_encoder_dir))  # stable
    # the same files named another way (relative to the working directory, or a copy elsewhere): the same encoder
    relative = os.path.relpath(tiny_encoder_dir)
    assert relative != str(tiny_encoder_dir) and encoder_fingerprint(SpeechEncoder.from_pretrained(relative)) == fp
    copy = shutil.copytree(tiny_encoder_dir, tmp_path / "copy")
    assert encoder_fingerprint(SpeechEncoder.from_pretrained(copy)) == fp
    changed = SpeechEncoder.from_pretrained(copy)
    with torch.no_grad():
        next(changed.parameters()).add_(1e-3)
    assert encoder_fingerprint(changed) != fp  # one weight moved: another encoder
    other = SpeechEncoder.from_pretrained(make_tiny_encoder(tmp_path / "other", seed=1))
    assert encoder_fingerprint(other) != fp
    wav = tmp_path / "a.wav"
    wav.write_bytes(fsdd_files[0].read_bytes())
    cache = FeatureCache(fp, mode="disk", cache_dir=tmp_path / "feats", dtype=torch.float16)
    feats = torch.randn(3, 7, 32)
    key = cache.key(str(wav))
    assert cache.get(key) is None
    cache.put(key, feats)
    # a second process (fresh object) reads it from disk, fp16-rounded
    again = FeatureCache(fp, mode="disk", cache_dir=tmp_path / "feats", dtype=torch.float16)
    assert torch.allclose(again.get(key), feats, atol=1e-2)
    # another encoder, another setting or a changed file: another key (a miss)
    assert FeatureCache(encoder_fingerprint(other), "disk", tmp_path / "feats").key(str(wav)) != key
    assert FeatureCache(fp, "disk", tmp_path / "feats", dtype=torch.float32).key(str(wav)) != key
    assert FeatureCache(fp, "disk", tmp_path / "feats", settings={"sample_rate": 8000}).key(str(wav)) != key
    wav.write_bytes(fsdd_files[1].read_bytes())
    os.utime(wav, ns=(1, 1))
    assert again.key(str(wav)) != key
    # a truncated entry is a logged miss, not a crash
    path = again._file(key)
    path.write_bytes(b"not a tensor")
    fresh = FeatureCache(fp, mode="disk", cache_dir=tmp_path / "feats", dtype=torch.float16)
    assert fresh.get(key) is None and fresh.bad_files == 1


def test_resume_matches_uninterrupted(tiny_encoder_dir, corpus, tmp_path):
    """Stop after 5 steps (mid-epoch: 6 batches an epoch), rerun to 10: same curve and weights as one run."""
    once = run("ks", tiny_encoder_dir, corpus, tmp_path / "once", "--max_steps", "10", "--number_of_epochs", "5",
               "--eval_every_steps", "5")
    run("ks", tiny_encoder_dir, corpus, tmp_path / "twice", "--max_steps", "5", "--number_of_epochs", "5",
        "--eval_every_steps", "5")
    resumed = run("ks", tiny_encoder_dir, corpus, tmp_path / "twice", "--max_steps", "10", "--number_of_epochs", "5",
                  "--eval_every_steps", "5")
    a, b = read_csv(tmp_path / "once" / "curve.csv"), read_csv(tmp_path / "twice" / "curve.csv")
    assert [r["step"] for r in b] == ["5", "10"]
    for ra, rb in zip(a, b):
        for col in ("train_loss", "dev_loss", "dev_accuracy"):
            assert float(ra[col]) == pytest.approx(float(rb[col]), rel=1e-5, abs=1e-6), col
    assert resumed["steps"] == once["steps"] == 10
    head_once = torch.load(_latest(tmp_path / "once") / "head.ckpt")
    head_twice = torch.load(_latest(tmp_path / "twice") / "head.ckpt")
    for k in head_once:
        assert torch.allclose(head_once[k], head_twice[k], atol=1e-6), k


def _latest(folder: Path) -> Path:
    return max((folder / "save").glob("CKPT+*"), key=lambda p: (p / "CKPT.yaml").stat().st_mtime)


def test_er_folds_are_averaged(tiny_encoder_dir, corpus, tmp_path):
    folds = tmp_path / "folds"
    for name in ("fold1", "fold2"):
        for split in ("train", "dev", "test"):
            (folds / name).mkdir(parents=True, exist_ok=True)
            (folds / name / f"{split}.csv").write_text((corpus / f"{split}.csv").read_text())
    result = run("er", tiny_encoder_dir, corpus, tmp_path / "er", "--max_steps", "3", "--folds_dir", str(folds))
    assert result["folds"] == ["fold1", "fold2"]
    per_fold = [result["fold_results"][f]["test_accuracy"] for f in ("fold1", "fold2")]
    assert result["test_accuracy"] == pytest.approx(sum(per_fold) / 2)
    for f in ("fold1", "fold2"):
        assert (tmp_path / "er" / f / "result.json").is_file()
    assert (tmp_path / "er" / "curve.csv").is_file() and (tmp_path / "er" / "curve.png").is_file()
    assert json.loads((tmp_path / "er" / "result.json").read_text())["test_accuracy"] == result["test_accuracy"]


def test_unknown_test_label_is_named(tiny_encoder_dir, corpus, tmp_path):
    data = tmp_path / "data"
    for split in ("train", "dev"):
        data.mkdir(exist_ok=True)
        (data / f"{split}.csv").write_text((corpus / f"{split}.csv").read_text())
    with open(corpus / "test.csv") as f:
        rows = list(csv.DictReader(f))
    rows[3]["label"] = "seven"
    write_csv(data / "test.csv", rows)
    with pytest.raises(LabelError, match=r"test\.csv: line 5 .*'seven'"):
        run("ks", tiny_encoder_dir, data, tmp_path / "out", "--max_steps", "1")


def test_train_fraction_subset_on_the_fly(tiny_encoder_dir, corpus, tmp_path):
    result = run("ks", tiny_encoder_dir, corpus, tmp_path / "frac", "--max_steps", "2", "--train_fraction", "0.1")
    used = Path(result["train_csv_used"])
    assert used.name == "train_frac0.1.csv" and used.parent == tmp_path / "frac"
    with open(used) as f:
        labels = [r["label"] for r in csv.DictReader(f)]
    assert sorted(set(labels)) == ["0", "1", "2"] and len(labels) == 3  # at least one per class


def test_other_encoder_cannot_resume_a_folder(tiny_encoder_dir, corpus, tmp_path):
    run("ks", tiny_encoder_dir, corpus, tmp_path / "out", "--max_steps", "1", "--eval_every_steps", "1")
    other = make_tiny_encoder(tmp_path / "other", seed=3)
    with pytest.raises(ValueError, match=r"holds checkpoints/results of a different run \(encoder_fingerprint"):
        run("ks", other, corpus, tmp_path / "out", "--max_steps", "2")


def test_changed_settings_never_resume_an_old_run(tiny_encoder_dir, corpus, tmp_path):
    """The same output folder with another lr: stopped with the difference named, or (on_changed_run new)
    trained from scratch in a sibling folder that the same changed command resumes next time."""
    out = tmp_path / "out"
    first = run("ks", tiny_encoder_dir, corpus, out, "--max_steps", "2", "--eval_every_steps", "2")
    with pytest.raises(ValueError, match=r"different run \(lr 0\.002 -> 0\.5\)"):
        run("ks", tiny_encoder_dir, corpus, out, "--max_steps", "2", "--eval_every_steps", "2", "--lr", "0.5")
    fresh = run("ks", tiny_encoder_dir, corpus, out, "--max_steps", "2", "--eval_every_steps", "2", "--lr", "0.5",
                "--on_changed_run", "new")
    sibling = [p for p in tmp_path.iterdir() if p.name.startswith("out-")]
    assert len(sibling) == 1 and (sibling[0] / "result.json").is_file() and (sibling[0] / "save").is_dir()
    assert fresh["settings"]["lr"] == 0.5 and fresh["steps"] == 2 and first["settings"]["lr"] == 0.002
    assert json.loads((out / "result.json").read_text())["settings"]["lr"] == 0.002  # the old run is untouched
