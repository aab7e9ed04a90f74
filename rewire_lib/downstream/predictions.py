"""test_predictions.csv: one row per test utterance (`ID,errors,ref_len,prediction,target`) so that the
study can bootstrap over utterances. Sum(errors) / sum(ref_len) is the test metric of result.json:
word (ASR) or phoneme (PR) edits over reference length, or 1 - accuracy for the classifiers (ref_len 1).

Rows come from the SpeechBrain metric objects the recipes already fill (ErrorRateStats' per-utterance
scores, ClassificationStats' ids/predictions/targets), so they cannot disagree with the metric. Under
DDP every rank's rows are gathered and rank 0 writes them once (IDs de-duplicated)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, List, Optional

import torch

from rewire_lib.files.logs import atomic_write_csv

FILENAME = "test_predictions.csv"
FIELDS = ["ID", "errors", "ref_len", "prediction", "target"]


def rows_from_error_rate_stats(stats) -> List[dict]:
    """ErrorRateStats (WER/PER): errors = edits, ref_len = reference tokens."""
    return [{"ID": s["key"], "errors": int(s["num_edits"]), "ref_len": int(s["num_ref_tokens"]),
             "prediction": " ".join(map(str, s["hyp_tokens"])), "target": " ".join(map(str, s["ref_tokens"]))}
            for s in stats.scores]


def rows_from_classification_stats(stats, decode: Optional[Callable] = None) -> List[dict]:
    """ClassificationStats (accuracy): errors 0/1, ref_len 1; `decode` turns class indices into labels."""
    name = decode or (lambda x: x)
    return [{"ID": i, "errors": int(p != t), "ref_len": 1, "prediction": name(p), "target": name(t)}
            for i, p, t in zip(stats.ids, stats.predictions, stats.targets)]


def gather_rows(rows: List[dict]) -> List[dict]:
    """Every rank's rows (each utterance once, first rank's copy kept); the rows unchanged without DDP."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        parts: list = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(parts, rows)
        rows = [r for part in parts for r in part]
    seen, out = set(), []
    for row in rows:
        if row["ID"] not in seen:
            seen.add(row["ID"])
            out.append(row)
    return out


def write_predictions(folder, rows: List[dict], main_process: bool) -> Optional[Path]:
    """Gather (every rank must call this) and, on the main process, write test_predictions.csv sorted by ID."""
    rows = gather_rows(rows)
    if not main_process:
        return None
    return atomic_write_csv(Path(folder) / FILENAME, FIELDS, sorted(rows, key=lambda r: str(r["ID"])))
