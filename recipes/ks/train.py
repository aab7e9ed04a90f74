#!/usr/bin/env python3
"""Keyword spotting (SUPERB KS): which word of a small vocabulary an utterance is.

A linear classifier over the mean-pooled, learnable weighted sum of a frozen speech encoder's layers
(SUPERB protocol), trained with cross-entropy; result.json reports the test accuracy (%) of the
checkpoint with the best dev accuracy.

Data: manifests `ID,duration,wav,label` (train/dev/test.csv in `data_folder`). Default: the shared
Speech Commands set made by `python data_prep/prepare_all.py`. Speech Commands v0.01 as SUPERB runs
it (12 classes, official lists): hparams/speech_commands_v1.yaml, which prepares the manifests from
`--corpus_folder` first.

Run, from the repository root or from this folder:
    python recipes/ks/train.py recipes/ks/hparams/baseline.yaml
    cd recipes/ks && python train.py hparams/rewired.yaml --data_folder ../../data/fsdd/digits
    python recipes/ks/train.py recipes/ks/hparams/speech_commands_v1.yaml --corpus_folder /corpora/speech_commands_v0.01
    torchrun --nproc_per_node=2 recipes/ks/train.py recipes/ks/hparams/baseline.yaml          # DDP
    python recipes/ks/train.py recipes/ks/hparams/baseline.yaml --device cuda --precision bf16  # GPU

Keys people change (`--key value`): encoder, data_folder, train_fraction, seed, lr, batch_size,
max_steps, eval_every_steps, freeze_encoder (false fine-tunes it), feature_cache; recipes/README.md
lists them all. Outputs in output_folder: result.json, curve.csv/png, layer_weights.png, save/.
"""

import speechbrain as sb

from rewire_lib.downstream.classification import UtteranceClassifierBrain, add_label_pipeline
from rewire_lib.downstream.data import split_datasets
from rewire_lib.downstream.run import SCHEMA, prepare_run, run_as_script
from rewire_lib.training.recipe import create_run_folder, init_ddp_once, load_hparams


class KeywordSpottingBrain(UtteranceClassifierBrain):
    """Utterance classification, as SID and ER do it (rewire_lib/downstream/classification.py):
    compute_forward = weighted layers -> mean over valid frames -> linear (the YAML's `head`);
    compute_objectives = `compute_cost` (cross-entropy) and, on dev/test, `accuracy_stats`;
    on_stage_end reports the accuracy that picks the best checkpoint."""


def dataio_prep(hparams):
    """train/valid/test datasets giving `sig` (16 kHz audio, length policy applied) and `label_encoded`;
    the training subset (train_fraction) keeps every keyword."""
    datasets = split_datasets(hparams, stratify_key=lambda row: row[hparams["label_column"]])
    label_encoder = add_label_pipeline(datasets, hparams)  # `label_encoded`; the splits give id, sig, label_encoded
    return datasets, label_encoder


def main(argv=None, feature_caches=None) -> dict:
    """Train the keyword classifier, test its best-dev checkpoint; returns what result.json holds.

    feature_caches: a FeatureCachePool shared with the caller's other runs (a study group), or None.
    """
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)  # HPARAMS.yaml, --device/--precision/..., --key value
    init_ddp_once(run_opts)  # speechbrain ddp_init_group under torchrun (once per process)
    hparams, record = load_hparams(hparams_file, overrides, run_opts, SCHEMA)  # load_hyperpyyaml, extends chain
    prepare_run(hparams)  # run_on_main(the per-dataset preparer); manifests; run-folder stamp
    create_run_folder(hparams, record)  # sb.create_experiment_directory, once the folder is known to be this run's
    datasets, label_encoder = dataio_prep(hparams)
    head = hparams["head"](num_classes=len(label_encoder))  # sized by the training manifest's keywords
    brain = KeywordSpottingBrain(modules=dict(hparams["modules"], head=head), hparams=hparams, run_opts=run_opts,
                                 checkpointer=hparams["checkpointer"], feature_caches=feature_caches)
    brain.label_encoder = label_encoder  # test_predictions.csv names the keywords
    brain.fit(hparams["epoch_counter"], datasets["train"], datasets["valid"])
    brain.evaluate(datasets["test"])  # the best-dev checkpoint
    return brain.write_result("ks", datasets)


if __name__ == "__main__":
    run_as_script(main)
