"""The rewiring stage: a SpeechBrain Brain that trains an encoder with NT-Xent on positive pairs.

One padded forward pass encodes the 2N views of a batch (N anchors and their N positives) at once:
one graph per step keeps it DDP-safe and uses the CPU/GPU better than two half-size passes.
"""
from __future__ import annotations

import json
import logging
import time
from collections import Counter
from pathlib import Path

import speechbrain as sb
import torch
from speechbrain.dataio.batch import PaddedBatch
from speechbrain.utils.distributed import if_main_process, run_on_main

from rewire_lib.data.dataio import MIN_SAMPLES, BucketBatchSampler, ShardedBatchesDDP, audio_dataset, durations
from rewire_lib.files.logs import CSVLog, atomic_write_csv, plot_columns, plot_layer_weights
from rewire_lib.models.featurizer import masked_mean
from rewire_lib.rewiring.losses import nt_xent
from rewire_lib.training.nonfinite import NonFiniteGuard
from rewire_lib.training.oom import name_the_batch_on_oom
from rewire_lib.training.recipe import unwrap_ddp
from rewire_lib.views.pairs import PairBuilder, pair_pipeline

logger = logging.getLogger(__name__)

LOSS_FIELDS = ["step", "epoch", "loss", "lr", "pairs", "wall_time_s"]


def world_size() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


def gather_across_ranks(embeddings: torch.Tensor) -> torch.Tensor:
    """Under DDP, every rank's embeddings, with gradients (negatives come from the global batch).

    Each rank then computes the same loss over all W*N pairs; all_gather's backward sums the
    gradients of each rank's slice and DDP averages over ranks, so the update equals that of one
    process with the global batch. Without DDP this is the identity.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return embeddings
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(embeddings), dim=0)


def pad_views(view_a: list[torch.Tensor], view_b: list[torch.Tensor]):
    """Pad the 2N views of a batch into one [2N, S] tensor with SpeechBrain relative lengths."""
    views = list(view_a) + list(view_b)
    longest = max(v.shape[0] for v in views)
    wavs = torch.zeros(len(views), longest)
    for i, v in enumerate(views):
        wavs[i, : v.shape[0]] = v
    lens = torch.tensor([v.shape[0] / longest for v in views])
    return wavs, lens


def collate_pairs(items: list[dict]) -> PaddedBatch:
    """PaddedBatch of ids plus the raw views (padded jointly later, in `pad_views`)."""
    batch = PaddedBatch([{"id": it["id"]} for it in items])
    batch.view_a = [it["view_a"] for it in items]
    batch.view_b = [it["view_b"] for it in items]
    return batch


class RewireBrain(NonFiniteGuard, ShardedBatchesDDP, sb.Brain):
    """Contrastive rewiring of `modules.encoder` (a SpeechEncoder) through `modules.featurizer`.

    hparams used: temperature, dropout (encoder in train mode), pair_builder, loss_csv,
    log_every_steps, sampler (optional BucketBatchSampler, its epoch is set here),
    max_nonfinite_in_a_row (NonFiniteGuard: non-finite steps are skipped and counted).

    Devices and precision are SpeechBrain's run options (`--device cuda:0`, `--precision bf16|fp16`):
    the encoder's forward runs under the Brain's autocast context, the loss in float32; with fp16 on a
    GPU, SpeechBrain's GradScaler skips steps whose scaled gradients overflow (the loss check of
    NonFiniteGuard still skips a non-finite loss). A batch that runs out of memory stops the run with
    `BatchDoesNotFit`, naming its utterances and the settings that reduce memory.
    """

    def on_fit_start(self):
        super().on_fit_start()  # recovers the latest checkpoint, if any
        self.wall_start = time.time()
        if if_main_process():
            self.loss_log = CSVLog(self.hparams.loss_csv, LOSS_FIELDS)
            # a resumed run rewrites the steps after its checkpoint: drop their stale rows
            self.loss_log.truncate_after("step", self.optimizer_step)

    def on_stage_start(self, stage, epoch=None):
        if stage == sb.Stage.TRAIN:
            self.hparams.pair_builder.set_epoch(epoch)
            self.stats_at_epoch_start = Counter(self.hparams.pair_builder.stats)
            sampler = getattr(self.hparams, "sampler", None)
            if sampler is not None:
                sampler.set_epoch(epoch)

    def on_fit_batch_start(self, batch, should_step):
        if not self.hparams.dropout:  # dropout off: the encoder runs in eval mode while training
            self.modules.encoder.eval()

    def fit_batch(self, batch):
        seconds = [float(v.shape[0]) / 16000 for v in list(batch.view_a) + list(batch.view_b)]
        ids = [f"{utt}/{side}" for side in ("a", "b") for utt in batch.id]
        with name_the_batch_on_oom(ids, seconds, what="rewiring batch (both views)"):
            return super().fit_batch(batch)

    def compute_forward(self, batch, stage):
        wavs, lens = pad_views(batch.view_a, batch.view_b)
        wavs, lens = wavs.to(self.device), lens.to(self.device)
        out = self.modules.encoder(wavs, lens)
        pooled = masked_mean(self.modules.featurizer(out.hidden_states), out.frame_mask)
        return pooled

    def compute_objectives(self, predictions, batch, stage):
        n = len(batch.view_a)
        predictions = predictions.float()  # the loss in float32 even under bf16/fp16 autocast
        view_a, view_b = gather_across_ranks(predictions[:n]), gather_across_ranks(predictions[n:])
        with torch.autocast(device_type=self.device_type, enabled=False):
            return nt_xent(view_a, view_b, self.hparams.temperature)

    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        if not should_step or not if_main_process():
            return
        if self.optimizer_step % self.hparams.log_every_steps == 0:
            self.loss_log.append(
                step=self.optimizer_step, epoch=self.hparams.epoch_counter.current, loss=f"{loss.item():.6f}",
                lr=self.optimizer.param_groups[0]["lr"], pairs=len(batch.view_a) * world_size(),
                wall_time_s=f"{time.time() - self.wall_start:.2f}",
            )

    def on_stage_end(self, stage, stage_loss, epoch=None):
        if stage != sb.Stage.TRAIN:
            return
        # counts of this epoch (in this process; with num_workers > 0 the workers keep their own)
        stats = Counter(self.hparams.pair_builder.stats) - self.stats_at_epoch_start
        self.hparams.train_logger.log_stats(stats_meta={"epoch": epoch}, train_stats={"loss": stage_loss, **stats})
        if self.checkpointer is not None:
            self.checkpointer.save_and_keep_only(meta={"epoch": epoch, "loss": stage_loss}, num_to_keep=1)

    def layer_weights(self) -> list[float]:
        return unwrap_ddp(self.modules.featurizer).weights().detach().cpu().tolist()

    def save_encoder(self, folder) -> None:
        """Write the rewired encoder (save_pretrained) plus the learned layer weights, crash-safe:
        into a temporary sibling folder first, then swapped in, so `folder` is never half-written."""
        import os
        import shutil

        folder = Path(folder)
        tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        unwrap_ddp(self.modules.encoder).save_pretrained(tmp)
        (tmp / "rewire_layer_weights.json").write_text(json.dumps(self.layer_weights()))
        old = folder.with_name(f".{folder.name}.{os.getpid()}.old")
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)


def build_rewire_dataset(train_csv, builder: PairBuilder, output_folder, data_root=None, sorting="bucket",
                         max_duration=None):
    """Dataset of pairs from a manifest, minus what the length rules or missing TTS exclude.

    Exclusions (also: shorter than the encoder's receptive field, longer than `max_duration` s)
    are counted, logged and listed in `<output_folder>/skipped.csv` (never silent).
    A manifest without `wrd` only supports the twin view.
    """
    has_text = _has_column(train_csv, "wrd")
    if not has_text and not builder.has_positive(None):
        raise ValueError(f"{train_csv}: the neutral view needs transcripts, but the manifest has no 'wrd' column")
    dataset = audio_dataset(train_csv, data_root=data_root)
    skipped = []
    kept_ids = []
    with dataset.output_keys_as(["id", "duration"] + (["wrd"] if has_text else [])):
        for item in dataset:
            duration = float(item["duration"])
            if duration < MIN_SAMPLES / 16000:
                skipped.append({"ID": item["id"], "reason": f"shorter than the encoder's receptive field "
                                                            f"({duration:.4f} s < {MIN_SAMPLES} samples)"})
            elif max_duration is not None and duration > float(max_duration):
                skipped.append({"ID": item["id"], "reason": f"longer than max_duration ({duration:.2f} s > "
                                                            f"{float(max_duration):g} s)"})
            elif not builder.keep_duration(duration):
                skipped.append({"ID": item["id"], "reason": f"longer than {builder.rules.max_samples} samples"})
            elif not builder.has_positive(item.get("wrd")):
                skipped.append({"ID": item["id"], "reason": "no TTS rendering of its transcript"})
            else:
                kept_ids.append(item["id"])
    if skipped:
        logger.warning("Rewiring: %d of %d utterances skipped (see %s/skipped.csv)",
                       len(skipped), len(dataset), output_folder)
        run_on_main(atomic_write_csv, args=[Path(output_folder) / "skipped.csv", ["ID", "reason"], skipped])
    if not kept_ids:
        raise ValueError(f"{train_csv}: no utterance is left to rewire on after the skips above")
    keep = set(kept_ids)
    dataset = dataset.filtered_sorted(key_test={"id": lambda i: i in keep},
                                      sort_key="duration" if sorting == "ascending" else None)
    if has_text:
        dataset.add_dynamic_item(pair_pipeline(builder))
    else:
        from speechbrain.utils.data_pipeline import provides, takes

        @takes("sig", "id")
        @provides("view_a", "view_b")
        def no_text_pairs(sig, utt_id):
            pair = builder(sig, None, utt_id)
            yield pair[0]
            yield pair[1]

        dataset.add_dynamic_item(no_text_pairs)
    dataset.set_output_keys(["id", "view_a", "view_b"])
    return dataset


def tts_cache_of(builder: PairBuilder):
    """The TTS cache a builder's neutral (or mixed) view draws from, or None for twin pairs."""
    view = builder.view
    view = getattr(view, "neutral", view)
    return getattr(view, "tts_cache", None)


def presynthesise(builder: PairBuilder, train_csv, num_workers: int = 2) -> None:
    """Fill the TTS cache once before training (progress bar, parallel): no step waits for a synthesis."""
    cache = tts_cache_of(builder)
    if cache is None:
        return
    from rewire_lib.views.tts import read_manifest_texts

    stats = cache.synthesize_missing(read_manifest_texts(train_csv), num_workers=num_workers)
    logger.info("TTS cache for %s: %s", train_csv, stats)


def _has_column(csv_path, column: str) -> bool:
    with open(csv_path) as f:
        return column in f.readline().strip().split(",")


def make_train_loader_kwargs(dataset, hparams) -> dict:
    """Batches of `batch_size` pairs: random order, ascending length, or length buckets."""
    sorting = hparams["sorting"]
    # The loader's own generator: creating its iterator must not draw from the global RNG, or a run
    # resumed mid-epoch would see other dropout masks than an uninterrupted one.
    kwargs = {"collate_fn": collate_pairs, "num_workers": hparams.get("num_workers", 0),
              "generator": torch.Generator().manual_seed(hparams["seed"])}
    if sorting == "bucket":
        sampler = BucketBatchSampler(durations(dataset), hparams["batch_size"], seed=hparams["seed"], ddp_shard=True)
        hparams["sampler"] = sampler
        kwargs["batch_sampler"] = sampler
    elif sorting == "random":
        kwargs.update(batch_size=hparams["batch_size"], shuffle=True, drop_last=True)
    elif sorting == "ascending":
        kwargs.update(batch_size=hparams["batch_size"], shuffle=False, drop_last=True)
    else:
        raise ValueError(f"sorting must be 'bucket', 'random' or 'ascending', got {sorting!r}")
    return kwargs


def last_epoch_loss(loss_csv) -> float | None:
    """Mean loss of the last epoch in loss.csv (None if the file has no rows)."""
    import csv

    path = Path(loss_csv)
    if not path.is_file():
        return None
    with open(path) as f:
        rows = [(r["epoch"], float(r["loss"])) for r in csv.DictReader(f) if r.get("loss")]
    if not rows:
        return None
    last = [loss for epoch, loss in rows if epoch == rows[-1][0]]
    return sum(last) / len(last)


def write_card(brain: RewireBrain, hparams, folder: Path, train_set=None, argv=None) -> Path:
    """The hub model card of the rewired encoder (see rewire_lib.rewiring.model_card)."""
    from rewire_lib.files.paths import REPO_ROOT
    from rewire_lib.rewiring.model_card import portable_command, portable_path, write_model_card

    out = Path(hparams["output_folder"])
    seconds = durations(train_set) if train_set is not None else []
    # the run's result-changing settings (rewire_lib.training.run_stamp), the plain ones: objects are the recipe's YAML
    settings = {k: v for k, v in hparams.get("run_settings", {}).items() if "." not in k}
    settings["precision"] = getattr(brain, "precision", "fp32")
    settings["world_size"] = world_size()
    encoder = unwrap_ddp(brain.modules.encoder)
    return write_model_card(
        folder, base_encoder=portable_path(str(hparams["encoder"]), REPO_ROOT, out), view=hparams["view"],
        utterances=len(seconds), hours=sum(seconds) / 3600, steps=brain.optimizer_step,
        epochs=brain.hparams.epoch_counter.current, settings=settings, final_loss=last_epoch_loss(hparams["loss_csv"]),
        command=portable_command(argv or [], REPO_ROOT, out), model_type=encoder.model.config.model_type,
        datasets=hparams.get("hub_datasets"),
    )


def finish(brain: RewireBrain, hparams, train_set=None, argv=None) -> Path:
    """Save the encoder with its model card and draw the loss curve (main process only)."""
    folder = Path(hparams["output_folder"]) / "encoder"
    if if_main_process():
        brain.save_encoder(folder)
        write_card(brain, hparams, folder, train_set=train_set, argv=argv)
        plot_columns(hparams["loss_csv"], Path(hparams["output_folder"]) / "loss.png", "step", ["loss"],
                     title=f"Rewiring ({hparams['view']}) NT-Xent loss", smooth=max(1, hparams.get("plot_smooth", 10)))
        plot_layer_weights(brain.layer_weights(),
                           Path(hparams["output_folder"]) / "layer_weights.png",
                           title="Rewiring: learned layer weights of the pooled embedding")
    return folder


def epochs_for_view(view: str, table: str) -> int:
    """Epoch count of a view from a "twin:1 neutral:7 mixed:3" table (the paper preset).

    A string, not a YAML mapping, because hyperpyyaml cannot override a scalar key with a mapping.
    """
    epochs = {k: int(v) for k, v in (item.split(":") for item in table.split())}
    if view not in epochs:
        raise ValueError(f"view '{view}' has no epoch count in '{table}'")
    return epochs[view]
