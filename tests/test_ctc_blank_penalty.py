"""CTC decoding's blank penalty: what it changes in greedy decoding, its checks, and the dev-chosen penalty
of `blank_penalty_grid` recorded in result.json."""
import json
import math

import pytest
import speechbrain as sb
import torch

from rewire_lib.downstream.ctc import check_blank_penalty, penalise_blank
from tests.test_downstream import corpus, run  # noqa: F401 (fixture)
from tests.test_finetune import fast_env_log  # noqa: F401 (autouse: no pip freeze / git per run)


def _log_probs(rows):
    return torch.log(torch.tensor([rows], dtype=torch.float32))


def test_penalty_lowers_only_the_blank_and_leaves_the_input_alone():
    lp = _log_probs([[0.5, 0.3, 0.2], [0.6, 0.1, 0.3]])
    out = penalise_blank(lp, blank_index=0, penalty=1.5)
    assert torch.allclose(out[..., 0], lp[..., 0] - 1.5)
    assert torch.equal(out[..., 1:], lp[..., 1:])
    assert torch.allclose(lp, _log_probs([[0.5, 0.3, 0.2], [0.6, 0.1, 0.3]]))  # not modified in place
    assert penalise_blank(lp, 0, 0.0) is lp


def test_penalty_turns_a_deletion_into_the_word():
    # frame 2 holds token 1 at 0.4 against blank 0.5: greedy decoding deletes it unless blank is penalised
    lp = _log_probs([[0.9, 0.05, 0.05], [0.5, 0.4, 0.1], [0.9, 0.05, 0.05]])
    lens = torch.ones(1)
    assert sb.decoders.ctc_greedy_decode(penalise_blank(lp, 0, 0.0), lens, blank_id=0) == [[]]
    assert sb.decoders.ctc_greedy_decode(penalise_blank(lp, 0, 0.5), lens, blank_id=0) == [[1]]


@pytest.mark.parametrize("bad", [-0.5, "1", True, None])
def test_a_penalty_that_is_not_a_number_at_least_zero_is_named(bad):
    with pytest.raises(ValueError, match=r"blank_penalty_grid: a number >= 0"):
        check_blank_penalty(bad, "blank_penalty_grid")


def test_grid_decodes_test_with_the_penalty_best_on_dev(tiny_encoder_dir, corpus, tmp_path):  # noqa: F811
    out = tmp_path / "asr"
    result = run("asr", tiny_encoder_dir, corpus, out, "--max_steps", "3", "--blank_penalty_grid", "[0, 2, 1]")
    by_penalty = result["dev_wer_by_blank_penalty"]
    assert list(by_penalty) == ["0", "1", "2"]
    assert all(math.isfinite(v) for v in by_penalty.values())
    best = min(by_penalty.values())
    assert result["blank_penalty"] == min(float(p) for p, v in by_penalty.items() if v == best)
    assert json.loads((out / "result.json").read_text())["blank_penalty"] == result["blank_penalty"]


def test_a_negative_penalty_in_the_yaml_stops_the_run(tiny_encoder_dir, corpus, tmp_path):  # noqa: F811
    with pytest.raises(ValueError, match=r"blank_penalty: a number >= 0 .* got -1"):
        run("asr", tiny_encoder_dir, corpus, tmp_path / "asr", "--max_steps", "1", "--blank_penalty", "-1.0")
