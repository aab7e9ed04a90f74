"""What PR and ASR share: a CTC tokenizer fitted on the training manifest, the token pipeline, and a
Brain whose head gives CTC log-probabilities (loss: the YAML's `compute_cost`, SpeechBrain's ctc_loss;
dev/test hypotheses: greedy CTC decoding)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, List

import speechbrain as sb

from rewire_lib.atomic import atomic_path
from rewire_lib.downstream.brain import DownstreamBrain
from rewire_lib.downstream.labels import fit_ctc_tokenizer
from rewire_lib.downstream.predictions import rows_from_error_rate_stats


class CTCBrain(DownstreamBrain):
    """compute_forward: weighted layers -> the YAML's `head` -> log-probabilities [B, T, V] and the
    relative frame lengths [B]. A subclass's compute_objectives calls `ctc_loss_and_hypotheses`."""

    higher_is_better = False

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
        ids = sb.decoders.ctc_greedy_decode(log_probs.detach().float(), frame_lens, blank_id=self.hparams.blank_index)
        return loss, [self.tokenizer.decode_ndim(seq) for seq in ids]


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
