"""One SpeechBrain Brain for every downstream task.

Upstream: a `SpeechEncoder` (frozen by default, SUPERB) whose hidden states [L+1, B, T, D] go
through a learnable softmax-weighted layer sum (`WeightedLayerSum`) into the task's head. With the
encoder frozen, features can come from a `FeatureCache` (computed once per utterance, the audio is
not even read on a hit). Optionally the encoder is fine-tuned (all layers or the top ones) with its
own optimiser and learning rate, after an optional warm-up with it frozen.

Every `eval_every_steps` optimiser steps (and at the last step) the dev set is evaluated, a row
goes to `curve.csv`, and a checkpoint is saved (mid-epoch position included) that keeps the most
recent state (for resuming a killed run) and the best dev state (used for the test metric).
"""
from __future__ import annotations

import json
import logging
import math
import time
from typing import Optional

import speechbrain as sb
import torch
from speechbrain.utils.checkpoints import mark_as_loader, mark_as_saver, register_checkpoint_hooks
from speechbrain.utils.data_utils import batch_pad_right
from speechbrain.utils.distributed import if_main_process

from rewire_lib.audio import load_audio
from rewire_lib.dataio import ShardedBatchesDDP
from rewire_lib.downstream.feature_cache import FeatureCache
from rewire_lib.downstream.tasks import Task, is_better
from rewire_lib.logs import CSVLog
from rewire_lib.nonfinite import NonFiniteGuard

logger = logging.getLogger(__name__)


@register_checkpoint_hooks
class RunState:
    """What the curve needs to survive a restart: training wall time, best dev so far, and the
    running training loss since the last evaluation."""

    def __init__(self):
        self.train_time_s = 0.0
        self.best_score: Optional[float] = None
        self.best_step: Optional[int] = None
        self.last_eval_step = -1
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


def pad_features(feats: list[torch.Tensor]):
    """[L+1, T_i, D] tensors -> ([L+1, B, T, D] zero-padded, frame mask [B, T])."""
    lengths = torch.tensor([f.shape[1] for f in feats])
    frames = int(lengths.max())
    out = feats[0].new_zeros((feats[0].shape[0], len(feats), frames, feats[0].shape[2]))
    for i, f in enumerate(feats):
        out[:, i, : f.shape[1]] = f
    mask = torch.arange(frames)[None, :] < lengths[:, None]
    return out, mask


class DownstreamBrain(NonFiniteGuard, ShardedBatchesDDP, sb.Brain):
    """modules: `featurizer`, `head` and, when it is trained, `encoder`."""

    def __init__(self, *args, task: Task, encoder, cache: Optional[FeatureCache], curve: Optional[CSVLog],
                 run_state: RunState, dev_loader=None, eval_every_steps: int = 50, encoder_trainable: bool = False,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.task = task
        self.encoder = encoder.to(self.device)
        self.cache = cache
        self.curve = curve
        self.state = run_state
        self.dev_loader = dev_loader
        self.eval_every_steps = max(1, int(eval_every_steps))
        self.encoder_trainable = encoder_trainable
        self.warmup_steps = int(getattr(self.hparams, "encoder_warmup_steps", 0) or 0)
        self.specaugment = None
        if getattr(self.hparams, "specaugment", False):
            from speechbrain.augment.freq_domain import SpectrogramDrop
            self.specaugment = torch.nn.Sequential(
                SpectrogramDrop(drop_length_low=2, drop_length_high=8, drop_count_low=1, drop_count_high=2, dim=1),
                SpectrogramDrop(drop_length_low=4, drop_length_high=16, drop_count_low=1, drop_count_high=2, dim=2))
        self.last_dev = {}
        self.epoch_times = []  # seconds per epoch run in this process (dev evaluations included)
        self.test_metrics = {}
        self._epoch = 0
        self._epoch_limit = None
        if not encoder_trainable:
            self.encoder.eval()
            self.encoder.requires_grad_(False)

    # ------------------------------------------------------------------ upstream features
    def _encoder_frozen_now(self) -> bool:
        return not self.encoder_trainable or self.optimizer_step < self.warmup_steps

    def _run_encoder(self, wavs: torch.Tensor, wav_lens: torch.Tensor, grad: bool):
        with torch.set_grad_enabled(grad):
            out = self.encoder(wavs.to(self.device), wav_lens.to(self.device))
        hidden = out.hidden_states * out.frame_mask[None, :, :, None].to(out.hidden_states.dtype)
        return hidden, out.frame_mask

    def features(self, batch, stage):
        """[L+1, B, T, D] hidden states (zero on padded frames) and the frame mask [B, T]."""
        frozen = self._encoder_frozen_now()
        if self.cache is not None and frozen:
            keys = [self.cache.key(p) for p in batch.wav]
            feats = [self.cache.get(k) for k in keys]
            missing = [i for i, f in enumerate(feats) if f is None]
            if missing:
                wavs, wav_lens = batch_pad_right([load_audio(batch.wav[i]) for i in missing])
                hidden, mask = self._run_encoder(wavs, wav_lens, grad=False)
                for j, i in enumerate(missing):
                    self.cache.put(keys[i], hidden[:, j, : int(mask[j].sum())])
                    feats[i] = self.cache.get(keys[i])
                    self.cache.hits -= 1  # that read-back was part of the miss
            hidden, mask = pad_features(feats)
            return hidden.to(self.device), mask.to(self.device)
        wavs, wav_lens = batch.sig
        grad = stage == sb.Stage.TRAIN and not frozen
        return self._run_encoder(wavs, wav_lens, grad=grad)

    # ------------------------------------------------------------------ forward / loss
    def compute_forward(self, batch, stage):
        hidden, mask = self.features(batch, stage)
        x = self.modules.featurizer(hidden)
        if self.specaugment is not None and stage == sb.Stage.TRAIN:
            x = self.specaugment(x)
        x = x * mask[..., None].to(x.dtype)
        return self.modules.head(x, mask), mask

    def compute_objectives(self, predictions, batch, stage):
        out, mask = predictions
        loss = self.task.loss(out, batch, mask)
        if stage != sb.Stage.TRAIN:
            self.task.accumulate(self.stats, out, batch, mask, beam=stage == sb.Stage.TEST)
        return loss

    # ------------------------------------------------------------------ optimisers
    def init_optimizers(self):
        hp = self.hparams
        head_params = [p for n in ("featurizer", "head") for p in self.modules[n].parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(head_params, lr=hp.lr)
        self.optimizers_dict = {"head": self.optimizer}
        self.checkpointer.add_recoverable("optimizer", self.optimizer)
        if self.encoder_trainable:
            enc_params = [p for p in self.modules["encoder"].parameters() if p.requires_grad]
            self.encoder_optimizer = torch.optim.Adam(enc_params, lr=hp.encoder_lr)
            self.optimizers_dict["encoder"] = self.encoder_optimizer
            self.checkpointer.add_recoverable("encoder_optimizer", self.encoder_optimizer)

    def freeze_optimizers(self, optimizers):
        if self.encoder_trainable and self.optimizer_step < self.warmup_steps:
            return {k: v for k, v in optimizers.items() if k != "encoder"}
        return optimizers

    # ------------------------------------------------------------------ training hooks
    def on_fit_start(self):
        super().on_fit_start()  # optimisers, then the latest checkpoint (mid-epoch position included)
        if self.curve is not None and if_main_process():
            self.curve.truncate_after("step", self.optimizer_step)
        if self.optimizer_step:
            logger.info("Resumed at optimiser step %d", self.optimizer_step)
        self._t_last = time.time()

    def on_evaluate_start(self, max_key=None, min_key=None):
        super().on_evaluate_start(max_key=max_key, min_key=min_key)  # loads the best-dev checkpoint
        self.step = 0  # the recovered in-epoch position must not skew the test-loss average

    def on_stage_start(self, stage, epoch=None):
        if stage == sb.Stage.TRAIN:
            self._epoch = epoch
            self._epoch_t0 = time.time()
            if not self.encoder_trainable:
                self.encoder.eval()
        else:
            self.stats = self.task.new_stats()

    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        self.state.loss_sum += float(loss.detach())
        self.state.loss_count += 1
        if self.optimizer_step % self.eval_every_steps == 0 or self._optimizer_step_limit_exceeded:
            self.evaluate_dev_and_checkpoint()

    def on_stage_end(self, stage, stage_loss, epoch=None):
        if stage == sb.Stage.TRAIN:
            last_epoch = self._epoch_limit is not None and epoch >= self._epoch_limit
            if (last_epoch or self._optimizer_step_limit_exceeded) and self.state.last_eval_step != self.optimizer_step:
                self.evaluate_dev_and_checkpoint()
            seconds = time.time() - self._epoch_t0
            self.epoch_times.append(round(seconds, 3))
            logger.info("epoch %d took %.2f s (dev evaluations included)%s", epoch, seconds,
                        f"; feature cache {self.cache.stats()}" if self.cache is not None else "")
        elif stage == sb.Stage.TEST:
            self.test_metrics = self.task.summarize(self.stats)
            self.test_metrics["loss"] = float(stage_loss)

    def fit(self, epoch_counter, *args, **kwargs):
        self._epoch_limit = getattr(epoch_counter, "limit", None)
        return super().fit(epoch_counter, *args, **kwargs)

    # ------------------------------------------------------------------ dev evaluation
    @torch.no_grad()
    def run_eval(self, loader, stage=sb.Stage.VALID) -> dict:
        was_training = self.modules.training
        self.modules.eval()
        self.stats = self.task.new_stats()
        total, n = 0.0, 0
        for batch in loader:
            loss = self.evaluate_batch(batch, stage)
            total += float(loss) * len(batch.id)
            n += len(batch.id)
        result = self.task.summarize(self.stats)
        result["loss"] = total / n if n else math.nan
        if was_training:
            self.modules.train()
            if not self.encoder_trainable:
                self.encoder.eval()
        return result

    def evaluate_dev_and_checkpoint(self):
        now = time.time()
        self.state.train_time_s += now - self._t_last
        dev = self.run_eval(self.dev_loader) if self.dev_loader is not None else {self.task.metric: math.nan}
        eval_time = time.time() - now
        step, metric = self.optimizer_step, self.task.metric
        score = dev[metric]
        train_loss = self.state.loss_sum / self.state.loss_count if self.state.loss_count else math.nan
        if is_better(score, self.state.best_score, self.task.higher_is_better):
            self.state.best_score, self.state.best_step = score, step
        self.state.last_eval_step = step
        self.state.loss_sum, self.state.loss_count = 0.0, 0
        self.last_dev = dev
        if self.curve is not None and if_main_process():
            row = dict(step=step, epoch=self._epoch, train_loss=f"{train_loss:.6f}",
                       wall_time_s=f"{self.state.train_time_s:.3f}", eval_time_s=f"{eval_time:.3f}")
            row.update({f"dev_{k}": f"{v:.6f}" for k, v in dev.items() if f"dev_{k}" in self.curve.fields})
            self.curve.append(**row)
        logger.info("step %d epoch %d: train_loss %.4f dev %s %.3f (best %.3f at %s)", step, self._epoch, train_loss,
                    metric, score, self.state.best_score if self.state.best_score is not None else math.nan,
                    self.state.best_step)
        if self.checkpointer is not None:
            worst = -math.inf if self.task.higher_is_better else math.inf
            value = float(score) if not math.isnan(score) else worst
            # ties go to the earlier step, as in state.best_step (a 1e-9 nudge per step)
            nudge = -1e-9 * step if self.task.higher_is_better else 1e-9 * step
            meta = {"dev_score": value, "dev_key": value + nudge, "step": step, "epoch": self._epoch}
            keys = {"max_keys": ["dev_key"]} if self.task.higher_is_better else {"min_keys": ["dev_key"]}
            self.checkpointer.save_and_keep_only(meta=meta, end_of_epoch=False, num_to_keep=1, **keys,
                                                 verbosity=logging.DEBUG)
        self._t_last = time.time()
