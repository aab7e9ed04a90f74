"""The one SpeechBrain Brain under the six downstream recipes (`recipes/<task>/train.py` subclass it).

What every task shares lives here; what a task is (its `compute_forward`, `compute_objectives`,
`on_stage_start`/`on_stage_end` with its error-rate computers) lives in its train.py.

- Upstream: `modules.encoder` (a `SpeechEncoder`, frozen by default as in SUPERB) gives hidden states
  [L+1, B, T, D]; `modules.featurizer` (a learnable softmax-weighted layer sum) makes [B, T, D].
  The encoder always runs through `self.modules.encoder`, so under DDP a trainable encoder is the
  DDP-wrapped module and its gradients are averaged across processes.
- Frozen encoder: features come from a `FeatureCache` (one encoder pass per utterance, the audio is
  not even read on a hit); cache misses run under the Brain's autocast (`--precision bf16|fp16`) and
  are stored as `feature_cache_dtype`.
- Fine-tuning (`freeze_encoder: false`): all layers or the top `finetune_top_layers`, the CNN frozen
  with `freeze_cnn`, its own optimiser (`encoder_opt_class`, `encoder_lr`) after
  `encoder_warmup_steps` steps with it frozen.
- Every `eval_every_steps` optimiser steps (and at the last step) the dev set is evaluated and a row
  goes to curve.csv. A checkpoint (mid-epoch position, RNG and stopping state included) is saved at each
  new best dev metric and at the end of training (at every evaluation with `checkpoint_every_eval`); at
  most two are kept: the best (the test pass loads it) and the latest (a killed run resumes there and
  replays the same steps, so its result is that of an unbroken run).
- With a frozen encoder the dev batches and their padded features are held in memory after the first
  evaluation (`hold_dev_features`): the later evaluations run the head alone, with the one RNG draw the
  dev loader would have made.
- With a frozen, cached encoder the training split's items (ids, paths, labels) are computed once and batched
  without SpeechBrain's per-item pipeline (`hold_train_items`; `HeldItems`, `collate_held`): the same batches.
  A frozen encoder stays in eval mode through fit's per-epoch `modules.train()` (`kept_in_eval`).
- A head that pools first (`pools_first`: KS, SID, ER, IC) over a frozen, cached encoder reads pooled states
  (`pool_before_head`): each utterance's per-layer mean over its frames, computed once and held. The weighted
  layer sum, the centre/whiten transform and the mean over frames are all linear, so pooling first computes
  the same numbers in another order (equal up to float rounding) on [B, D] vectors instead of [B, T, D]
  frames. A stage that changes frames (SpecAugment, SID's training crops: `frame_level`) keeps the frames.
- Stopping: `patience` N stops training after N dev evaluations in a row without a new best (`is_new_best`),
  so a run ends converged instead of at an arbitrary budget; `max_steps` is the cap and `number_of_epochs`
  the other limit. result.json says which ended the run (`stop_reason`: patience | cap | epochs). The
  counter is checkpointed, so a killed run resumes it and a stopped run is not trained further.
- `write_result` writes result.json, curve.png and layer_weights.png.
- Non-finite losses/gradients are skipped and counted (`NonFiniteGuard`); DDP batches are sharded
  so W processes see what one process with the global batch sees (`ShardedBatchesDDP`).
"""
from __future__ import annotations

import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Optional

import speechbrain as sb
import torch
from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.utils.checkpoints import mark_as_loader, mark_as_saver, register_checkpoint_hooks
from speechbrain.utils.data_utils import batch_pad_right
from speechbrain.utils.distributed import ddp_barrier, if_main_process

from rewire_lib.analysis.stats import best_checkpoint
from rewire_lib.analysis.whitening import FeatureWhitener
from rewire_lib.data.audio import load_audio
from rewire_lib.data.dataio import BucketBatchSampler, HeldItems, ShardedBatchesDDP, collate_held, durations
from rewire_lib.downstream.feature_cache import FeatureCache, FeatureCachePool, encoder_fingerprint
from rewire_lib.downstream.predictions import FILENAME as PREDICTIONS_FILE, write_predictions
from rewire_lib.files.atomic import atomic_write_json
from rewire_lib.files.logs import CSVLog, plot_columns, plot_layer_weights
from rewire_lib.files.paths import cache_dir
from rewire_lib.models.eval_mode import kept_in_eval
from rewire_lib.training.nonfinite import NonFiniteGuard
from rewire_lib.training.recipe import HparamsError, unwrap_ddp

logger = logging.getLogger(__name__)

CACHE_DTYPES = {"float32": torch.float32, "float16": torch.float16}
# what result.json's settings hold beside the run's result-changing settings (hparams["run_settings"])
BUDGET_KEYS = ("number_of_epochs", "max_steps", "patience", "eval_every_steps")


@register_checkpoint_hooks
class RunState:
    """What the curve and the stopping rule need to survive a restart: training wall time, best dev so far,
    dev evaluations since it (the patience counter), and the running training loss since the last evaluation."""

    def __init__(self):
        self.train_time_s = 0.0
        self.best_score: Optional[float] = None
        self.best_step: Optional[int] = None
        self.best_loss: Optional[float] = None  # dev loss of the best checkpoint (breaks metric ties)
        self.best_order = 0  # how many times the best changed: the checkpoint meta key that finds it
        self.last_eval_step = -1
        self.evals_since_best = 0  # dev evaluations in a row without a new best (`patience` stops at N)
        self.loss_sum = 0.0
        self.loss_count = 0

    @mark_as_saver
    def _save(self, path):
        with open(path, "w") as f:
            json.dump(self.__dict__, f)

    @mark_as_loader
    def _recover(self, path, end_of_epoch=False):
        with open(path) as f:
            self.__dict__.update(json.load(f))


FEATURE_TRANSFORMS = ("none", "centre", "whiten")


@register_checkpoint_hooks
class FeatureTransform:
    """`feature_transform: centre | whiten`: a per-layer FeatureWhitener fitted once on the training split's
    frozen features (every layer, every valid frame) and applied to every split's hidden states before the
    featurizer. Checkpointed, so a resumed run (and the test pass) uses the same fit."""

    def __init__(self, mode: str, shrinkage: float = 0.0):
        self.mode, self.shrinkage = mode, float(shrinkage)
        self.whitener: Optional[FeatureWhitener] = None

    @property
    def fitted(self) -> bool:
        return self.whitener is not None and self.whitener.mean is not None

    def fit(self, batches) -> None:
        """batches: (hidden [L+1, B, T, D], frame mask [B, T]) pairs of the training split."""
        self.whitener = FeatureWhitener(self.mode, per_layer=True, shrinkage=self.shrinkage).fit(batches)

    def __call__(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.whitener.transform(hidden) * mask[None, :, :, None].to(hidden.dtype)

    @mark_as_saver
    def _save(self, path):
        torch.save(self.whitener.state_dict() if self.fitted else None, path)

    @mark_as_loader
    def _recover(self, path, end_of_epoch=False):
        state = torch.load(path, weights_only=True)  # the whitener's state is plain tensors and numbers
        self.whitener = FeatureWhitener.from_state_dict(state) if state is not None else None


def make_feature_transform(mode, shrinkage, encoder_trainable: bool) -> Optional[FeatureTransform]:
    """The hparams `feature_transform` / `feature_transform_shrinkage` as a FeatureTransform (None for none)."""
    mode = "none" if mode in (None, False) else str(mode)
    if mode not in FEATURE_TRANSFORMS:
        raise HparamsError(f"feature_transform must be one of {FEATURE_TRANSFORMS}, got {mode!r}")
    if mode == "none":
        return None
    if encoder_trainable:
        raise HparamsError(f"feature_transform: {mode} needs a frozen encoder (freeze_encoder: true): it is fitted "
                           "once on the training split's features")
    return FeatureTransform(mode, shrinkage or 0.0)


def is_better(a: float, b: Optional[float], higher_is_better: bool) -> bool:
    """True if a is strictly better than b (None/NaN b: always)."""
    if b is None or (isinstance(b, float) and math.isnan(b)):
        return not math.isnan(a)
    return a > b if higher_is_better else a < b


def is_new_best(score: float, loss: float, best_score: Optional[float], best_loss: Optional[float],
                higher_is_better: bool) -> bool:
    """rewire_lib.analysis.stats.best_checkpoint's rule, one evaluation at a time: a strictly better dev metric, or
    the same metric with a strictly lower dev loss (early CTC training: every checkpoint at 100 % WER, the
    one whose loss fell furthest is the best); a full tie keeps the earlier one."""
    if best_score is None or math.isnan(best_score) or math.isnan(score):
        return is_better(score, best_score, higher_is_better)
    if score != best_score:
        return is_better(score, best_score, higher_is_better)
    rows = [{"m": best_score, "l": math.inf if best_loss is None else best_loss}, {"m": score, "l": loss}]
    return best_checkpoint(rows, "m", "l", higher_is_better) is rows[1]


def patience_of(hparams) -> int:
    """The hparams `patience` as evaluations (0: off, the fixed budget of max_steps / number_of_epochs)."""
    value = hparams.get("patience")
    if value in (None, False):
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise HparamsError(f"patience must be null or a whole number of dev evaluations >= 0, got {value!r}")
    return value


def main_process_decides(flag: bool, device) -> bool:
    """Rank 0's `flag` on every DDP rank (identity without DDP): every rank evaluates the whole dev set, but a
    decision that ends training must be the same everywhere or the ranks would wait for each other forever."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    torch.distributed.broadcast(value, src=0)
    return bool(value.item())


def pad_features(feats: list[torch.Tensor]):
    """[L+1, T_i, D] tensors -> ([L+1, B, T, D] zero-padded, frame mask [B, T])."""
    lengths = torch.tensor([f.shape[1] for f in feats])
    frames = int(lengths.max())
    out = feats[0].new_zeros((feats[0].shape[0], len(feats), frames, feats[0].shape[2]))
    for i, f in enumerate(feats):
        out[:, i, : f.shape[1]] = f
    mask = torch.arange(frames)[None, :] < lengths[:, None]
    return out, mask


def configure_encoder_training(encoder: torch.nn.Module, freeze_encoder: bool, finetune_top_layers=None,
                               freeze_cnn: bool = True) -> bool:
    """Set which encoder parameters learn; returns whether any does. Frozen (SUPERB): none. Fine-tuned:
    every Transformer layer (`finetune_top_layers` null) or the top N, the CNN only if `freeze_cnn` is false."""
    encoder.requires_grad_(False)
    if freeze_encoder:
        return False
    layers = encoder.model.encoder.layers
    if finetune_top_layers is None:
        encoder.requires_grad_(True)
        if freeze_cnn:
            encoder.model.feature_extractor.requires_grad_(False)
        return True
    top = int(finetune_top_layers)
    if not 1 <= top <= len(layers):
        raise HparamsError(f"finetune_top_layers={top}: the encoder has {len(layers)} Transformer layers")
    for layer in layers[-top:]:
        layer.requires_grad_(True)
    return True


class DownstreamBrain(NonFiniteGuard, ShardedBatchesDDP, sb.Brain):
    """modules: `encoder`, `featurizer`, `head` (and optionally `feature_augment`). A subclass sets
    `metric` (the dev metric that picks the best checkpoint), `higher_is_better` and `curve_metrics`
    (the dev_<name> columns of curve.csv), and reports each evaluation's numbers with `report_stage`."""

    metric = "accuracy"
    higher_is_better = True
    curve_metrics: tuple = ("accuracy",)

    def __init__(self, modules, hparams, run_opts=None, checkpointer=None, feature_cache: Optional[FeatureCache] = None,
                 feature_caches: Optional[FeatureCachePool] = None):
        """feature_cache: the run's cache (default: made from the hparams); feature_caches: a pool shared with
        other runs of the caller (folds, a study group), which gives the same cache to runs with the same
        encoder and feature setting."""
        self.encoder_trainable = configure_encoder_training(
            modules["encoder"], hparams["freeze_encoder"], hparams["finetune_top_layers"], hparams["freeze_cnn"])
        super().__init__(modules=modules, hparams=hparams, run_opts=run_opts, checkpointer=checkpointer)
        self.encoder_module = modules["encoder"]  # unwrapped (for eval()/attributes; forward goes through DDP)
        self.feature_transform = make_feature_transform(hparams.get("feature_transform"),
                                                        hparams.get("feature_transform_shrinkage"),
                                                        self.encoder_trainable)
        self.output_folder = Path(hparams["output_folder"])
        self.fingerprint = hparams.get("encoder_fingerprint") or encoder_fingerprint(self.encoder_module)
        self.cache = feature_cache if feature_cache is not None else self._make_cache(feature_caches)
        self.state = RunState()
        self.stage_metrics: dict = {}
        self.epoch_times: list = []  # seconds per epoch run in this process (dev evaluations included)
        self.last_dev: dict = {}
        self._epoch = 0
        self._epoch_limit = None
        self.optimizer_step_limit = hparams["max_steps"]  # the cap
        self.patience = patience_of(hparams)
        self.eval_every_steps = max(1, int(hparams["eval_every_steps"]))
        self.warmup_steps = int(hparams["encoder_warmup_steps"] or 0)
        self.curve = CSVLog(self.output_folder / "curve.csv",
                            ["step", "epoch", "train_loss", "dev_loss"] + [f"dev_{m}" for m in self.curve_metrics]
                            + ["wall_time_s", "eval_time_s"]) if if_main_process() else None
        if self.checkpointer is not None:  # everything that learns, plus the curve's state
            self.checkpointer.add_recoverable("run_state", self.state)
            if self.feature_transform is not None:
                self.checkpointer.add_recoverable("feature_transform", self.feature_transform)
            for name in ("featurizer", "head") + (("encoder",) if self.encoder_trainable else ()):
                self.checkpointer.add_recoverable(name, modules[name])
        if not self.encoder_trainable:
            self.encoder_module.eval()
        self.checkpoint_every_eval = bool(hparams.get("checkpoint_every_eval", False))
        # each dev batch's encoder states (by utterance ids), kept after the first evaluation (frozen encoder only)
        self.held_dev: Optional[dict] = {} if hparams.get("hold_dev_features", True) and not self.encoder_trainable \
            else None
        # a pooling-first head reads each utterance's pooled states from the cache (`pooled_states`)
        self.pool_before_head = bool(hparams.get("pool_before_head", True)) and self.cache is not None \
            and getattr(unwrap_ddp(modules["head"]), "pools_first", False)
        self.pooled_eval_batch_size = int(hparams.get("pooled_eval_batch_size", 1024))  # `eval_loader_kwargs`
        if self.pooled_eval_batch_size < 1:
            raise HparamsError(f"pooled_eval_batch_size: an integer >= 1 is expected (dev/test utterances a batch "
                               f"where the head reads pooled states), got {self.pooled_eval_batch_size}")
        self.held_dev_batches: Optional[list] = None  # the dev batches themselves, once their features are held
        self.hold_train_items = bool(hparams.get("hold_train_items", True))  # `holds_train_items`
        self._test_loss: Optional[list] = None  # while testing: [loss summed over utterances, utterances]
        self._best_checkpoint_dir: Optional[Path] = None
        self._last_meta: Optional[dict] = None
        self._saved_step = -1

    def _make_cache(self, pool: Optional[FeatureCachePool]) -> Optional[FeatureCache]:
        hp = self.hparams
        if self.encoder_trainable or hp.feature_cache in (None, "none", "off"):
            return None
        if hp.feature_cache_dtype not in CACHE_DTYPES:
            raise HparamsError(f"feature_cache_dtype must be one of {sorted(CACHE_DTYPES)}, got {hp.feature_cache_dtype!r}")
        settings = dict(mode=hp.feature_cache, cache_dir=hp.feature_cache_dir or cache_dir() / "features",
                        dtype=CACHE_DTYPES[hp.feature_cache_dtype],
                        # misses are computed under the stage's autocast: its precision changes the features
                        settings={"sample_rate": 16000, "precision": f"{self.precision}/{self.eval_precision}"})
        make = lambda: FeatureCache(self.fingerprint, **settings)  # noqa: E731
        return make() if pool is None else pool.get((self.fingerprint, str(settings)), make)

    def _audio_keys_for_cache(self, dataset) -> None:
        """With the feature cache, batches carry `wav` paths instead of `sig` waveforms: on a cache hit
        the audio is never read."""
        if self.cache is not None and dataset is not None:
            keys = list(dataset.pipeline.output_mapping)
            dataset.set_output_keys(["wav" if k == "sig" else k for k in keys])

    # ------------------------------------------------------------------ upstream features
    def _encoder_frozen_now(self) -> bool:
        return not self.encoder_trainable or self.optimizer_step < self.warmup_steps

    def _run_encoder(self, wavs: torch.Tensor, wav_lens: torch.Tensor, grad: bool):
        with torch.set_grad_enabled(grad):
            out = self.modules.encoder(wavs.to(self.device), wav_lens.to(self.device))
        hidden = out.hidden_states * out.frame_mask[None, :, :, None].to(out.hidden_states.dtype)
        return hidden, out.frame_mask

    def frame_level(self, stage) -> bool:
        """Whether `stage` changes individual frames before the head pools them (then it cannot read pooled
        states): SpecAugment while training; a recipe with more (SID's crops) extends this."""
        return stage == sb.Stage.TRAIN and bool(self.hparams.specaugment)

    def encoder_states(self, batch, stage):
        """All hidden states [L+1, B, T, D] (zero on padded frames; centred/whitened with
        `feature_transform`) and the frame mask [B, T]; a dev batch's from memory after its first evaluation.
        For a pooling-first head: pooled states [L+1, B, 1, D] and an all-true mask [B, 1] (`pooled_states`)."""
        if stage == sb.Stage.VALID and self.held_dev is not None:
            key = tuple(batch.id)
            if key not in self.held_dev:
                self.held_dev[key] = self._states_of(batch, stage)
            return self.held_dev[key]
        return self._states_of(batch, stage)

    def _states_of(self, batch, stage):
        if self.pool_before_head and not self.frame_level(stage):
            return self.pooled_states(batch, stage)
        return self._encoder_states(batch, stage)

    def pooled_states(self, batch, stage):
        """Each utterance's hidden states averaged over its valid frames, per layer, stacked as [L+1, B, 1, D]
        (centred/whitened with `feature_transform`, which is affine per layer and so commutes with the mean) with
        a mask of ones [B, 1]: a pooling head's mean over that one frame is the vector itself, so featurizer and
        head run unchanged. The means live in the feature cache (`FeatureCache.get_pooled`), which the runs of a
        study group share: computed once per utterance, not once per run."""
        # a pooled dev/test batch holds up to pooled_eval_batch_size utterances: its cache misses (the group's first
        # run) go through the encoder in batches of the frame-level eval size, as they did before
        chunk = None if stage == sb.Stage.TRAIN else self.frame_eval_batch_size
        pooled = self.read_cache(batch.wav, self.cache.get_pooled, chunk)
        hidden = torch.stack(pooled, dim=1)[:, :, None, :].to(self.device)
        mask = torch.ones(hidden.shape[1], 1, dtype=torch.bool, device=hidden.device)
        if self.feature_transform is not None:
            hidden = self.feature_transform(hidden, mask)
        return hidden, mask

    def read_cache(self, wav_paths: list, read, chunk: Optional[int] = None) -> list:
        """`read(key)` of each utterance (`FeatureCache.get_stored` or `get_pooled`), the encoder run first on the
        utterances the cache does not hold yet (`chunk` of them at a time; None: all at once)."""
        keys = [self.cache.key(p) for p in wav_paths]
        found = [read(k) for k in keys]
        missing = [i for i, f in enumerate(found) if f is None]
        chunk = chunk or max(1, len(missing))
        for start in range(0, len(missing), chunk):
            part = missing[start:start + chunk]
            self.fill_cache([wav_paths[i] for i in part], [keys[i] for i in part])
        for i in missing:
            found[i] = read(keys[i])
            self.cache.hits -= 1  # that read-back was part of the miss
        return found

    def fill_cache(self, wav_paths: list, keys: list) -> None:
        """Run the frozen encoder on utterances the cache does not hold yet, and store their states."""
        if self.encoder_module.training:
            self.encoder_module.eval()  # frozen: no dropout (fit itself keeps it in eval: kept_in_eval)
        wavs, wav_lens = batch_pad_right([load_audio(p) for p in wav_paths])
        hidden, mask = self._run_encoder(wavs, wav_lens, grad=False)
        for j, key in enumerate(keys):
            self.cache.put(key, hidden[:, j, : int(mask[j].sum())])

    def _encoder_states(self, batch, stage):
        hidden, mask = self.raw_encoder_states(batch, stage)
        if self.feature_transform is not None:
            if not self.feature_transform.fitted:
                raise RuntimeError("feature_transform used before it was fitted (fit() fits it before training)")
            hidden = self.feature_transform(hidden, mask)
        return hidden, mask

    def fit_feature_transform(self, train_set) -> None:
        """One pass over the training split (through the feature cache: no extra encoder pass when it is on)."""
        loader = sb.dataio.dataloader.make_dataloader(train_set, **self.eval_loader_kwargs(train_set, frames=True))
        t0 = time.time()
        with torch.no_grad():
            self.feature_transform.fit(self.raw_encoder_states(batch, sb.Stage.TRAIN) for batch in loader)
        logger.info("feature_transform %s fitted on %d training frames in %.1f s", self.feature_transform.mode,
                    self.feature_transform.whitener.count, time.time() - t0)

    def raw_encoder_states(self, batch, stage):
        """The encoder's hidden states [L+1, B, T, D] (zero on padded frames) and the frame mask [B, T]."""
        if not self.encoder_trainable and self.encoder_module.training:
            self.encoder_module.eval()  # frozen: no dropout (fit itself keeps it in eval: kept_in_eval)
        frozen = self._encoder_frozen_now()
        if self.cache is not None and frozen:
            feats = self.read_cache(batch.wav, self.cache.get_stored)
            hidden, mask = pad_features(feats)  # in the cache's dtype, then one conversion for the batch
            return hidden.to(self.device, torch.float32), mask.to(self.device)
        wavs, wav_lens = batch.sig
        return self._run_encoder(wavs, wav_lens, grad=stage == sb.Stage.TRAIN and not frozen)

    def layer_features(self, batch, stage):
        """The weighted layer sum [B, T, D] (feature SpecAugment while training when `specaugment` is on;
        padded frames zero) and the frame mask [B, T]: what every head reads."""
        hidden, mask = self.encoder_states(batch, stage)
        x = self.modules.featurizer(hidden)
        if stage == sb.Stage.TRAIN and self.hparams.specaugment:
            x = self.modules.feature_augment(x)
        return x * mask[..., None].to(x.dtype), mask

    # ------------------------------------------------------------------ optimisers
    def init_optimizers(self):
        head_params = [p for n in ("featurizer", "head") for p in self.modules[n].parameters() if p.requires_grad]
        self.optimizer = self.hparams.opt_class(head_params)
        self.optimizers_dict = {"head": self.optimizer}
        if self.checkpointer is not None:
            self.checkpointer.add_recoverable("optimizer", self.optimizer)
        if self.encoder_trainable:
            params = [p for p in self.modules.encoder.parameters() if p.requires_grad]
            self.encoder_optimizer = self.hparams.encoder_opt_class(params)
            self.optimizers_dict["encoder"] = self.encoder_optimizer
            if self.checkpointer is not None:
                self.checkpointer.add_recoverable("encoder_optimizer", self.encoder_optimizer)

    def freeze_optimizers(self, optimizers):
        if self.encoder_trainable and self.optimizer_step < self.warmup_steps:
            return {k: v for k, v in optimizers.items() if k != "encoder"}
        return optimizers

    # ------------------------------------------------------------------ loaders
    def train_loader_kwargs(self, dataset) -> dict:
        """Length-bucketed batches, reproducible per (seed, epoch); under DDP each rank its slice."""
        sampler = BucketBatchSampler(durations(dataset), int(self.hparams.batch_size), seed=int(self.hparams.seed),
                                     drop_last=False, ddp_shard=True)
        return {"batch_sampler": sampler}

    @property
    def frame_eval_batch_size(self) -> int:
        return int(self.hparams.eval_batch_size or self.hparams.batch_size)

    def eval_loader_kwargs(self, dataset, frames: bool = False) -> dict:
        """Dev and test batches: `pooled_eval_batch_size` utterances where the head reads pooled states (one
        [L+1, D] vector set an utterance, whatever its duration: a KS dev pass of 582 clips is one batch instead
        of 19, each of which cost ~0.3 ms of Python around microseconds of arithmetic), else `eval_batch_size`.
        frames: the batches are read as frames whatever the head (the feature transform's fit)."""
        pooled = self.pool_before_head and not frames
        batch_size = self.pooled_eval_batch_size if pooled else self.frame_eval_batch_size
        return {"batch_sampler": BucketBatchSampler(durations(dataset), batch_size, shuffle=False, drop_last=False)}

    @property
    def best_dev_key(self) -> dict:
        """`evaluate(..., **brain.best_dev_key)` loads the best checkpoint: best dev metric, ties to the lower
        dev loss (`is_new_best`); its meta `best_order` counts the improvements, so the highest is the best."""
        return {"max_key": "best_order"}

    # ------------------------------------------------------------------ stage hooks (subclasses extend)
    def on_fit_start(self):
        super().on_fit_start()  # optimisers, then the latest checkpoint (mid-epoch position included)
        if self.feature_transform is not None and not self.feature_transform.fitted:  # a resumed run keeps its fit
            self.fit_feature_transform(self._train_set)
        if self.curve is not None:
            self.curve.truncate_after("step", self.optimizer_step)
        if self.optimizer_step:
            logger.info("Resumed at optimiser step %d", self.optimizer_step)
            best = self.checkpointer.find_checkpoint(max_key="best_order") if self.checkpointer is not None else None
            self._best_checkpoint_dir = best.path if best is not None else None
            self._saved_step = self.optimizer_step
        self._t_last = time.time()

    def on_evaluate_start(self, max_key=None, min_key=None):
        super().on_evaluate_start(max_key=max_key, min_key=min_key)  # loads the best-dev checkpoint
        self.step = 0  # the recovered in-epoch position must not skew the test-loss average

    def on_stage_start(self, stage, epoch=None):
        if stage == sb.Stage.TRAIN:
            self._epoch = epoch
            self._epoch_t0 = time.time()

    def report_stage(self, stage, stage_loss, **metrics) -> None:
        """A subclass's on_stage_end hands its numbers here: dev ones go to curve.csv and pick the
        best checkpoint, test ones to result.json."""
        self.stage_metrics[stage] = {"loss": float(stage_loss), **{k: float(v) for k, v in metrics.items()}}

    def prediction_rows(self) -> list:
        """The test pass's per-utterance rows for test_predictions.csv (rewire_lib.downstream.predictions);
        every task's Brain gives them from its metric objects."""
        raise NotImplementedError(f"{type(self).__name__} must give prediction_rows() for {PREDICTIONS_FILE}")

    def on_stage_end(self, stage, stage_loss, epoch=None):
        if stage == sb.Stage.TEST:  # every rank gathers; the main process writes
            write_predictions(self.output_folder, self.prediction_rows(), main_process=if_main_process())
        if stage != sb.Stage.TRAIN:
            return
        last_epoch = self._epoch_limit is not None and epoch >= self._epoch_limit
        if last_epoch or self._optimizer_step_limit_exceeded:  # training ends: evaluated and checkpointed here
            if self.state.last_eval_step != self.optimizer_step:
                self.evaluate_dev_and_checkpoint(final=True)
            elif self._saved_step != self.optimizer_step and self._last_meta is not None:
                self.save_checkpoint(self._last_meta, best=False)
        seconds = time.time() - self._epoch_t0
        self.epoch_times.append(round(seconds, 3))
        logger.info("epoch %d took %.2f s (dev evaluations included)%s", epoch, seconds,
                    f"; feature cache {self.cache.stats()}" if self.cache is not None else "")

    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        self.state.loss_sum += float(loss.detach())
        self.state.loss_count += 1
        if not should_step:  # gradient accumulation (grad_accumulation_factor): no optimiser step yet
            return
        if self.optimizer_step % self.eval_every_steps == 0 or self._optimizer_step_limit_exceeded:
            self.evaluate_dev_and_checkpoint()

    def fit(self, epoch_counter, train_set, valid_set=None, **kwargs):
        """SpeechBrain's fit; `valid_set` is evaluated every `eval_every_steps` steps, not per epoch."""
        self._epoch_limit = getattr(epoch_counter, "limit", None)
        self.dev_set = valid_set
        self._train_set = train_set
        for dataset in (train_set, valid_set):
            self._audio_keys_for_cache(dataset)
        kwargs.setdefault("train_loader_kwargs", self.train_loader_kwargs(train_set))
        if self.holds_train_items(train_set):
            train_set = HeldItems(train_set)
            kwargs["train_loader_kwargs"].setdefault("collate_fn", collate_held)
        with kept_in_eval(self.encoder_module, active=not self.encoder_trainable):  # fit switches modes every epoch
            super().fit(epoch_counter, train_set, **kwargs)
        logger.info("training stopped at step %d: %s", self.optimizer_step, self.stop_text())

    def holds_train_items(self, train_set) -> bool:
        """`hold_train_items` where it is sound: a frozen, cached encoder whose batches carry audio paths, not
        audio (`_audio_keys_for_cache`), so every item is the same on every visit and small."""
        return self.hold_train_items and self.cache is not None and not self.encoder_trainable \
            and isinstance(train_set, DynamicItemDataset) and "sig" not in train_set.pipeline.output_mapping

    # ------------------------------------------------------------------ stopping
    @property
    def patience_spent(self) -> bool:
        """`patience` dev evaluations in a row without a new best (never with patience off)."""
        return bool(self.patience) and self.state.evals_since_best >= self.patience

    @property
    def _optimizer_step_limit_exceeded(self):
        """SpeechBrain's step limit (`max_steps`, the cap) or a spent patience: either ends fit's loops (checked
        before every batch, so a resumed run that had stopped trains no further)."""
        return super()._optimizer_step_limit_exceeded or self.patience_spent

    @property
    def stop_reason(self) -> str:
        """result.json's stop_reason, what ended (or would end) the training: patience, the step cap (max_steps),
        else the epochs (number_of_epochs)."""
        if self.patience_spent:
            return "patience"
        if super()._optimizer_step_limit_exceeded:
            return "cap"
        return "epochs"

    def stop_text(self) -> str:
        reason = self.stop_reason
        if reason == "patience":
            return (f"patience: dev {self.metric} did not improve for {self.state.evals_since_best} evaluations "
                    f"(patience {self.patience}, every {self.eval_every_steps} steps)")
        if reason == "cap":
            still = f", {self.state.evals_since_best} evaluations after the best" if self.patience else ""
            return f"cap: max_steps {self.optimizer_step_limit} reached{still}"
        return f"epochs: number_of_epochs {self._epoch_limit} done"

    def evaluate(self, test_set, max_key=None, min_key=None, **kwargs):
        """SpeechBrain's evaluate on the best-dev checkpoint (by default); returns the test metrics."""
        if max_key is None and min_key is None:
            max_key, min_key = self.best_dev_key.get("max_key"), self.best_dev_key.get("min_key")
        self._audio_keys_for_cache(test_set)
        kwargs.setdefault("test_loader_kwargs", self.eval_loader_kwargs(test_set))
        self.train_summary = {"steps": int(self.optimizer_step), "stop_reason": self.stop_reason,
                              "best_score": self.state.best_score,
                              "best_step": self.state.best_step, "best_loss": self.state.best_loss, "train_time_s": float(self.state.train_time_s),
                              "last_dev": dict(self.last_dev)}
        self._test_loss = [0.0, 0]  # sum over utterances, utterances (`update_average`)
        try:
            super().evaluate(test_set, max_key=max_key, min_key=min_key, **kwargs)
        finally:
            self._test_loss = None
        return self.stage_metrics.get(sb.Stage.TEST, {})

    def evaluate_batch(self, batch, stage):
        loss = super().evaluate_batch(batch, stage)
        if stage == sb.Stage.TEST and self._test_loss is not None and torch.isfinite(loss):
            self._test_loss[0] += float(loss) * len(batch.id)
            self._test_loss[1] += len(batch.id)
        return loss

    def update_average(self, loss, avg_loss):
        """The test loss is the mean over the test utterances, as the dev loss is (`run_dev`), whatever the batches:
        SpeechBrain's running mean of batch means would weigh a short last batch's utterances more, so the test loss
        would depend on the batch size (pooled states and frames are evaluated in batches of different sizes)."""
        if self._test_loss is not None:
            total, count = self._test_loss
            return total / count if count else avg_loss
        return super().update_average(loss, avg_loss)

    # ------------------------------------------------------------------ dev evaluation
    @torch.no_grad()
    def run_dev(self) -> dict:
        """The dev set through the subclass's stage hooks, in the middle of training."""
        if self.dev_set is None:
            return {self.metric: math.nan, "loss": math.nan}
        if not hasattr(self, "_dev_loader"):
            self._dev_loader = sb.dataio.dataloader.make_dataloader(self.dev_set, **self.eval_loader_kwargs(self.dev_set))
        if self.held_dev_batches is not None:
            # the batches (ids, labels) and their features are held: replayed, with the one number a DataLoader's
            # iterator draws from the global RNG when it starts (torch's _BaseDataLoaderIter), so that a training
            # run's later random draws (dropout, SpecAugment) are those of a run that iterated the loader
            torch.empty((), dtype=torch.int64).random_(generator=self._dev_loader.generator)
            batches, keep = self.held_dev_batches, None
        else:
            batches, keep = self._dev_loader, ([] if self.held_dev is not None else None)
        was_training = self.modules.training
        self.modules.eval()
        self.on_stage_start(sb.Stage.VALID, self._epoch)
        total, n = 0.0, 0
        for batch in batches:
            loss = self.evaluate_batch(batch, sb.Stage.VALID)
            total += float(loss) * len(batch.id)
            n += len(batch.id)
            if keep is not None:
                keep.append(batch)
        if keep is not None:
            self.held_dev_batches = keep
        self.on_stage_end(sb.Stage.VALID, total / n if n else math.nan, self._epoch)
        if was_training:
            self.modules.train()
        return self.stage_metrics[sb.Stage.VALID]

    def evaluate_dev_and_checkpoint(self, final: bool = False):
        """final: training ends after this evaluation (also known from the step cap and the patience)."""
        now = time.time()
        self.state.train_time_s += now - self._t_last
        dev = self.run_dev()
        eval_time = time.time() - now
        step, score = self.optimizer_step, dev[self.metric]
        train_loss = self.state.loss_sum / self.state.loss_count if self.state.loss_count else math.nan
        new_best = is_new_best(score, dev["loss"], self.state.best_score, self.state.best_loss, self.higher_is_better)
        new_best = main_process_decides(new_best, self.device)
        if new_best:
            self.state.best_score, self.state.best_step, self.state.best_loss = score, step, dev["loss"]
            self.state.best_order += 1
        self.state.evals_since_best = 0 if new_best else self.state.evals_since_best + 1
        self.state.last_eval_step = step
        self.state.loss_sum, self.state.loss_count = 0.0, 0
        self.last_dev = dev
        if self.curve is not None:
            row = dict(step=step, epoch=self._epoch, train_loss=f"{train_loss:.6f}",
                       wall_time_s=f"{self.state.train_time_s:.3f}", eval_time_s=f"{eval_time:.3f}")
            row.update({f"dev_{k}": f"{v:.6f}" for k, v in dev.items() if f"dev_{k}" in self.curve.fields})
            self.curve.append(**row)
        logger.info("step %d epoch %d: train_loss %.4f dev %s %.3f (best %.3f at %s)", step, self._epoch, train_loss,
                    self.metric, score, self.state.best_score if self.state.best_score is not None else math.nan,
                    self.state.best_step)
        if self.patience_spent:
            logger.info("stopping at step %d on %s", step, self.stop_text())
        # best_order: the best checkpoint's count of improvements, -1 on the others (max_key finds the best)
        self._last_meta = {"dev_score": float(score), "dev_loss": float(dev["loss"]), "step": step,
                           "epoch": self._epoch, "best_order": self.state.best_order if new_best else -1}
        final = final or self._optimizer_step_limit_exceeded
        if self.checkpointer is not None and (new_best or final or self.checkpoint_every_eval):
            self.save_checkpoint(self._last_meta, best=new_best)  # after the counter: a resumed run knows it stopped
        self._t_last = time.time()

    def save_checkpoint(self, meta: dict, best: bool) -> None:
        """A checkpoint of the current state; then every other one is deleted but the best. Written by hand
        instead of `save_and_keep_only`, whose search re-reads every checkpoint's YAML about 30 times a save
        (0.25 s each, measured; more than the training of a linear head), while this Brain knows which is best."""
        saved = self.checkpointer.save_checkpoint(meta=meta, end_of_epoch=False, verbosity=logging.DEBUG)
        if saved is not None:  # the main process
            if best:
                self._best_checkpoint_dir = saved.path
            keep = {saved.path, self._best_checkpoint_dir}
            for folder in Path(self.checkpointer.checkpoints_dir).iterdir():
                if folder not in keep and (folder / "CKPT.yaml").is_file():
                    shutil.rmtree(folder)
        ddp_barrier()
        self._saved_step = self.optimizer_step

    # ------------------------------------------------------------------ outputs
    def write_result(self, task: str, datasets: dict, extra: Optional[dict] = None) -> dict:
        """result.json (test metric of the best-dev checkpoint, best dev metric and step, learned layer
        weights, settings), curve.png and layer_weights.png; returns what result.json holds."""
        from rewire_lib.downstream.run import encoder_tag

        hp, metric, summary = self.hparams, self.metric, self.train_summary
        test = dict(self.stage_metrics.get(sb.Stage.TEST, {}))
        weights = unwrap_ddp(self.modules.featurizer).weights().detach().cpu().tolist()
        result = {
            "task": task, "metric": metric, "higher_is_better": self.higher_is_better, "metric_unit": "%",
            "encoder": hp.encoder, "encoder_fingerprint": self.fingerprint, "train_fraction": float(hp.train_fraction),
            "seed": int(hp.seed), "train_csv_used": str(datasets["train"].csv_path),
            "num_train": len(datasets["train"]), "num_dev": len(datasets["valid"]), "num_test": len(datasets["test"]),
            "steps": summary["steps"], "steps_run": summary["steps"], "stop_reason": summary["stop_reason"],
            "patience": self.patience or None, "epochs": int(hp.epoch_counter.current),
            f"test_{metric}": test.get(metric), **{f"test_{k}": v for k, v in test.items() if k != metric},
            f"best_dev_{metric}": summary["best_score"], "best_dev_step": summary["best_step"],
            "best_dev_loss": summary["best_loss"], "test_predictions": PREDICTIONS_FILE,
            "last_dev": summary["last_dev"], "test_checkpoint": "best dev", "test_checkpoint_step": int(self.optimizer_step),
            "layer_weights": weights, "wall_time_s": summary["train_time_s"], "epoch_times_s": self.epoch_times,
            "nonfinite_skipped": self.nonfinite_skipped,
            "feature_cache": self.cache.stats() if self.cache is not None else None,
            "precision": self.precision,
            "settings": {**getattr(hp, "run_settings", {}), **{k: getattr(hp, k) for k in BUDGET_KEYS if hasattr(hp, k)},
                         "feature_cache": getattr(hp, "feature_cache", None)},
            **(extra or {}),
        }
        if if_main_process():
            atomic_write_json(self.output_folder / "result.json", result, default=float)
        if if_main_process() and getattr(hp, "plots", True):
            tag = encoder_tag(hp.encoder)
            plot_columns(self.output_folder / "curve.csv", self.output_folder / "curve.png", x="step",
                         ys=["train_loss", f"dev_{metric}"], title=f"{task.upper()} - {tag}")
            plot_layer_weights(weights, self.output_folder / "layer_weights.png",
                               title=f"{task.upper()} learned layer weights ({tag})")
        logger.info("%s: test %s = %.3f (best dev %s at step %s), %d steps, %.1f s training", task, metric,
                    test.get(metric, math.nan), summary["best_score"], summary["best_step"], summary["steps"],
                    summary["train_time_s"])
        return result
