#!/usr/bin/env python3
"""Intent classification (SUPERB IC): the action, object and location a spoken command asks for.

One linear layer per slot over the mean-pooled, learnable weighted sum of a frozen speech encoder's
layers (SUPERB protocol), trained with the sum of the slots' cross-entropies; an utterance counts as
right only when every slot is. result.json reports that accuracy (%) and each slot's, for the
checkpoint with the best dev accuracy.

Data: manifests `ID,duration,wav` plus one column per slot (`slots`, default action,object,location).
Default: the synthetic corpus (data/synth/ic) made by `python data_prep/prepare_all.py`. Fluent Speech
Commands as SUPERB: hparams/fluent_speech_commands.yaml with `--corpus_folder`.

Run, from the repository root or from this folder:
    python recipes/ic/train.py recipes/ic/hparams/baseline.yaml
    cd recipes/ic && python train.py hparams/rewired.yaml --train_fraction 0.1
    python recipes/ic/train.py recipes/ic/hparams/fluent_speech_commands.yaml --corpus_folder /corpora/fluent_speech_commands_dataset
    torchrun --nproc_per_node=2 recipes/ic/train.py recipes/ic/hparams/baseline.yaml   # DDP

Keys people change (`--key value`): encoder, data_folder, slots, train_fraction, seed, lr, batch_size,
max_steps, eval_every_steps, freeze_encoder, feature_cache.
"""
from pathlib import Path

import speechbrain as sb
import torch

from rewire_lib.downstream.brain import DownstreamBrain
from rewire_lib.downstream.classification import accuracy_of
from rewire_lib.downstream.data import split_datasets
from rewire_lib.downstream.labels import fit_label_encoder
from rewire_lib.downstream.predictions import rows_from_classification_stats
from rewire_lib.downstream.run import SCHEMA, prepare_run, run_as_script
from rewire_lib.training.recipe import create_run_folder, init_ddp_once, load_hparams


class IntentClassificationBrain(DownstreamBrain):
    """Weighted layers -> mean over valid frames -> one linear layer per slot (the YAML's MultiSlotHead)."""

    metric = "accuracy"

    @property
    def curve_metrics(self):
        return ("accuracy",) + tuple(f"{slot}_accuracy" for slot in self.hparams.slots)

    def compute_forward(self, batch, stage):
        feats, mask = self.layer_features(batch, stage)  # [B, T, D], frame mask [B, T]
        return self.modules.head(feats, mask)  # {slot: logits [B, C_slot]}

    def compute_objectives(self, logits, batch, stage):
        targets = batch.slot_labels.data  # [B, n_slots]
        slots = self.hparams.slots
        if stage != sb.Stage.TRAIN:
            predicted = torch.stack([logits[slot].argmax(dim=-1) for slot in slots], dim=1)
            for i, slot in enumerate(slots):
                self.slot_metrics[slot].append(batch.id, predicted[:, i].tolist(), targets[:, i].tolist())
            self.intent_metric.append(batch.id, [str(p) for p in predicted.tolist()], [str(t) for t in targets.tolist()])
        return sum(self.hparams.compute_cost(logits[slot], targets[:, i]) for i, slot in enumerate(slots))

    def prediction_rows(self) -> list:
        """Test rows: errors 1 unless every slot is right, ref_len 1 (sum(errors)/n = 1 - intent accuracy)."""
        return rows_from_classification_stats(self.intent_metric)

    def on_stage_start(self, stage, epoch=None):
        super().on_stage_start(stage, epoch)
        self.intent_metric = self.hparams.accuracy_stats()  # every slot right
        self.slot_metrics = {slot: self.hparams.accuracy_stats() for slot in self.hparams.slots}

    def on_stage_end(self, stage, stage_loss, epoch=None):
        if stage != sb.Stage.TRAIN:
            per_slot = {f"{s}_accuracy": 100.0 * accuracy_of(m) for s, m in self.slot_metrics.items()}
            self.report_stage(stage, stage_loss, accuracy=100.0 * accuracy_of(self.intent_metric), **per_slot)
        super().on_stage_end(stage, stage_loss, epoch)


def dataio_prep(hparams):
    """train/valid/test datasets giving `sig` (16 kHz audio, length policy applied) and `slot_labels`
    ([n_slots] class indices, one CategoricalEncoder per slot fitted on train: label_encoder_<slot>.txt)."""
    slots = list(hparams["slots"])
    datasets = split_datasets(hparams, stratify_key=lambda row: "|".join(row[slot] for slot in slots))
    encoders = {slot: fit_label_encoder(hparams["train_csv"], slot, [hparams["valid_csv"], hparams["test_csv"]],
                                        Path(hparams["output_folder"]) / f"label_encoder_{slot}.txt") for slot in slots}

    @sb.utils.data_pipeline.takes(*slots)
    @sb.utils.data_pipeline.provides("slot_labels")
    def slots_pipeline(*values):
        return torch.LongTensor([encoders[slot].encode_label(v, allow_unk=False) for slot, v in zip(slots, values)])

    sb.dataio.dataset.add_dynamic_item(list(datasets.values()), slots_pipeline)
    sb.dataio.dataset.set_output_keys(list(datasets.values()), ["id", "sig", "slot_labels"])
    return datasets, encoders


def main(argv=None, feature_caches=None) -> dict:
    """Train the three intent-slot classifiers, test its best-dev checkpoint; returns what result.json holds.

    feature_caches: a FeatureCachePool shared with the caller's other runs (a study group), or None.
    """
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)  # HPARAMS.yaml, --device/--precision/..., --key value
    init_ddp_once(run_opts)  # speechbrain ddp_init_group under torchrun (once per process)
    hparams, record = load_hparams(hparams_file, overrides, run_opts, SCHEMA)  # load_hyperpyyaml, extends chain
    prepare_run(hparams)  # run_on_main(the per-dataset preparer); manifests; run-folder stamp
    create_run_folder(hparams, record)  # sb.create_experiment_directory, once the folder is known to be this run's
    datasets, encoders = dataio_prep(hparams)
    head = hparams["head"](slot_sizes={slot: len(encoder) for slot, encoder in encoders.items()})
    ic_brain = IntentClassificationBrain(modules=dict(hparams["modules"], head=head), hparams=hparams,
                                         run_opts=run_opts, checkpointer=hparams["checkpointer"],
                                         feature_caches=feature_caches)
    ic_brain.fit(hparams["epoch_counter"], datasets["train"], datasets["valid"])
    ic_brain.evaluate(datasets["test"])  # the best-dev checkpoint
    return ic_brain.write_result("ic", datasets)


if __name__ == "__main__":
    run_as_script(main)
