"""The downstream run's fast path gives the run of the slow one, run for run.

Fast (the default): a checkpoint only at each new best dev metric and at the end, at most two kept; the dev
batches' padded (or pooled) features held in memory after the first evaluation; the training split's items made
once and batched without the per-item pipeline. Slow: `--checkpoint_every_eval true --hold_dev_features false
--hold_train_items false` (a checkpoint at every evaluation, the dev features rebuilt each time, SpeechBrain's
pipeline and PaddedBatch on every visit), which is what every run did before. Same seed, same data: every number
but the timings must be the same.

Pooled states (`pool_before_head`, heads that pool first): the layer weights and the head run on each utterance's
per-layer mean, computed once, instead of on its frames every step: the same linear arithmetic in another order,
so the run equals the frame-level one up to float rounding (same steps, stop, predictions; losses to 1e-5)."""
import json

import pytest
import torch

from downstream_helpers import make_tiny_corpus, recipe_module
from rewire_lib.files.logs import read_csv
from tests.test_downstream import run
from tests.test_finetune import fast_env_log  # noqa: F401 (autouse: no pip freeze / git per run)

TIMINGS = {"wall_time_s", "epoch_times_s", "feature_cache"}  # feature_cache: hit counts differ by design
SLOW = ("--checkpoint_every_eval", "true", "--hold_dev_features", "false", "--hold_train_items", "false")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_tiny_corpus(tmp_path_factory.mktemp("fast_corpus"))


def checkpoints(out):
    return [p for p in (out / "save").iterdir() if (p / "CKPT.yaml").is_file()]


def best_checkpoint_head(out):
    import yaml

    best = max(checkpoints(out), key=lambda p: yaml.safe_load((p / "CKPT.yaml").read_text())["best_order"])
    return torch.load(best / "head.ckpt", weights_only=True)


def without_timings(rows):
    return [{k: v for k, v in r.items() if k not in ("wall_time_s", "eval_time_s")} for r in rows]


@pytest.mark.parametrize("task,yaml,pooled", [("ks", "baseline.yaml", False), ("ks", "baseline.yaml", True),
                                               ("sid", "baseline.yaml", True), ("pr", "fsdd_connected.yaml", False)])
def test_fast_path_equals_the_slow_path_run_for_run(task, yaml, pooled, tiny_encoder_dir, corpus, tmp_path, monkeypatch):
    """PR on its connected-digit hparams has dropout: training draws from the RNG after every dev pass, so a
    fast path that drew less (or more) from it than the slow one would change the run. Pooled KS and SID: the
    default study's path (pooled dev states held per batch)."""
    from rewire_lib.data import dataio

    held, make_held = [], dataio.HeldItems.__init__

    def counted(self, dataset):
        held.append(len(dataset))
        make_held(self, dataset)

    monkeypatch.setattr(dataio.HeldItems, "__init__", counted)
    budget = ("--max_steps", "12", "--number_of_epochs", "100", "--eval_every_steps", "2", "--patience", "3",
              "--lr", "0.01", "--batch_size", "4", "--pool_before_head", str(pooled).lower())
    fast = run(task, tiny_encoder_dir, corpus, tmp_path / "fast", *budget, yaml=yaml)
    assert held == [fast["num_train"]]  # the fast run batched held items (made once)
    slow = run(task, tiny_encoder_dir, corpus, tmp_path / "slow", *budget, *SLOW, yaml=yaml)
    assert held == [fast["num_train"]]  # the slow one did not
    assert fast["steps"] >= 4
    assert {k: v for k, v in fast.items() if k not in TIMINGS} == {k: v for k, v in slow.items() if k not in TIMINGS}
    assert without_timings(read_csv(tmp_path / "fast" / "curve.csv")) == \
        without_timings(read_csv(tmp_path / "slow" / "curve.csv"))
    assert (tmp_path / "fast" / "test_predictions.csv").read_text() == \
        (tmp_path / "slow" / "test_predictions.csv").read_text()
    fast_head, slow_head = best_checkpoint_head(tmp_path / "fast"), best_checkpoint_head(tmp_path / "slow")
    assert fast_head.keys() == slow_head.keys() and all(torch.equal(fast_head[k], slow_head[k]) for k in fast_head)
    # the dev features were held: the slow run read the dev split from the feature cache at every evaluation,
    # the fast one at the first only
    reads = lambda r: (r["feature_cache"]["pooled_hits"] if pooled else  # noqa: E731
                       r["feature_cache"]["hits"] + r["feature_cache"]["misses"])
    evaluations, dev_rows = len(read_csv(tmp_path / "fast" / "curve.csv")), len(read_csv(corpus / "dev.csv"))
    assert evaluations >= 2 and reads(slow) - reads(fast) == (evaluations - 1) * dev_rows
    assert len(checkpoints(tmp_path / "fast")) <= 2


def test_a_killed_fast_run_resumes_to_the_unbroken_result(tiny_encoder_dir, corpus, tmp_path, monkeypatch):
    """Between checkpoints (only at new bests and the end) a killed run resumes from the latest one and replays
    the same steps: its result is the unbroken run's."""
    budget = ("--max_steps", "12", "--number_of_epochs", "100", "--eval_every_steps", "2", "--lr", "0.01")
    unbroken = run("ks", tiny_encoder_dir, corpus, tmp_path / "unbroken", *budget)

    brain_class = recipe_module("ks").KeywordSpottingBrain
    original = brain_class.on_fit_batch_end

    def killed_at_step_9(self, batch, outputs, loss, should_step):
        original(self, batch, outputs, loss, should_step)
        if self.optimizer_step == 9:
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(brain_class, "on_fit_batch_end", killed_at_step_9)
    with pytest.raises(KeyboardInterrupt):
        run("ks", tiny_encoder_dir, corpus, tmp_path / "killed", *budget)
    assert not (tmp_path / "killed" / "result.json").exists() and checkpoints(tmp_path / "killed")
    monkeypatch.undo()
    resumed = run("ks", tiny_encoder_dir, corpus, tmp_path / "killed", *budget)
    keep = lambda r: {k: v for k, v in r.items() if k not in TIMINGS | {"train_csv_used"}}  # noqa: E731
    assert keep(resumed) == keep(unbroken)
    assert without_timings(read_csv(tmp_path / "killed" / "curve.csv")) == \
        without_timings(read_csv(tmp_path / "unbroken" / "curve.csv"))
    saved = json.loads((tmp_path / "killed" / "result.json").read_text())
    assert saved["steps"] == 12 and saved["stop_reason"] == "cap"


def feature_reads(result):
    return result["feature_cache"]["hits"] + result["feature_cache"]["misses"]


def close(a, b, tol=1e-5):
    return abs(float(a) - float(b)) <= tol * max(1.0, abs(float(a)))


def split_rows(corpus):
    return {s: len(read_csv(corpus / f"{s}.csv")) for s in ("train", "dev", "test")}


@pytest.mark.parametrize("task,extra", [("ks", ()), ("ks", ("--feature_transform", "whiten")), ("sid", ()),
                                        ("ic", ())])
def test_pooled_states_give_the_frame_level_run(task, extra, tiny_encoder_dir, corpus, tmp_path):
    budget = ("--max_steps", "12", "--number_of_epochs", "100", "--eval_every_steps", "2", "--patience", "3",
              "--lr", "0.01", "--batch_size", "4", *extra)
    pooled = run(task, tiny_encoder_dir, corpus, tmp_path / "pooled", *budget)
    frames = run(task, tiny_encoder_dir, corpus, tmp_path / "frames", *budget, "--pool_before_head", "false")
    metric = pooled["metric"]
    same = ("steps", "stop_reason", "best_dev_step", f"best_dev_{metric}", f"test_{metric}", "num_train")
    assert {k: pooled[k] for k in same} == {k: frames[k] for k in same}
    assert pooled["steps"] >= 4 and close(pooled["test_loss"], frames["test_loss"])
    assert close(pooled["best_dev_loss"], frames["best_dev_loss"])
    assert (tmp_path / "pooled" / "test_predictions.csv").read_text() == \
        (tmp_path / "frames" / "test_predictions.csv").read_text()
    rows_p, rows_f = read_csv(tmp_path / "pooled" / "curve.csv"), read_csv(tmp_path / "frames" / "curve.csv")
    assert [r["step"] for r in rows_p] == [r["step"] for r in rows_f]
    for rp, rf in zip(rows_p, rows_f):
        assert rp[f"dev_{metric}"] == rf[f"dev_{metric}"]
        assert close(rp["train_loss"], rf["train_loss"]) and close(rp["dev_loss"], rf["dev_loss"])
    head_p, head_f = best_checkpoint_head(tmp_path / "pooled"), best_checkpoint_head(tmp_path / "frames")
    assert all(torch.allclose(head_p[k], head_f[k], atol=1e-5) for k in head_p)
    # the pooled run read each utterance's frames once (the whitener's fit reads the training split once more);
    # the frame-level run read a batch's frames at every step
    n = split_rows(corpus)
    fits = n["train"] if extra else 0
    assert feature_reads(pooled) == n["train"] + n["dev"] + n["test"] + fits
    assert feature_reads(frames) == pooled["steps"] * 4 + n["dev"] + n["test"] + fits > feature_reads(pooled)


def test_training_crops_keep_the_frames(tiny_encoder_dir, corpus, tmp_path):
    """SID's crops pick frames while training: that stage cannot read pooled states (dev and test still do)."""
    result = run("sid", tiny_encoder_dir, corpus, tmp_path / "crop", "--max_steps", "8", "--number_of_epochs", "100",
                 "--eval_every_steps", "4", "--batch_size", "4", "--train_crop_seconds", "0.2")
    n = split_rows(corpus)
    assert feature_reads(result) == 8 * 4 + n["dev"] + n["test"]


@pytest.mark.parametrize("key", ["checkpoint_every_eval", "hold_dev_features", "hold_train_items", "pool_before_head",
                                 "plots"])
def test_a_switch_that_is_not_true_or_false_is_refused_by_name(key, tiny_encoder_dir, corpus, tmp_path):
    from rewire_lib.training.recipe import HparamsError

    with pytest.raises(HparamsError, match=rf"'{key}' must be bool, got 'sometimes'"):
        run("ks", tiny_encoder_dir, corpus, tmp_path / "out", "--max_steps", "2", f"--{key}", "sometimes")


def test_pooled_states_are_computed_once_and_shared(tmp_path):
    """FeatureCache.get_pooled: None before the frames are cached; then the mean over frames of what is stored,
    computed from one frame read and served from memory afterwards (counted apart from frame reads)."""
    from rewire_lib.downstream.feature_cache import FeatureCache

    wav = tmp_path / "a.wav"
    wav.write_bytes(b"RIFF")
    cache = FeatureCache("fp", mode="memory", dtype=torch.float16)
    key = cache.key(str(wav))
    assert cache.get_pooled(key) is None and cache.misses == 1
    feats = torch.randn(3, 7, 5)
    cache.put(key, feats)
    pooled = cache.get_pooled(key)
    assert pooled.dtype == torch.float32 and pooled.shape == (3, 5)
    assert torch.allclose(pooled, feats.half().float().mean(dim=1))
    assert cache.get_pooled(key) is pooled and (cache.hits, cache.pooled_hits) == (1, 1)


def test_a_group_shares_pooled_states_without_changing_a_run(tiny_encoder_dir, corpus, tmp_path):
    """The runs of a study group share one FeatureCachePool: a later run reads no frames at all, and its result is
    that of the same run alone."""
    from downstream_helpers import run_task
    from rewire_lib.downstream.feature_cache import FeatureCachePool
    from rewire_lib.files.paths import REPO_ROOT

    def argv(out, seed):
        return [str(REPO_ROOT / "recipes/ks/hparams/baseline.yaml"), "--noprogressbar", "--encoder",
                str(tiny_encoder_dir), "--data_folder", str(corpus), "--output_folder", str(out), "--batch_size", "4",
                "--number_of_epochs", "100", "--max_steps", "8", "--eval_every_steps", "4", "--seed", str(seed)]

    pool = FeatureCachePool()
    first = run_task("ks", argv(tmp_path / "first", 0), feature_caches=pool)["feature_cache"]
    shared = run_task("ks", argv(tmp_path / "shared", 1), feature_caches=pool)
    alone = run_task("ks", argv(tmp_path / "alone", 1))
    after = shared["feature_cache"]  # the shared cache's counts, the first run's included
    assert (after["hits"], after["misses"]) == (first["hits"], first["misses"]) and first["misses"] > 0
    assert after["pooled_hits"] > first["pooled_hits"]
    keep = lambda r: {k: v for k, v in r.items() if k not in TIMINGS}  # noqa: E731
    assert keep(shared) == keep(alone)


def test_a_frozen_encoder_is_not_walked_by_every_epochs_mode_switch(tiny_encoder_dir, corpus, tmp_path, monkeypatch):
    """SpeechBrain's fit puts every module in train mode at each epoch; a frozen encoder is kept in eval mode
    instead (`kept_in_eval`), so its submodules are not walked each epoch (nor walked back by the next batch), and
    the run is the same as one that walked them."""
    import contextlib

    from rewire_lib.downstream import brain as brain_module

    walks = []
    train = torch.nn.Module.train

    def counted(module, mode=True):
        if type(module).__module__.startswith("transformers."):  # the encoder's submodules, not the head's
            walks.append(mode)
        return train(module, mode)

    monkeypatch.setattr(torch.nn.Module, "train", counted)
    budget = ("--max_steps", "12", "--number_of_epochs", "100", "--eval_every_steps", "4", "--batch_size", "8",
              "--lr", "0.01", "--patience", "0")
    kept = run("ks", tiny_encoder_dir, corpus, tmp_path / "kept", *budget)
    walks_kept, walks[:] = len(walks), []
    monkeypatch.setattr(brain_module, "kept_in_eval", lambda module, active=True: contextlib.nullcontext(module))
    walked = run("ks", tiny_encoder_dir, corpus, tmp_path / "walked", *budget)
    epochs = walked["epochs"]
    assert epochs >= 2 and walks_kept > 0  # the encoder still goes to eval mode outside fit (loading, test pass)
    assert len(walks) >= walks_kept + epochs * 10  # each epoch walked it (at least 10 submodules) without the keep
    assert {k: v for k, v in kept.items() if k not in TIMINGS} == {k: v for k, v in walked.items() if k not in TIMINGS}
    assert (tmp_path / "kept" / "test_predictions.csv").read_text() == \
        (tmp_path / "walked" / "test_predictions.csv").read_text()


def test_pooled_dev_and_test_passes_go_in_pooled_eval_batches(tiny_encoder_dir, corpus, tmp_path, monkeypatch):
    """A head that reads pooled states evaluates `pooled_eval_batch_size` utterances a batch (one batch for the
    whole tiny dev set by default), frames go in `eval_batch_size` ones; the run is the same either way up to
    float rounding (same steps, stop, predictions)."""
    import math

    from rewire_lib.downstream.brain import DownstreamBrain

    sizes, encoded = [], []
    evaluate_batch, run_encoder = DownstreamBrain.evaluate_batch, DownstreamBrain._run_encoder

    def counted(self, batch, stage):
        sizes.append(len(batch.id))
        return evaluate_batch(self, batch, stage)

    def encoder_counted(self, wavs, wav_lens, grad):
        encoded.append(len(wavs))
        return run_encoder(self, wavs, wav_lens, grad)

    monkeypatch.setattr(DownstreamBrain, "evaluate_batch", counted)
    monkeypatch.setattr(DownstreamBrain, "_run_encoder", encoder_counted)
    n = split_rows(corpus)
    budget = ("--max_steps", "8", "--number_of_epochs", "100", "--eval_every_steps", "4", "--batch_size", "4",
              "--lr", "0.01", "--eval_batch_size", "7")
    one = run("ks", tiny_encoder_dir, corpus, tmp_path / "one", *budget)
    evaluations = len(read_csv(tmp_path / "one" / "curve.csv"))
    assert evaluations >= 2 and sizes == [n["dev"]] * evaluations + [n["test"]]
    # the cache misses of a one-batch dev/test pass went through the encoder eval_batch_size clips at a time
    assert n["dev"] > 7 and max(encoded) == 7 and sum(encoded) == sum(n.values())
    sizes[:] = []
    small = run("ks", tiny_encoder_dir, corpus, tmp_path / "small", *budget, "--pooled_eval_batch_size", "5")
    assert len(sizes) == evaluations * math.ceil(n["dev"] / 5) + math.ceil(n["test"] / 5) and max(sizes) == 5
    sizes[:] = []
    frames = run("ks", tiny_encoder_dir, corpus, tmp_path / "frames", *budget, "--pool_before_head", "false")
    assert max(sizes) == 7 and len(sizes) == evaluations * math.ceil(n["dev"] / 7) + math.ceil(n["test"] / 7)
    same = ("steps", "stop_reason", "best_dev_step", "best_dev_accuracy", "test_accuracy")
    assert {k: one[k] for k in same} == {k: small[k] for k in same} == {k: frames[k] for k in same}
    assert n["test"] % 5 and n["test"] % 7  # a short last batch, which a mean of batch means would weigh more
    for other in (small, frames):  # the test loss is the mean over the test utterances, whatever the batches
        assert close(one["test_loss"], other["test_loss"]) and close(one["best_dev_loss"], other["best_dev_loss"])
    assert (tmp_path / "one" / "test_predictions.csv").read_text() == \
        (tmp_path / "small" / "test_predictions.csv").read_text()


def test_a_pooled_eval_batch_size_below_one_is_refused_by_name(tiny_encoder_dir, corpus, tmp_path):
    from rewire_lib.training.recipe import HparamsError

    with pytest.raises(HparamsError, match=r"pooled_eval_batch_size: an integer >= 1 is expected .* got 0"):
        run("ks", tiny_encoder_dir, corpus, tmp_path / "out", "--max_steps", "2", "--pooled_eval_batch_size", "0")
