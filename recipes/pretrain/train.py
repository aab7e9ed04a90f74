#!/usr/bin/env python3
"""HuBERT-style self-supervised pre-training of a small speech encoder on the project's offline audio.

    python recipes/pretrain/train.py recipes/pretrain/hparams/tiny_hubert.yaml [--device cuda] [--key value ...]

Stages (each skipped when its file already exists, so a killed run resumes where it stopped):
1. manifest: union of the training manifests (`train_manifests`; dev/test files are refused) -> pretrain.csv
2. pack: every file read once into one int16 tensor file (training then needs neither soundfile nor the audio)
3. targets: k-means (`num_clusters`) over 39-dim MFCC frames at the encoder's 20 ms frame rate (iteration 1),
   or over a hidden layer of a given encoder (`target_encoder`, `target_layer`: iteration 2)
4. train: masked prediction of the targets (SpeechBrain Brain; checkpoints every `steps_per_epoch` steps)
5. export: `save_pretrained` of the encoder (config, safetensors weights, feature-extractor config) to
   `export_folder`, plus `summary.json` (steps, final loss, wall time) in `output_folder`.
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch


import speechbrain as sb
from speechbrain.utils.checkpoints import Checkpointer

from rewire_lib.files.atomic import atomic_path
from rewire_lib.files.logs import CSVLog, plot_columns
from rewire_lib.pretrain.corpus import (PretrainDataset, StepsBatchSampler, build_pretrain_manifest,
                                        collate, load_packed, pack_corpus)
from rewire_lib.pretrain.model import HubertPretrainer, tiny_hubert_config
from rewire_lib.pretrain.targets import EncoderLayerFrames, MFCCFrames, cluster_targets
from rewire_lib.training.recipe import load_recipe

logger = logging.getLogger("pretrain")

SCHEMA = {
    "seed": int, "output_folder": str, "save_folder": str, "train_manifests": list, "heldout_manifests": list,
    "pretrain_manifest": str, "pack_format": str, "trim_db": float,
    "packed_corpus": str, "targets_file": str, "target_encoder": (str, type(None)), "target_layer": int,
    "num_clusters": int, "kmeans_iters": int, "kmeans_max_frames": int, "model": dict, "proj_dim": int,
    "logit_temp": float, "mask_prob": float, "mask_length": int, "unmasked_weight": float, "batch_size": int,
    "max_frames": int, "number_of_steps": int, "steps_per_epoch": int, "warmup_steps": int, "lr": float,
    "weight_decay": float, "max_train_minutes": float, "num_workers": int, "log_every": int,
    "export_folder": (str, type(None)),
}
LOG_FIELDS = ["step", "epoch", "loss", "loss_masked", "acc_masked", "lr", "elapsed_s"]


class Progress(torch.nn.Module):
    """Optimiser steps done and training seconds spent, saved with every checkpoint."""

    def __init__(self):
        super().__init__()
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.register_buffer("seconds", torch.zeros((), dtype=torch.float64))


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up to 1, then cosine decay to 0 at `total` steps."""
    if step < warmup:
        return (step + 1) / max(warmup, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(total - warmup, 1))))


class PretrainBrain(sb.Brain):
    def on_fit_start(self):
        self.progress = self.hparams.progress
        super().on_fit_start()
        self.progress.to("cpu")  # buffers stay on the CPU (the Brain moved every module to the device)
        self.mask_generator = torch.Generator().manual_seed(self.hparams.seed + int(self.progress.step))
        self.log = CSVLog(Path(self.hparams.output_folder) / "train_log.csv", LOG_FIELDS)
        self.log.truncate_after("step", int(self.progress.step))
        self.window = []
        self.t_last = time.time()

    def init_optimizers(self):
        super().init_optimizers()
        hp = self.hparams
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, hp.warmup_steps, hp.number_of_steps))
        if self.checkpointer is not None:
            self.checkpointer.add_recoverable("scheduler", self.scheduler)

    def compute_forward(self, batch, stage):
        batch = batch.to(self.device)
        return self.modules.model(batch.wavs, batch.lengths, batch.labels, generator=self.mask_generator)

    def compute_objectives(self, predictions, batch, stage):
        self.last = predictions
        return predictions.loss

    def on_stage_start(self, stage, epoch=None):
        if stage == sb.Stage.TRAIN:
            self.hparams.sampler.set_epoch(epoch)
            self.hparams.dataset.set_epoch(epoch)

    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        if not should_step:
            return
        self.scheduler.step()
        now = time.time()
        self.progress.step += 1
        self.progress.seconds += now - self.t_last
        self.t_last = now
        out = self.last
        self.window.append((float(loss.detach()), float(out.loss_masked), float(out.acc_masked)))
        step = int(self.progress.step)
        if step % self.hparams.log_every == 0:
            n = len(self.window)
            self.log.append(step=step, epoch=self.hparams.epoch_counter.current,
                            loss=f"{sum(w[0] for w in self.window) / n:.5f}",
                            loss_masked=f"{sum(w[1] for w in self.window) / n:.5f}",
                            acc_masked=f"{sum(w[2] for w in self.window) / n:.5f}",
                            lr=f"{self.optimizer.param_groups[0]['lr']:.3e}",
                            elapsed_s=f"{float(self.progress.seconds):.1f}")
            self.window = []

    def on_stage_end(self, stage, stage_loss, epoch=None):
        if stage != sb.Stage.TRAIN:
            return
        step, minutes = int(self.progress.step), float(self.progress.seconds) / 60
        logger.info("epoch %d: step %d, loss %.4f, %.1f min", epoch, step, stage_loss, minutes)
        self.checkpointer.save_and_keep_only(meta={"step": step, "loss": stage_loss}, num_to_keep=1)
        try:
            plot_columns(self.log.path, Path(self.hparams.output_folder) / "train_log.png", "step",
                         ["loss_masked", "acc_masked", "lr"], title="HuBERT-style pre-training", smooth=10)
        except (OSError, ValueError) as err:  # a figure is never worth stopping the run
            logger.warning("could not draw the loss curve: %s", err)
        limit = self.hparams.max_train_minutes
        if (limit > 0 and minutes >= limit) or step >= self.hparams.number_of_steps:
            self.hparams.epoch_counter.limit = epoch  # stops the epoch loop after this checkpoint


# ------------------------------------------------------------------------------------------------ stages
def prepare_targets(hp, ids, waves, device):
    path = Path(hp["targets_file"])
    if path.is_file():
        targets = torch.load(path, map_location="cpu", weights_only=True)
        if list(targets["ids"]) != list(ids):
            raise RuntimeError(f"{path} was made for another packed corpus; delete it to recompute the targets")
        return targets
    if hp["target_encoder"]:
        from rewire_lib.models.encoder import SpeechEncoder

        featurize = EncoderLayerFrames(SpeechEncoder.from_pretrained(hp["target_encoder"]), hp["target_layer"], device)
        kind = f"{hp['target_encoder']} layer {hp['target_layer']}"
    else:
        featurize, kind = MFCCFrames(), "mfcc39"
    result = cluster_targets(waves, featurize, hp["num_clusters"], iters=hp["kmeans_iters"], seed=hp["seed"],
                             max_frames=hp["kmeans_max_frames"])
    targets = {"ids": list(ids), "labels": [lab.to(torch.int16) for lab in result["labels"]], "centroids": result["centroids"],
               "mean": result["mean"], "std": result["std"], "features": kind, "inertia": result["inertia"]}
    with atomic_path(path) as tmp:
        torch.save(targets, tmp)
    return targets


def export(encoder, folder: Path) -> None:
    """save_pretrained into a temp folder, then move each file in (other files, e.g. README.md, stay)."""
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".export.") as tmp:
        encoder.save_pretrained(tmp)
        for name in os.listdir(tmp):
            os.replace(Path(tmp) / name, folder / name)
    logger.info("encoder written to %s", folder)


def read_log(path):
    from rewire_lib.files.logs import read_csv

    return read_csv(path)


def main(argv=None):
    hp, run_opts, hparams_file, _ = load_recipe(argv, SCHEMA)
    out = Path(hp["output_folder"])
    torch.manual_seed(hp["seed"])
    device = run_opts.get("device", "cpu")
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    if not Path(hp["packed_corpus"]).is_file():
        if not Path(hp["pretrain_manifest"]).is_file():
            present = [p for p in hp["train_manifests"] if Path(p).is_file()]
            for missing in sorted(set(map(str, hp["train_manifests"])) - set(map(str, present))):
                logger.warning("training manifest not found, skipped: %s", missing)
            if not present:
                raise SystemExit(f"{hparams_file}: none of train_manifests exists: {hp['train_manifests']}")
            heldout = [p for p in hp["heldout_manifests"] if Path(p).is_file()]
            build_pretrain_manifest(present, hp["pretrain_manifest"], hp.get("data_root"), heldout_csvs=heldout)
        pack_corpus(hp["pretrain_manifest"], hp["packed_corpus"], fmt=hp["pack_format"], trim_db=hp["trim_db"])
    ids, waves = load_packed(hp["packed_corpus"])
    targets = prepare_targets(hp, ids, waves, device)
    hours = sum(w.numel() for w in waves) / 16000 / 3600
    logger.info("pre-training data: %d utterances, %.2f h, targets %s (K=%d)", len(waves), hours,
                targets["features"], hp["num_clusters"])

    dataset = PretrainDataset(waves, targets["labels"], max_frames=hp["max_frames"], seed=hp["seed"])
    sampler = StepsBatchSampler([dataset.frames(i) for i in range(len(dataset))], hp["batch_size"],
                                hp["steps_per_epoch"], seed=hp["seed"])
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate,
                                         num_workers=hp["num_workers"], pin_memory=device.startswith("cuda"))

    torch.manual_seed(hp["seed"])
    model = HubertPretrainer(tiny_hubert_config(**hp["model"]), hp["num_clusters"], proj_dim=hp["proj_dim"],
                             logit_temp=hp["logit_temp"], mask_prob=hp["mask_prob"], mask_length=hp["mask_length"],
                             unmasked_weight=hp["unmasked_weight"])
    progress = Progress()
    epochs = math.ceil(hp["number_of_steps"] / hp["steps_per_epoch"])
    epoch_counter = sb.utils.epoch_loop.EpochCounter(epochs)
    checkpointer = Checkpointer(hp["save_folder"], recoverables={
        "model": model, "progress": progress, "epoch_counter": epoch_counter})

    def opt_class(params):
        return torch.optim.AdamW(params, lr=hp["lr"], betas=(0.9, 0.98), eps=1e-6, weight_decay=hp["weight_decay"])

    brain = PretrainBrain(
        modules={"model": model}, opt_class=opt_class, run_opts=run_opts, checkpointer=checkpointer,
        hparams={**hp, "progress": progress, "epoch_counter": epoch_counter, "sampler": sampler, "dataset": dataset},
    )
    brain.fit(epoch_counter, loader)

    rows = []
    log_path = out / "train_log.csv"
    if log_path.is_file():
        from rewire_lib.files.logs import read_csv
        rows = read_csv(log_path)
    tail = rows[-10:]
    summary = {
        "steps": int(progress.step), "train_minutes": round(float(progress.seconds) / 60, 2),
        "final_loss_masked": round(sum(float(r["loss_masked"]) for r in tail) / len(tail), 4) if tail else None,
        "final_acc_masked": round(sum(float(r["acc_masked"]) for r in tail) / len(tail), 4) if tail else None,
        "final_window_steps": len(tail) * hp["log_every"], "device": torch.cuda.get_device_name(0)
        if device.startswith("cuda") else "cpu", "utterances": len(waves), "hours": round(hours, 3),
        "targets": targets["features"], "num_clusters": hp["num_clusters"],
        "encoder_params": sum(p.numel() for p in model.encoder.parameters()),
        "command": " ".join(["python", "recipes/pretrain/train.py"] + list(sys.argv[1:] if argv is None else argv)),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    logger.info("summary: %s", summary)
    if hp["export_folder"]:
        export(model.encoder.cpu(), Path(hp["export_folder"]))
    return summary


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    main()
