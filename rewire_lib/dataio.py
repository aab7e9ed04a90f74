"""Manifest -> SpeechBrain dataset with audio loading, and a length-bucketed batch sampler."""
from __future__ import annotations

import logging
import random
from typing import Iterable, Iterator

import speechbrain as sb
from speechbrain.dataio.dataset import DynamicItemDataset
from torch.utils.data import Sampler

from rewire_lib.audio import load_audio

logger = logging.getLogger(__name__)


def audio_dataset(csv_path, data_root: str | None = None, output_keys: Iterable[str] = ("id", "sig"),
                  sample_rate: int = 16000) -> DynamicItemDataset:
    """A DynamicItemDataset over a manifest whose `sig` item is the 16 kHz mono waveform of `wav`.

    `$data_root` in the `wav` column is replaced by `data_root`. Audio errors name the file.
    """
    replacements = {"data_root": str(data_root)} if data_root else {}
    dataset = DynamicItemDataset.from_csv(str(csv_path), replacements=replacements)

    @sb.utils.data_pipeline.takes("wav")
    @sb.utils.data_pipeline.provides("sig")
    def read(wav):
        return load_audio(wav, target_sr=sample_rate)

    dataset.add_dynamic_item(read)
    dataset.set_output_keys(list(output_keys))
    return dataset


def durations(dataset: DynamicItemDataset) -> list[float]:
    """Durations in data order, from the manifest (no audio is read)."""
    with dataset.output_keys_as(["duration"]):
        return [float(item["duration"]) for item in dataset]


class BucketBatchSampler(Sampler):
    """Fixed-size batches of similar lengths, in random order, reproducible per (seed, epoch).

    Written by hand because SpeechBrain's DynamicBatchSampler fixes the total duration of a batch,
    not its number of utterances, and the rewiring method needs exactly N pairs per optimiser step.
    Each epoch: shuffle, cut into pools of `pool_batches` batches, sort each pool by length, batch,
    shuffle the batches. DDP: SpeechBrain wraps it in its DistributedSamplerWrapper.
    """

    def __init__(self, lengths: list[float], batch_size: int, seed: int = 0, pool_batches: int = 50,
                 drop_last: bool = True, shuffle: bool = True):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.pool_batches = pool_batches
        self.drop_last = drop_last
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        order = list(range(len(self.lengths)))
        rng = random.Random(self.seed * 100003 + self.epoch)
        if self.shuffle:
            rng.shuffle(order)
        pool = self.batch_size * self.pool_batches
        batches = []
        for start in range(0, len(order), pool):
            chunk = sorted(order[start:start + pool], key=lambda i: self.lengths[i])
            batches.extend(chunk[i:i + self.batch_size] for i in range(0, len(chunk), self.batch_size))
        if self.drop_last:
            batches = [b for b in batches if len(b) == self.batch_size]
        if self.shuffle:
            rng.shuffle(batches)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches())

    def __len__(self) -> int:
        return len(self._batches())  # pools may each leave a short batch: count them exactly
