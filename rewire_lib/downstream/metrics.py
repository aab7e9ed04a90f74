"""Downstream metrics, all in percent: WER/CER (jiwer), PER (jiwer's WER over phoneme tokens),
classification accuracy, and intent accuracy (an utterance is right only if every slot is).

Text is normalised the same way for references and hypotheses (`normalize_text`): upper case,
whitespace collapsed. Empty lists give NaN rather than an exception, so a run with an empty
dev set still writes its log.
"""
from __future__ import annotations

import math
from typing import Dict, List, Mapping, Sequence

import jiwer


def normalize_text(text: str) -> str:
    """Upper case, single spaces, no leading/trailing space."""
    return " ".join(str(text).upper().split())


def _check_pairs(refs: Sequence, hyps: Sequence, what: str) -> None:
    if len(refs) != len(hyps):
        raise ValueError(f"{what}: {len(refs)} references but {len(hyps)} hypotheses")


def wer(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Word error rate in percent over a corpus (errors summed, then divided by reference words)."""
    _check_pairs(refs, hyps, "wer")
    if not refs:
        return math.nan
    return 100.0 * jiwer.wer([normalize_text(r) for r in refs], [normalize_text(h) for h in hyps])


def cer(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Character error rate in percent (spaces count as characters, as in jiwer)."""
    _check_pairs(refs, hyps, "cer")
    if not refs:
        return math.nan
    return 100.0 * jiwer.cer([normalize_text(r) for r in refs], [normalize_text(h) for h in hyps])


def per(refs: Sequence[Sequence[str]], hyps: Sequence[Sequence[str]]) -> float:
    """Phoneme error rate in percent: edit distance over phoneme tokens / reference phonemes."""
    _check_pairs(refs, hyps, "per")
    if not refs:
        return math.nan
    for i, r in enumerate(refs):
        if isinstance(r, str) or (hyps[i] is not None and isinstance(hyps[i], str)):
            raise TypeError("per() takes lists of phoneme tokens, not strings (split them first)")
    return 100.0 * jiwer.wer([" ".join(r) for r in refs], [" ".join(h) for h in hyps])


def accuracy(preds: Sequence, targets: Sequence) -> float:
    """Percentage of predictions equal to their target."""
    _check_pairs(targets, preds, "accuracy")
    if not targets:
        return math.nan
    return 100.0 * sum(p == t for p, t in zip(preds, targets)) / len(targets)


def intent_accuracy(preds: Mapping[str, Sequence], targets: Mapping[str, Sequence]) -> Dict[str, float]:
    """`{"accuracy": all slots right, "<slot>_accuracy": per slot}`, in percent."""
    if set(preds) != set(targets):
        raise ValueError(f"intent_accuracy: slots differ: predicted {sorted(preds)}, targets {sorted(targets)}")
    slots = list(targets)
    n = len(targets[slots[0]]) if slots else 0
    for s in slots:
        _check_pairs(targets[s], preds[s], f"intent_accuracy[{s}]")
        if len(targets[s]) != n:
            raise ValueError(f"intent_accuracy: slot {s!r} has {len(targets[s])} items, expected {n}")
    out: Dict[str, float] = {}
    if n == 0:
        out["accuracy"] = math.nan
    else:
        right = [all(preds[s][i] == targets[s][i] for s in slots) for i in range(n)]
        out["accuracy"] = 100.0 * sum(right) / n
    for s in slots:
        out[f"{s}_accuracy"] = accuracy(preds[s], targets[s])
    return out


def ctc_collapse(ids: Sequence[int], blank: int = 0) -> List[int]:
    """CTC rule: merge repeats, then drop blanks (for hand checks; decoding uses SpeechBrain's)."""
    out: List[int] = []
    prev = None
    for i in ids:
        if i != prev and i != blank:
            out.append(int(i))
        prev = i
    return out
