"""Text normalisation shared by the ASR recipe's targets and hypotheses (upper case, single spaces).

The error rates themselves are SpeechBrain's, declared in each task's YAML: `ErrorRateStats` for WER,
CER (`split_tokens: true`: characters, a space counting as one) and PER (edit distance over phoneme tokens), and
`ClassificationStats` for accuracy; tests/test_metrics_downstream.py checks them on hand-computed
answers, fed the way the recipes feed them.
"""
from __future__ import annotations


def normalize_text(text: str) -> str:
    """Upper case, single spaces, no leading/trailing space."""
    return " ".join(str(text).upper().split())
