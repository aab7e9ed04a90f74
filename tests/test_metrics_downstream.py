"""Downstream metrics on hand-computed answers."""
import math

import pytest
import speechbrain as sb
import torch

from rewire_lib.downstream import metrics


def test_wer_hand_computed():
    # ref 1: "THE CAT SAT" vs "THE BAT SAT" -> 1 substitution; ref 2: "ON THE MAT" vs "ON MAT" -> 1 deletion
    # ref 3: "HI" vs "HI THERE" -> 1 insertion. Errors 3, reference words 3 + 3 + 1 = 7.
    refs = ["the cat sat", "on the mat", "hi"]
    hyps = ["THE BAT SAT", "on  mat", "hi there"]
    assert metrics.wer(refs, hyps) == pytest.approx(100 * 3 / 7)


def test_cer_hand_computed():
    # "ABCD" vs "ABXD": 1 substitution over 4; "AB" vs "A": 1 deletion over 2 -> 2 / 6
    assert metrics.cer(["abcd", "ab"], ["abxd", "a"]) == pytest.approx(100 * 2 / 6)


def test_per_hand_computed():
    refs = [["z", "ih", "r", "ow"], ["w", "ah", "n"]]
    hyps = [["z", "iy", "r"], ["w", "ah", "n", "n"]]  # sub + del, then 1 insertion: 3 errors / 7
    assert metrics.per(refs, hyps) == pytest.approx(100 * 3 / 7)
    assert metrics.per([["a"]], [[]]) == pytest.approx(100.0)  # empty hypothesis = all deleted
    with pytest.raises(TypeError):
        metrics.per(["a b"], ["a b"])


def test_accuracy_and_intent_accuracy():
    assert metrics.accuracy([1, 2, 3, 4], [1, 2, 0, 4]) == pytest.approx(75.0)
    preds = {"action": [0, 1, 1, 0], "object": [2, 2, 0, 1], "location": [0, 0, 0, 0]}
    refs = {"action": [0, 1, 0, 0], "object": [2, 2, 0, 0], "location": [0, 1, 0, 0]}
    # utterance 0 all right; 1 location wrong; 2 action wrong; 3 object wrong -> 1 / 4
    out = metrics.intent_accuracy(preds, refs)
    assert out["accuracy"] == pytest.approx(25.0)
    assert out["action_accuracy"] == pytest.approx(75.0)
    assert out["object_accuracy"] == pytest.approx(75.0)
    assert out["location_accuracy"] == pytest.approx(75.0)
    assert math.isnan(metrics.accuracy([], []))
    with pytest.raises(ValueError):
        metrics.accuracy([1], [1, 2])


def test_ctc_greedy_matches_hand_collapse():
    # frames: a a <b> a b b <b> -> "a a b" (blank separates the repeated a)
    ids = [1, 1, 0, 1, 2, 2, 0]
    assert metrics.ctc_collapse(ids, blank=0) == [1, 1, 2]
    logp = torch.log(torch.nn.functional.one_hot(torch.tensor([ids]), 3).float() * 0.98 + 0.01)
    decoded = sb.decoders.ctc_greedy_decode(logp, torch.tensor([1.0]), blank_id=0)
    assert decoded == [[1, 1, 2]]
