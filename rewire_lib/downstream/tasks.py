"""The six SUPERB tasks as small specs: labels (SpeechBrain encoders saved in the output folder),
head, loss, and metric accumulation. The engine in `brain.py` is the same for all of them."""
from __future__ import annotations

import csv
import logging
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import speechbrain as sb
import torch
import torch.nn.functional as F
from speechbrain.dataio.encoder import CategoricalEncoder, CTCTextEncoder

from rewire_lib.downstream import heads, metrics

logger = logging.getLogger(__name__)


class LabelError(ValueError):
    """A dev/test manifest holds a label the training manifest never had, or a column is missing."""


def read_rows(csv_path) -> List[Dict[str, str]]:
    with open(csv_path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _require_columns(rows: List[dict], columns: Sequence[str], csv_path) -> None:
    if rows:
        missing = [c for c in columns if c not in rows[0]]
        if missing:
            raise LabelError(f"{csv_path}: missing column(s) {missing} (has {list(rows[0])})")


def _check_known(encoder: CategoricalEncoder, rows: List[dict], column: str, csv_path, train_csv) -> None:
    for line, row in enumerate(rows, start=2):
        label = row[column]
        if label not in encoder.lab2ind:
            raise LabelError(
                f"{csv_path}: line {line} (ID {row.get('ID')}): {column} label {label!r} never occurs in the "
                f"training manifest {train_csv}; known labels: {sorted(encoder.lab2ind)[:20]}")


class Task:
    """Base class; subclasses fill in labels, head, loss and metric."""

    name = ""
    metric = ""  # primary metric: "accuracy", "wer", "per"
    higher_is_better = True

    def __init__(self, hp: dict):
        self.hp = hp

    # data
    def stratify_key(self, row: dict) -> Optional[str]:
        return None

    def setup_labels(self, train_csv, eval_csvs: Dict[str, str], output_folder) -> None:
        raise NotImplementedError

    def add_pipelines(self, dataset) -> List[str]:
        raise NotImplementedError

    # model
    def build_head(self, input_dim: int) -> torch.nn.Module:
        raise NotImplementedError

    def loss(self, out, batch, mask) -> torch.Tensor:
        raise NotImplementedError

    # metric
    def new_stats(self) -> dict:
        return {"pred": [], "ref": []}

    def accumulate(self, stats: dict, out, batch, mask, beam: bool = False) -> None:
        raise NotImplementedError

    def summarize(self, stats: dict) -> Dict[str, float]:
        raise NotImplementedError


# ---------------------------------------------------------------------- classification
class ClassificationTask(Task):
    metric = "accuracy"
    higher_is_better = True

    def __init__(self, hp: dict, name: str):
        super().__init__(hp)
        self.name = name
        self.column = hp.get("label_column", "label")

    def stratify_key(self, row):
        return str(row[self.column])

    def setup_labels(self, train_csv, eval_csvs, output_folder):
        train_rows = read_rows(train_csv)
        _require_columns(train_rows, [self.column], train_csv)
        self.encoder = CategoricalEncoder()
        self.encoder.load_or_create(Path(output_folder) / "label_encoder.txt",
                                    from_iterables=[[r[self.column] for r in train_rows]])
        self.encoder.expect_len(len(self.encoder))
        for csv_path in eval_csvs.values():
            rows = read_rows(csv_path)
            _require_columns(rows, [self.column], csv_path)
            _check_known(self.encoder, rows, self.column, csv_path, train_csv)
        self.num_classes = len(self.encoder)

    def add_pipelines(self, dataset):
        enc = self.encoder

        @sb.utils.data_pipeline.takes(self.column)
        @sb.utils.data_pipeline.provides("label_id")
        def label_pipeline(label):
            return torch.LongTensor([enc.encode_label(label, allow_unk=False)])

        dataset.add_dynamic_item(label_pipeline)
        return ["label_id"]

    def build_head(self, input_dim):
        return heads.PooledLinearHead(input_dim, self.num_classes)

    def loss(self, out, batch, mask):
        return F.cross_entropy(out, batch.label_id.data[:, 0])

    def accumulate(self, stats, out, batch, mask, beam=False):
        stats["pred"].extend(out.argmax(dim=-1).tolist())
        stats["ref"].extend(batch.label_id.data[:, 0].tolist())

    def summarize(self, stats):
        return {"accuracy": metrics.accuracy(stats["pred"], stats["ref"])}


class IntentTask(Task):
    name = "ic"
    metric = "accuracy"
    higher_is_better = True

    def __init__(self, hp: dict):
        super().__init__(hp)
        self.slots = list(hp.get("slots") or ["action", "object", "location"])

    def stratify_key(self, row):
        return "|".join(str(row[s]) for s in self.slots)

    def setup_labels(self, train_csv, eval_csvs, output_folder):
        train_rows = read_rows(train_csv)
        _require_columns(train_rows, self.slots, train_csv)
        self.encoders = {}
        for slot in self.slots:
            enc = CategoricalEncoder()
            enc.load_or_create(Path(output_folder) / f"label_encoder_{slot}.txt",
                               from_iterables=[[r[slot] for r in train_rows]])
            enc.expect_len(len(enc))
            self.encoders[slot] = enc
        for csv_path in eval_csvs.values():
            rows = read_rows(csv_path)
            _require_columns(rows, self.slots, csv_path)
            for slot in self.slots:
                _check_known(self.encoders[slot], rows, slot, csv_path, train_csv)

    def add_pipelines(self, dataset):
        keys = []
        for slot in self.slots:
            enc = self.encoders[slot]

            def make(enc=enc, slot=slot):
                @sb.utils.data_pipeline.takes(slot)
                @sb.utils.data_pipeline.provides(f"{slot}_id")
                def pipeline(label):
                    return torch.LongTensor([enc.encode_label(label, allow_unk=False)])
                return pipeline

            dataset.add_dynamic_item(make())
            keys.append(f"{slot}_id")
        return keys

    def build_head(self, input_dim):
        return heads.MultiSlotHead(input_dim, {s: len(self.encoders[s]) for s in self.slots})

    def loss(self, out, batch, mask):
        return sum(F.cross_entropy(out[s], getattr(batch, f"{s}_id").data[:, 0]) for s in self.slots)

    def new_stats(self):
        return {"pred": {s: [] for s in self.slots}, "ref": {s: [] for s in self.slots}}

    def accumulate(self, stats, out, batch, mask, beam=False):
        for s in self.slots:
            stats["pred"][s].extend(out[s].argmax(dim=-1).tolist())
            stats["ref"][s].extend(getattr(batch, f"{s}_id").data[:, 0].tolist())

    def summarize(self, stats):
        return metrics.intent_accuracy(stats["pred"], stats["ref"])


# ---------------------------------------------------------------------- CTC
class CTCTask(Task):
    higher_is_better = False
    column = ""

    def tokens_of(self, text: str) -> List[str]:
        raise NotImplementedError

    def setup_labels(self, train_csv, eval_csvs, output_folder):
        train_rows = read_rows(train_csv)
        _require_columns(train_rows, [self.column], train_csv)
        for csv_path in eval_csvs.values():
            _require_columns(read_rows(csv_path), [self.column], csv_path)
        self.encoder = CTCTextEncoder()
        self.encoder.load_or_create(
            Path(output_folder) / "tokenizer.txt",
            from_iterables=[[self.tokens_of(r[self.column]) for r in train_rows]],
            sequence_input=True,
            special_labels={"blank_label": 0, "unk_label": "<unk>"},
        )
        self.encoder.expect_len(len(self.encoder))
        self.blank = self.encoder.lab2ind[self.encoder.blank_label]
        self.vocab_size = len(self.encoder)
        self._searcher = None

    def add_pipelines(self, dataset):
        enc, tokens_of = self.encoder, self.tokens_of

        @sb.utils.data_pipeline.takes(self.column)
        @sb.utils.data_pipeline.provides("ref_tokens", "tokens")
        def text_pipeline(text):
            toks = tokens_of(text)
            yield toks
            yield enc.encode_sequence_torch(toks)

        dataset.add_dynamic_item(text_pipeline)
        return ["ref_tokens", "tokens"]

    def loss(self, out, batch, mask):
        tokens = batch.tokens.data
        tgt_lens = torch.round(batch.tokens.lengths * tokens.shape[1]).long()
        in_lens = mask.sum(dim=1).long()
        return F.ctc_loss(out.transpose(0, 1), tokens, in_lens, tgt_lens, blank=self.blank,
                          reduction="mean", zero_infinity=True)

    def decode(self, out, mask, beam: bool = False) -> List[List[str]]:
        rel = mask.sum(dim=1).float() / out.shape[1]
        if beam and self.hp.get("beam_size", 0):
            return self._beam_decode(out, rel)
        ids = sb.decoders.ctc_greedy_decode(out, rel, blank_id=self.blank)
        return [[self.encoder.ind2lab[i] for i in seq] for seq in ids]

    def _beam_decode(self, out, rel):
        raise NotImplementedError(f"beam search is not offered for {self.name}")

    def accumulate(self, stats, out, batch, mask, beam=False):
        stats["pred"].extend(self.decode(out.detach().float().cpu(), mask.cpu(), beam))
        stats["ref"].extend(batch.ref_tokens)


class PhonemeTask(CTCTask):
    name = "pr"
    metric = "per"
    column = "phn"

    def tokens_of(self, text):
        return str(text).split()

    def build_head(self, input_dim):
        return heads.LinearCTCHead(input_dim, self.vocab_size, proj_dim=self.hp.get("proj_dim"))

    def summarize(self, stats):
        return {"per": metrics.per(stats["ref"], stats["pred"])}


class CharASRTask(CTCTask):
    name = "asr"
    metric = "wer"
    column = "wrd"

    def tokens_of(self, text):
        return list(metrics.normalize_text(text))

    def build_head(self, input_dim):
        hp = self.hp
        return heads.BiLSTMCTCHead(input_dim, self.vocab_size, proj_dim=hp.get("proj_dim") or 256,
                                   hidden_size=hp.get("lstm_hidden", 256), num_layers=hp.get("lstm_layers", 2),
                                   dropout=hp.get("head_dropout", 0.0))

    def _beam_decode(self, out, rel):
        if self._searcher is None:
            from speechbrain.decoders.ctc import CTCBeamSearcher
            vocab = [self.encoder.ind2lab[i] for i in range(self.vocab_size)]
            self._searcher = CTCBeamSearcher(blank_index=self.blank, vocab_list=vocab, space_token=" ",
                                             beam_size=int(self.hp["beam_size"]))
        hyps = self._searcher(out, rel)
        return [list(metrics.normalize_text(h[0].text)) if h else [] for h in hyps]

    def summarize(self, stats):
        refs = ["".join(r) for r in stats["ref"]]
        hyps = ["".join(h) for h in stats["pred"]]
        return {"wer": metrics.wer(refs, hyps), "cer": metrics.cer(refs, hyps)}


def make_task(name: str, hp: dict) -> Task:
    if name in ("ks", "sid", "er"):
        return ClassificationTask(hp, name)
    if name == "ic":
        return IntentTask(hp)
    if name == "pr":
        return PhonemeTask(hp)
    if name == "asr":
        return CharASRTask(hp)
    raise ValueError(f"unknown downstream task {name!r}; expected one of pr, asr, ks, ic, sid, er")


def is_better(a: float, b: Optional[float], higher_is_better: bool) -> bool:
    """True if a is strictly better than b (None/NaN b: always)."""
    if b is None or (isinstance(b, float) and math.isnan(b)):
        return not math.isnan(a)
    return a > b if higher_is_better else a < b
