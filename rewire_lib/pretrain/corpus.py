"""The pre-training data: a manifest that is the union of training manifests only, packed into one file.

Packing reads every file once (soundfile, resampling 44.1/48 kHz down to 16 kHz; 8 and 16 kHz audio is kept
at its own rate, as int16) so that training needs neither soundfile nor the audio folders: the packed file
and the repository are enough to train on another machine. Waveforms are brought to 16 kHz when the
packed file is loaded.
"""
from __future__ import annotations

import csv
import logging
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, List, Sequence

import torch
from torch.utils.data import Dataset, Sampler

from rewire_lib.data.dataio import length_bucketed_batches
from rewire_lib.files.atomic import atomic_path
from rewire_lib.files.logs import atomic_write_csv

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
FORBIDDEN_SPLITS = ("dev", "valid", "test", "eval")


class CorpusError(ValueError):
    """A manifest that cannot be used for pre-training (held-out split, missing column, no audio)."""


def _check_train_manifest(path: Path) -> None:
    stem = path.stem.lower()
    if any(stem.startswith(s) or f"_{s}" in stem for s in FORBIDDEN_SPLITS):
        raise CorpusError(f"{path}: looks like a held-out split ('{path.name}'); pre-training uses training "
                          "manifests only (train.csv, train_frac*.csv, ...)")


def _wavs_of(csv_path: Path, data_root) -> set:
    from rewire_lib.data.manifest import resolve_wav

    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        if "wav" not in (reader.fieldnames or []):
            raise CorpusError(f"{csv_path}: no 'wav' column")
        return {os.path.realpath(resolve_wav(r["wav"], data_root)) for r in reader}


def build_pretrain_manifest(train_csvs: Sequence[os.PathLike], out_csv: os.PathLike,
                            data_root: os.PathLike | None = None,
                            heldout_csvs: Sequence[os.PathLike] = ()) -> dict:
    """Write the union of `train_csvs` minus every file of `heldout_csvs` as `ID,duration,wav,source`.

    Why both: one corpus can have two tasks with different splits (FSDD digits are split by speaker,
    FSDD speakers by take), so a file in one task's training split can be in the other's test split;
    listing every dev/test manifest in `heldout_csvs` keeps all of them out of pre-training.
    Refuses training files named like dev/test splits. A file listed twice is kept once. IDs get the
    manifest's corpus folder as prefix; `$data_root` in `wav` is resolved. Returns counts.
    """
    from rewire_lib.data.manifest import resolve_wav

    heldout = set()
    for csv_path in heldout_csvs:
        heldout |= _wavs_of(Path(csv_path), data_root)
    rows, seen, seen_wavs, excluded, duplicates = [], set(), set(), 0, 0
    for csv_path in train_csvs:
        csv_path = Path(csv_path)
        _check_train_manifest(csv_path)
        if not csv_path.is_file():
            raise CorpusError(f"training manifest not found: {csv_path}")
        source = csv_path.parent.name or "corpus"
        if source in ("digits", "speakers") or csv_path.parent.parent.name == "fsdd":
            source = csv_path.parent.parent.name  # data/fsdd/digits/train.csv -> fsdd
        with open(csv_path, newline="") as f:
            reader = csv.DictReader(f)
            missing = {"ID", "duration", "wav"} - set(reader.fieldnames or [])
            if missing:
                raise CorpusError(f"{csv_path}: missing column(s) {sorted(missing)}; expected ID,duration,wav")
            for line, row in enumerate(reader, start=2):
                wav = resolve_wav(row["wav"], data_root)
                real = os.path.realpath(wav)
                if real in heldout:
                    excluded += 1
                    continue
                if real in seen_wavs:
                    duplicates += 1
                    continue
                seen_wavs.add(real)
                uid = f"{source}/{row['ID']}"
                if uid in seen:
                    uid = f"{source}/{csv_path.parent.name}-{csv_path.stem}/{row['ID']}"
                seen.add(uid)
                try:
                    duration = float(row["duration"])
                except ValueError:
                    raise CorpusError(f"{csv_path}:{line}: duration {row['duration']!r} is not a number") from None
                rows.append({"ID": uid, "duration": f"{duration:.4f}", "wav": wav, "source": source})
    if not rows:
        raise CorpusError(f"no utterances in {[str(p) for p in train_csvs]}")
    Path(out_csv).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_csv(out_csv, ["ID", "duration", "wav", "source"], rows)
    info = {"utterances": len(rows), "minutes": round(sum(float(r["duration"]) for r in rows) / 60, 2),
            "excluded_heldout": excluded, "duplicates": duplicates}
    logger.info("pre-training manifest %s: %s", out_csv, info)
    return info


MU = 255.0


def mulaw_encode(wav: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float -> uint8 mu-law (mu = 255, the G.711 curve): half the bytes of int16."""
    y = torch.sign(wav) * torch.log1p(MU * wav.abs().clamp(max=1.0)) / math.log1p(MU)
    return torch.round((y + 1.0) * 127.5).clamp(0, 255).to(torch.uint8)


def mulaw_decode(code: torch.Tensor) -> torch.Tensor:
    y = code.float() / 127.5 - 1.0
    return torch.sign(y) * torch.expm1(y.abs() * math.log1p(MU)) / MU


def trim_silence(wav: torch.Tensor, sr: int, top_db: float, margin_s: float = 0.1) -> torch.Tensor:
    """Cut leading/trailing audio whose 20 ms frame energy is `top_db` below the loudest frame (+ margin)."""
    hop = max(1, int(0.02 * sr))
    n = wav.numel() // hop
    if top_db <= 0 or n < 3:
        return wav
    energy = wav[:n * hop].reshape(n, hop).pow(2).mean(1)
    db = 10 * torch.log10(energy + 1e-10)
    loud = torch.nonzero(db > db.max() - top_db)[:, 0]
    margin = int(margin_s * sr)
    start = max(0, int(loud[0]) * hop - margin)
    end = min(wav.numel(), (int(loud[-1]) + 1) * hop + margin)
    return wav[start:end]


def pack_corpus(manifest_csv: os.PathLike, out_path: os.PathLike, min_seconds: float = 0.05,
                fmt: str = "int16", trim_db: float = 0.0, progress: bool = True) -> dict:
    """Read every file of the manifest into one tensor file (atomic write); returns its summary.

    fmt: "int16" (lossless for 16-bit sources) or "mulaw8" (8-bit mu-law, half the size, ~38 dB SNR: for
    carrying the corpus to another machine). trim_db > 0 cuts leading/trailing silence quieter than the
    loudest 20 ms by that many dB (keeping 0.1 s margins). Unreadable or too-short files are skipped,
    counted and logged by name.
    """
    if fmt not in ("int16", "mulaw8"):
        raise CorpusError(f"pack format must be 'int16' or 'mulaw8', got {fmt!r}")
    from tqdm import tqdm

    from rewire_lib.data.audio import AudioError, audio_info, load_audio

    with open(manifest_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    ids, rates, chunks, skipped = [], [], [], []
    for row in tqdm(rows, desc="packing audio", disable=not progress, leave=False):
        try:
            info = audio_info(row["wav"])
            keep_sr = info.sample_rate if info.sample_rate <= SAMPLE_RATE else SAMPLE_RATE
            wav = load_audio(row["wav"], target_sr=keep_sr)
        except AudioError as err:
            skipped.append((row["ID"], str(err)))
            continue
        wav = trim_silence(wav, keep_sr, trim_db)
        if wav.numel() < min_seconds * keep_sr:
            skipped.append((row["ID"], f"shorter than {min_seconds} s"))
            continue
        peak = float(wav.abs().max())
        if peak > 1.0:
            wav = wav / peak
        ids.append(row["ID"])
        rates.append(keep_sr)
        chunks.append(torch.round(wav * 32767.0).to(torch.int16) if fmt == "int16" else mulaw_encode(wav))
    for uid, why in skipped[:20]:
        logger.warning("pack: skipped %s: %s", uid, why)
    if skipped:
        logger.warning("pack: skipped %d of %d files", len(skipped), len(rows))
    if not ids:
        raise CorpusError(f"{manifest_csv}: no readable audio")
    lengths = torch.tensor([c.numel() for c in chunks])
    packed = {"ids": ids, "sample_rates": torch.tensor(rates), "lengths": lengths,
              "audio": torch.cat(chunks), "format": fmt, "manifest": str(manifest_csv), "skipped": len(skipped)}
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_path) as tmp:
        torch.save(packed, tmp)
    seconds = float((lengths.double() / torch.tensor(rates).double()).sum())
    summary = {"utterances": len(ids), "skipped": len(skipped), "hours": seconds / 3600,
               "bytes": out_path.stat().st_size}
    logger.info("packed %s: %s", out_path, summary)
    return summary


def load_packed(path: os.PathLike) -> tuple[list[str], list[torch.Tensor]]:
    """(ids, float32 16 kHz waveforms) from a packed file."""
    import torchaudio

    packed = torch.load(path, map_location="cpu", weights_only=True)
    waves = []
    for chunk, sr in zip(torch.split(packed["audio"], packed["lengths"].tolist()), packed["sample_rates"].tolist()):
        wav = chunk.float() / 32767.0 if packed.get("format", "int16") == "int16" else mulaw_decode(chunk)
        if sr != SAMPLE_RATE:
            wav = torchaudio.functional.resample(wav, int(sr), SAMPLE_RATE)
        waves.append(wav.contiguous())
    return list(packed["ids"]), waves


# --------------------------------------------------------------------------------------------- training data
@dataclass
class PretrainBatch:
    wavs: torch.Tensor  # [B, S] float, zero padded
    lengths: torch.Tensor  # [B] samples
    labels: torch.Tensor  # [B, T] long, -100 past each utterance's frames

    def to(self, device) -> "PretrainBatch":
        return PretrainBatch(self.wavs.to(device, non_blocking=True), self.lengths.to(device, non_blocking=True),
                             self.labels.to(device, non_blocking=True))

    def pin_memory(self) -> "PretrainBatch":
        return PretrainBatch(self.wavs.pin_memory(), self.lengths.pin_memory(), self.labels.pin_memory())


class PretrainDataset(Dataset):
    """Waveform + frame labels, randomly cropped to at most `max_frames` frames (crops start on a frame)."""

    HOP, WIN = 320, 400

    def __init__(self, waves: List[torch.Tensor], labels: List[torch.Tensor], max_frames: int = 100, seed: int = 0):
        if len(waves) != len(labels):
            raise ValueError(f"{len(waves)} waveforms but {len(labels)} label sequences")
        self.waves, self.labels = waves, labels
        self.max_frames = max_frames
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def frames(self, index: int) -> int:
        return min(int(self.labels[index].numel()), self.max_frames)

    def __len__(self) -> int:
        return len(self.waves)

    def __getitem__(self, index: int):
        wav, lab = self.waves[index], self.labels[index]
        n = int(lab.numel())
        if n > self.max_frames:
            start = random.Random(f"{self.seed}-{self.epoch}-{index}").randrange(n - self.max_frames + 1)
            lab = lab[start:start + self.max_frames]
            wav = wav[start * self.HOP: start * self.HOP + (self.max_frames - 1) * self.HOP + self.WIN]
        return wav, lab


def collate(items) -> PretrainBatch:
    lengths = torch.tensor([w.numel() for w, _ in items])
    frames = max(l.numel() for _, l in items)
    wavs = torch.zeros(len(items), int(lengths.max()))
    labels = torch.full((len(items), frames), -100, dtype=torch.long)
    for i, (w, l) in enumerate(items):
        wavs[i, :w.numel()] = w
        labels[i, :l.numel()] = l
    return PretrainBatch(wavs, lengths, labels)


class StepsBatchSampler(Sampler):
    """Exactly `steps_per_epoch` batches of similar lengths per epoch, reproducible per (seed, epoch).

    Each pass over the data: shuffle, cut into pools of `pool_batches` batches, sort each pool by length,
    batch, shuffle the batches; passes repeat until the epoch has its batches (an epoch here is a
    checkpoint interval, not a pass over the data).
    """

    def __init__(self, lengths: Sequence[float], batch_size: int, steps_per_epoch: int, seed: int = 0,
                 pool_batches: int = 50):
        if batch_size < 1 or steps_per_epoch < 1:
            raise ValueError(f"batch_size and steps_per_epoch must be >= 1, got {batch_size}, {steps_per_epoch}")
        if len(lengths) < batch_size:
            raise ValueError(f"{len(lengths)} utterances cannot fill a batch of {batch_size}")
        self.lengths = list(lengths)
        self.batch_size, self.steps, self.seed, self.pool_batches = batch_size, steps_per_epoch, seed, pool_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _one_pass(self, rng: random.Random) -> List[List[int]]:
        return length_bucketed_batches(self.lengths, self.batch_size, rng, self.pool_batches)

    def __iter__(self) -> Iterator[List[int]]:
        rng = random.Random(self.seed * 1000003 + self.epoch)
        out: List[List[int]] = []
        while len(out) < self.steps:
            out.extend(self._one_pass(rng))
        return iter(out[:self.steps])

    def __len__(self) -> int:
        return self.steps
