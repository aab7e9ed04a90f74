"""What PR and ASR share: a CTC tokenizer fitted on the training manifest, the token pipeline, and a
Brain whose head gives CTC log-probabilities (loss: the YAML's `compute_cost`, SpeechBrain's ctc_loss;
dev/test hypotheses: greedy CTC decoding)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, List

import speechbrain as sb

from rewire_lib.downstream.brain import DownstreamBrain
from rewire_lib.downstream.labels import fit_ctc_tokenizer
from rewire_lib.downstream.predictions import rows_from_error_rate_stats
from rewire_lib.files.atomic import atomic_path

logger = logging.getLogger(__name__)


class CTCBrain(DownstreamBrain):
    """compute_forward: weighted layers -> the YAML's `head` -> log-probabilities [B, T, V] and the
    relative frame lengths [B]. A subclass's compute_objectives calls `ctc_loss_and_hypotheses`."""

    higher_is_better = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.blank_penalty = check_blank_penalty(getattr(self.hparams, "blank_penalty", 0.0), "blank_penalty")
        self.dev_by_blank_penalty: dict = {}

    def on_evaluate_start(self, max_key=None, min_key=None):
        """The best-dev checkpoint is loaded; with a `blank_penalty_grid`, the penalty used for test is
        the one whose dev metric is best on that checkpoint (ties: the smaller penalty)."""
        super().on_evaluate_start(max_key=max_key, min_key=min_key)
        grid = sorted(check_blank_penalty(p, "blank_penalty_grid")
                      for p in getattr(self.hparams, "blank_penalty_grid", None) or ())
        if not grid or self.dev_set is None:
            return
        self.dev_by_blank_penalty = {}
        for penalty in grid:
            self.blank_penalty = penalty
            self.dev_by_blank_penalty[penalty] = float(self.run_dev()[self.metric])
        self.blank_penalty = min(grid, key=lambda p: (self.dev_by_blank_penalty[p], p))
        logger.info("blank penalty for test: %g (dev %s by penalty: %s)", self.blank_penalty, self.metric,
                    ", ".join(f"{p:g}: {v:.2f}" for p, v in self.dev_by_blank_penalty.items()))

    def write_result(self, task: str, datasets: dict, extra=None) -> dict:
        """result.json also names the blank penalty the test was decoded with (and dev per penalty)."""
        extra = dict(extra or {}, blank_penalty=self.blank_penalty)
        if self.dev_by_blank_penalty:
            extra[f"dev_{self.metric}_by_blank_penalty"] = {f"{p:g}": v for p, v in self.dev_by_blank_penalty.items()}
        return super().write_result(task, datasets, extra)

    def compute_forward(self, batch, stage):
        feats, mask = self.layer_features(batch, stage)  # [B, T, D], frame mask [B, T]
        return self.modules.head(feats, mask), mask.sum(dim=1) / mask.shape[1]

    def prediction_rows(self) -> list:
        """Test rows from the task's `<metric>_metric` ErrorRateStats: edits and reference length per
        utterance, so sum(errors)/sum(ref_len) is the corpus WER/PER."""
        return rows_from_error_rate_stats(getattr(self, f"{self.metric}_metric"))

    def write_error_details(self, stats, name: str) -> None:
        """SpeechBrain's per-utterance alignments of the test pass (`<name>_test.txt`), by the main process."""
        if sb.utils.distributed.if_main_process():
            with atomic_path(Path(self.output_folder) / f"{name}_test.txt") as tmp, open(tmp, "w") as f:
                stats.write_stats(f)

    def ctc_loss_and_hypotheses(self, predictions, batch, stage):
        """(CTC loss, greedy token hypotheses on dev/test or None while training)."""
        log_probs, frame_lens = predictions
        tokens, token_lens = batch.tokens
        loss = self.hparams.compute_cost(log_probs, tokens, frame_lens, token_lens)
        if stage == sb.Stage.TRAIN:
            return loss, None
        scores = penalise_blank(log_probs.detach().float(), self.hparams.blank_index, self.blank_penalty)
        ids = sb.decoders.ctc_greedy_decode(scores, frame_lens, blank_id=self.hparams.blank_index)
        return loss, [self.tokenizer.decode_ndim(seq) for seq in ids]


def penalise_blank(log_probs, blank_index: int, penalty: float):
    """Log-probabilities with `penalty` subtracted from the blank's (a copy; 0 returns the input).

    Greedy CTC decoding emits a token only where it beats blank; on a speaker or channel the head has not
    seen, tokens lose confidence and whole words vanish (deletions). A blank penalty, chosen on dev, is
    the usual decoding-time counterweight (it moves no trained weight and changes no loss). Written here
    because SpeechBrain's greedy decoder takes no penalty; it is one subtraction."""
    if not penalty:
        return log_probs
    out = log_probs.clone()
    out[..., blank_index] -= penalty
    return out


def check_blank_penalty(value, key: str) -> float:
    """A penalty is a number >= 0 (subtracted from the blank's log-probability); anything else names `key`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"{key}: a number >= 0 is expected (subtracted from the blank's log-probability), got {value!r}")
    return float(value)


def add_ctc_pipeline(datasets: dict, hparams: dict, column: str, tokens_of: Callable[[str], List[str]]):
    """`ref_tokens` (the reference token list) and `tokens` (their indices) from `column` on every split,
    with a CTCTextEncoder fitted on the training manifest (tokenizer.txt in the output folder)."""
    tokenizer = fit_ctc_tokenizer(hparams["train_csv"], column, tokens_of, [hparams["valid_csv"], hparams["test_csv"]],
                                  Path(hparams["output_folder"]) / "tokenizer.txt")

    @sb.utils.data_pipeline.takes(column)
    @sb.utils.data_pipeline.provides("ref_tokens", "tokens")
    def text_pipeline(text):
        ref_tokens = tokens_of(text)
        yield ref_tokens
        yield tokenizer.encode_sequence_torch(ref_tokens)

    sb.dataio.dataset.add_dynamic_item(list(datasets.values()), text_pipeline)
    return tokenizer
