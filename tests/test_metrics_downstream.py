"""The downstream metrics on hand-computed answers, computed the way the recipes compute them:
SpeechBrain's ErrorRateStats (WER, CER with split_tokens, PER) and ClassificationStats (accuracy, and
IC's all-slots-right accuracy over joined slot predictions), and greedy CTC decoding."""
import pytest
import speechbrain as sb
import torch
from speechbrain.utils.metric_stats import ClassificationStats, ErrorRateStats

from rewire_lib.downstream.metrics import normalize_text


def _words(texts):
    return [normalize_text(t).split() for t in texts]


def test_wer_hand_computed():
    # "THE CAT SAT" vs "THE BAT SAT": 1 substitution; "ON THE MAT" vs "ON MAT": 1 deletion;
    # "HI" vs "HI THERE": 1 insertion. Errors 3, reference words 3 + 3 + 1 = 7.
    wer = ErrorRateStats()
    wer.append(["a", "b", "c"], _words(["THE BAT SAT", "on  mat", "hi there"]), _words(["the cat sat", "on the mat", "hi"]))
    assert wer.summarize("error_rate") == pytest.approx(100 * 3 / 7)


def test_cer_hand_computed():
    # split_tokens: words -> characters, a space counting as one ("_"). "ABCD" vs "ABXD": 1 substitution
    # over 4; "AB CD" vs "A CD": 1 deletion over 5 -> 2 / 9
    cer = ErrorRateStats(split_tokens=True)
    cer.append(["a", "b"], _words(["abxd", "a cd"]), _words(["abcd", "ab cd"]))
    assert cer.summarize("error_rate") == pytest.approx(100 * 2 / 9)


def test_per_hand_computed():
    refs = [["z", "ih", "r", "ow"], ["w", "ah", "n"]]
    hyps = [["z", "iy", "r"], ["w", "ah", "n", "n"]]  # sub + del, then 1 insertion: 3 errors / 7
    per = ErrorRateStats()
    per.append(["a", "b"], hyps, refs)
    assert per.summarize("error_rate") == pytest.approx(100 * 3 / 7)
    empty = ErrorRateStats()
    empty.append(["a"], [[]], [["a"]])
    assert empty.summarize("error_rate") == pytest.approx(100.0)  # empty hypothesis = all deleted


def test_accuracy_and_intent_accuracy():
    acc = ClassificationStats()
    acc.append(["a", "b", "c", "d"], [1, 2, 3, 4], [1, 2, 0, 4])
    assert 100 * acc.summarize("accuracy") == pytest.approx(75.0)
    # IC: utterance 0 all right; 1 location wrong; 2 action wrong; 3 object wrong -> 1 / 4 all right
    predicted = [[0, 2, 0], [1, 2, 0], [1, 0, 0], [0, 1, 0]]
    targets = [[0, 2, 0], [1, 2, 1], [0, 0, 0], [0, 0, 0]]
    intent = ClassificationStats()
    intent.append(list("abcd"), [str(p) for p in predicted], [str(t) for t in targets])
    assert 100 * intent.summarize("accuracy") == pytest.approx(25.0)


def test_ctc_greedy_decoding_collapses_repeats_and_blanks():
    # frames: a a <b> a b b <b> -> "a a b" (the blank separates the repeated a)
    ids = [1, 1, 0, 1, 2, 2, 0]
    logp = torch.log(torch.nn.functional.one_hot(torch.tensor([ids]), 3).float() * 0.98 + 0.01)
    assert sb.decoders.ctc_greedy_decode(logp, torch.tensor([1.0]), blank_id=0) == [[1, 1, 2]]
    assert normalize_text("  hello   World ") == "HELLO WORLD"
