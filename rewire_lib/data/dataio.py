"""Manifest -> SpeechBrain dataset with audio loading, and a length-bucketed batch sampler.

Length policy shared by the recipes (see `filter_by_duration`): utterances whose manifest duration
is shorter than the encoder's receptive field (`MIN_SAMPLES` = 400 samples = 25 ms at 16 kHz) or
longer than a recipe's `max_duration` are skipped before training, counted, logged and listed in a
report CSV. At load time a file that is still too short (its manifest duration was wrong) is an
`AudioError` naming the file; an all-silent file is accepted (its features are finite) with a
warning naming it.
"""
from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Iterable, Iterator, Optional

import speechbrain as sb
import torch
from speechbrain.dataio.batch import PaddedBatch
from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.utils.data_utils import batch_pad_right
from torch.utils.data import Sampler

from rewire_lib.data.audio import AudioError, load_audio
from rewire_lib.data.manifest import ManifestError, audio_rows, read_manifest

logger = logging.getLogger(__name__)

_silent_noted: set = set()
MIN_SAMPLES = 400  # receptive field of the wav2vec 2.0 / HuBERT / WavLM / data2vec CNN at 16 kHz (25 ms)


class ManifestFormatError(ManifestError):
    """A manifest cannot be used by a recipe; the message names the file, line and column."""


def audio_dataset(csv_path, data_root: str | None = None, output_keys: Iterable[str] = ("id", "sig"),
                  sample_rate: int = 16000, min_samples: int = MIN_SAMPLES) -> DynamicItemDataset:
    """A DynamicItemDataset over a manifest whose `sig` item is the 16 kHz mono waveform of `wav`.

    The manifest is read and checked by `rewire_lib.data.manifest.audio_rows` before anything else: `wav`
    is resolved (`$data_root` by `data_root`, relative paths against the manifest's folder) and every
    file must exist, so a bad manifest is one line naming it and the row, never a traceback from deep
    inside training. Audio errors at load time name the file and the manifest, and so does audio
    shorter than `min_samples`.
    """
    try:
        rows = audio_rows(csv_path, data_root=data_root)
    except ManifestError as err:
        raise ManifestFormatError(str(err)) from None
    data = {}
    for row in rows:
        row = dict(row)
        uid = row.pop("ID")
        row["duration"] = float(row["duration"])  # as SpeechBrain's from_csv does
        data[uid] = row
    dataset = DynamicItemDataset(data)

    @sb.utils.data_pipeline.takes("wav")
    @sb.utils.data_pipeline.provides("sig")
    def read(wav):
        try:
            sig = load_audio(wav, target_sr=sample_rate)
        except AudioError as err:
            raise AudioError(wav, f"{err.reason} (listed in {csv_path})") from None
        if min_samples and sig.numel() < min_samples:
            raise AudioError(wav, f"{sig.numel()} samples at {sample_rate} Hz is shorter than the encoder's receptive "
                                  f"field ({min_samples} samples); the manifest's duration for it is wrong or the file "
                                  f"changed: prepare the manifest again (preparers skip such files) ({csv_path})")
        if not bool(sig.abs().max() > 0) and wav not in _silent_noted:
            _silent_noted.add(wav)
            logger.warning("%s: all-silent audio (every sample is 0); kept, its features are those of silence", wav)
        return sig

    dataset.add_dynamic_item(read)
    dataset.set_output_keys(list(output_keys))
    return dataset


def filter_by_duration(dataset: DynamicItemDataset, report_csv, min_duration: float = MIN_SAMPLES / 16000,
                       max_duration: Optional[float] = None, what: str = "") -> DynamicItemDataset:
    """Drop utterances whose manifest duration is below `min_duration` or above `max_duration` (s;
    None: no limit). Skips are counted, logged and listed in `report_csv` (ID, wav, duration, reason;
    written only when something was skipped). Raises if nothing is left."""
    skipped, keep = [], set()
    with dataset.output_keys_as(["id", "duration", "wav"]):
        for item in dataset:
            dur = float(item["duration"])
            if dur < min_duration:
                reason = f"shorter than the encoder's receptive field ({dur:.4f} s < {min_duration:.4f} s)"
            elif max_duration is not None and dur > float(max_duration):
                reason = f"longer than max_duration ({dur:.2f} s > {float(max_duration):g} s)"
            else:
                keep.add(item["id"])
                continue
            skipped.append({"ID": item["id"], "wav": item["wav"], "duration": dur, "reason": reason})
    if not skipped:
        return dataset
    from rewire_lib.files.logs import atomic_write_csv

    report_csv = Path(report_csv)
    report_csv.parent.mkdir(parents=True, exist_ok=True)
    if int(os.environ.get("RANK", "0")) == 0:
        atomic_write_csv(report_csv, ["ID", "wav", "duration", "reason"], skipped)
    logger.warning("%s%d of %d utterances skipped by length (see %s); first: %s: %s", f"{what}: " if what else "",
                   len(skipped), len(dataset), report_csv, skipped[0]["ID"], skipped[0]["reason"])
    if not keep:
        raise ValueError(f"{what or 'manifest'}: every utterance was skipped by length (see {report_csv})")
    return dataset.filtered_sorted(key_test={"id": lambda i: i in keep})


def durations(dataset: DynamicItemDataset) -> list[float]:
    """Durations in data order, from the manifest (no audio is read)."""
    with dataset.output_keys_as(["duration"]):
        return [float(item["duration"]) for item in dataset]


class HeldItems(torch.utils.data.Dataset):
    """A dataset's items, computed once and replayed: for a pipeline without randomness or audio (a frozen,
    cached encoder's training split gives `id`, `wav` and its labels), SpeechBrain's per-item pipeline ran
    again on every visit, ~13 us an item, 0.4 ms a batch of 32 on a KS step of ~1.5 ms. Loaded with
    `collate_held`."""

    def __init__(self, dataset):
        self.items = [dataset[i] for i in range(len(dataset))]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        return self.items[index]


def stack_or_pad(tensors: list, mode: str = "constant", value=0):
    """SpeechBrain's `batch_pad_right`, with one `torch.stack` when every tensor has the same shape (a class
    label per utterance): the same tensors and relative lengths (all 1.0) without padding each tensor."""
    shape = tensors[0].shape
    if all(t.shape == shape for t in tensors):
        return torch.stack(tensors), torch.ones(len(tensors))
    return batch_pad_right(tensors, mode=mode, value=value)


def collate_held(items: list) -> PaddedBatch:
    """SpeechBrain's PaddedBatch of held items (`HeldItems`): strings and tensors only, so no default_convert
    (a recursive walk of every string, ~0.3 ms a batch), and labels of one shape stacked (`stack_or_pad`)."""
    return PaddedBatch(items, padding_func=stack_or_pad, apply_default_convert=False)


def length_bucketed_batches(lengths, batch_size: int, rng: random.Random, pool_batches: int = 50,
                            drop_last: bool = True, shuffle: bool = True) -> list[list[int]]:
    """Shuffle, cut into pools of `pool_batches` batches, sort each pool by length, batch, shuffle
    the batches: batches of similar lengths (little padding) in random order."""
    order = list(range(len(lengths)))
    if shuffle:
        rng.shuffle(order)
    pool = batch_size * pool_batches
    batches = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start:start + pool], key=lambda i: lengths[i])
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    if drop_last:
        batches = [b for b in batches if len(b) == batch_size]
    if shuffle:
        rng.shuffle(batches)
    return batches


class BucketBatchSampler(Sampler):
    """Fixed-size batches of similar lengths, in random order, reproducible per (seed, epoch).

    Written by hand because SpeechBrain's DynamicBatchSampler fixes the total duration of a batch,
    not its number of utterances, and the rewiring method needs exactly N pairs per optimiser step.
    Each epoch: shuffle, cut into pools of `pool_batches` batches, sort each pool by length, batch,
    shuffle the batches. DDP: SpeechBrain wraps it in its DistributedSamplerWrapper.
    """

    def __init__(self, lengths: list[float], batch_size: int, seed: int = 0, pool_batches: int = 50,
                 drop_last: bool = True, shuffle: bool = True, ddp_shard: bool = False):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.lengths = list(lengths)
        # ddp_shard: under DDP (W processes) every rank draws the same global batches of W*batch_size
        # and takes its slice, so W processes see exactly the batches one process with the global
        # batch would (SpeechBrain's DistributedSamplerWrapper would hand out whole batches instead).
        self.num_replicas, self.rank = 1, 0
        if ddp_shard and torch.distributed.is_available() and torch.distributed.is_initialized():
            self.num_replicas, self.rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
        self.shards_itself = ddp_shard
        self.local_batch_size = batch_size
        batch_size = batch_size * self.num_replicas
        self.batch_size = batch_size
        self.seed = seed
        self.pool_batches = pool_batches
        self.drop_last = drop_last
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        rng = random.Random(self.seed * 100003 + self.epoch)
        return length_bucketed_batches(self.lengths, self.batch_size, rng, self.pool_batches,
                                       drop_last=self.drop_last, shuffle=self.shuffle)

    def _local_batches(self) -> list[list[int]]:
        batches = self._batches()
        if self.num_replicas == 1:
            return batches
        # a global batch too small to give every rank an item is dropped (a rank without a batch would hang)
        return [b[self.rank::self.num_replicas] for b in batches if len(b) >= self.num_replicas]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._local_batches())

    def __len__(self) -> int:
        return len(self._local_batches())  # pools may each leave a short batch: count them exactly


# sha256 (first 16 hex digits) of `inspect.getsource(speechbrain.Brain._train_loader_specifics)` in SpeechBrain
# 1.1.2, the private method ShardedBatchesDDP overrides (tests/test_speechbrain_mirrors.py checks it)
MIRRORED_TRAIN_LOADER_SPECIFICS = "85c6175edb0c8c00"


class ShardedBatchesDDP:
    """Brain mixin: a `BucketBatchSampler(ddp_shard=True)` given as `batch_sampler` already gives each
    rank its slice of the global batch, so SpeechBrain must not wrap it in DistributedSamplerWrapper.
    SpeechBrain has no public hook for this, so the private `_train_loader_specifics` of SpeechBrain 1.1.x
    (MIRRORED_TRAIN_LOADER_SPECIFICS) is overridden for that one case and left to SpeechBrain otherwise."""

    def _train_loader_specifics(self, dataset, loader_kwargs):
        sampler = loader_kwargs.get("batch_sampler")
        if isinstance(sampler, BucketBatchSampler) and sampler.shards_itself:
            self.train_sampler = sampler
            return loader_kwargs
        return super()._train_loader_specifics(dataset, loader_kwargs)
