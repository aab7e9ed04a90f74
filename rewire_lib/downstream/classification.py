"""Utterance classification as KS, SID and ER all do it (SUPERB): the weighted layer sum, mean-pooled
over the valid frames, a linear layer to class logits, cross-entropy, accuracy. The three recipes
subclass `UtteranceClassifierBrain` and call `add_label_pipeline` in their `dataio_prep`; their YAML
declares the head (`PooledLinearHead`), `compute_cost` and `accuracy_stats`."""
from __future__ import annotations

from pathlib import Path

import speechbrain as sb
import torch

from rewire_lib.downstream.brain import DownstreamBrain
from rewire_lib.downstream.labels import fit_label_encoder
from rewire_lib.downstream.predictions import rows_from_classification_stats


class UtteranceClassifierBrain(DownstreamBrain):
    """One label per utterance; dev metric accuracy (%)."""

    metric = "accuracy"
    higher_is_better = True
    curve_metrics = ("accuracy",)

    def compute_forward(self, batch, stage):
        feats, mask = self.layer_features(batch, stage)  # [B, T, D] weighted layers, frame mask [B, T]
        return self.modules.head(feats, mask)  # class logits [B, C]

    def compute_objectives(self, logits, batch, stage):
        labels = batch.label_encoded.data[:, 0]
        if stage != sb.Stage.TRAIN:
            self.accuracy.append(batch.id, logits.argmax(dim=-1).tolist(), labels.tolist())
        return self.hparams.compute_cost(logits, labels)

    def prediction_rows(self) -> list:
        """Test rows: errors 0/1, ref_len 1 (sum(errors)/n = 1 - accuracy); labels decoded when the
        recipe set `label_encoder` on the Brain, class indices otherwise."""
        encoder = getattr(self, "label_encoder", None)
        return rows_from_classification_stats(self.accuracy, encoder.decode_ndim if encoder is not None else None)

    def on_stage_start(self, stage, epoch=None):
        super().on_stage_start(stage, epoch)
        self.accuracy = self.hparams.accuracy_stats()  # SpeechBrain's ClassificationStats

    def on_stage_end(self, stage, stage_loss, epoch=None):
        if stage != sb.Stage.TRAIN:
            self.report_stage(stage, stage_loss, accuracy=100.0 * accuracy_of(self.accuracy))
        super().on_stage_end(stage, stage_loss, epoch)


def accuracy_of(stats) -> float:
    """The fraction of a ClassificationStats' predictions equal to their targets: its `summarize("accuracy")`
    without the rest of the summary. Why: summarize always builds the whole confusion matrix in a Python loop
    (4 ms for KS's 582 dev clips, 40 dev passes a run: 0.18 s, more than the run's remaining fixed cost)."""
    if not stats.ids:
        return float("nan")
    return sum(p == t for p, t in zip(stats.predictions, stats.targets)) / len(stats.ids)


def add_label_pipeline(datasets: dict, hparams: dict):
    """`label_encoded` ([1] class index of the `label_column` value) on every split, from a
    CategoricalEncoder fitted on the training manifest (label_encoder.txt in the output folder);
    the splits give `id`, `sig` and `label_encoded`."""
    column = hparams["label_column"]
    label_encoder = fit_label_encoder(hparams["train_csv"], column, [hparams["valid_csv"], hparams["test_csv"]],
                                      Path(hparams["output_folder"]) / "label_encoder.txt")

    @sb.utils.data_pipeline.takes(column)
    @sb.utils.data_pipeline.provides("label_encoded")
    def label_pipeline(label):
        return torch.LongTensor([label_encoder.encode_label(label, allow_unk=False)])

    sb.dataio.dataset.add_dynamic_item(list(datasets.values()), label_pipeline)
    sb.dataio.dataset.set_output_keys(list(datasets.values()), ["id", "sig", "label_encoded"])
    return label_encoder


def random_frame_window(mask: torch.Tensor, frames: int) -> torch.Tensor:
    """The frame mask [B, T] narrowed to one random window of `frames` valid frames per utterance
    (utterances no longer than that keep every frame): SUPERB SID's training crops, taken on the
    features so that the frozen-feature cache still serves every epoch."""
    lengths = mask.sum(dim=1)
    starts = (torch.rand(lengths.shape, device=mask.device) * (lengths - frames + 1).clamp(min=1)).long()
    positions = torch.arange(mask.shape[1], device=mask.device)[None, :]
    window = (positions >= starts[:, None]) & (positions < starts[:, None] + frames)
    return mask & window
