#!/usr/bin/env python3
"""Emotion recognition (SUPERB ER): the emotion an utterance is spoken with.

A linear classifier over the mean-pooled, learnable weighted sum of a frozen speech encoder's layers
(SUPERB protocol), trained with cross-entropy; result.json reports the test accuracy (%) of the
checkpoint with the best dev accuracy. With `folds_dir` (IEMOCAP, leave-one-session-out), one run per
fold in <output_folder>/fold<k>/ and their mean at the top (result.json, curve.csv, plots).

Data: manifests `ID,duration,wav,label` (label: the emotion). Default: the synthetic corpus
(data/synth/er) made by `python data_prep/prepare_all.py`. IEMOCAP as SUPERB (neutral, happy with
excited, sad, angry; five folds): hparams/iemocap.yaml with `--corpus_folder`, which runs
data_prep/iemocap.py first; or `--folds_dir` on folds prepared before.

Run, from the repository root or from this folder:
    python recipes/er/train.py recipes/er/hparams/baseline.yaml
    cd recipes/er && python train.py hparams/rewired.yaml --folds_dir ../../data/iemocap
    python recipes/er/train.py recipes/er/hparams/iemocap.yaml --corpus_folder /corpora/IEMOCAP_full_release
    torchrun --nproc_per_node=2 recipes/er/train.py recipes/er/hparams/baseline.yaml   # DDP

Keys people change (`--key value`): encoder, data_folder or folds_dir (and folds), train_fraction, seed,
lr, batch_size, max_steps, eval_every_steps, freeze_encoder, feature_cache.
"""
import sys


import speechbrain as sb

from rewire_lib.downstream.classification import UtteranceClassifierBrain, add_label_pipeline
from rewire_lib.downstream.data import split_datasets
from rewire_lib.downstream.run import SCHEMA, prepare_run, run_as_script, run_folds
from rewire_lib.training.recipe import create_run_folder, init_ddp_once, load_hparams


class EmotionRecognitionBrain(UtteranceClassifierBrain):
    """Utterance classification, as KS and SID do it (rewire_lib/downstream/classification.py):
    weighted layers -> mean over valid frames -> linear; cross-entropy; accuracy on dev/test."""


def dataio_prep(hparams):
    """train/valid/test datasets giving `sig` (16 kHz audio, length policy applied) and `label_encoded`
    (the emotion); the training subset (train_fraction) keeps every emotion."""
    datasets = split_datasets(hparams, stratify_key=lambda row: row[hparams["label_column"]])
    emotions = add_label_pipeline(datasets, hparams)  # `label_encoded`; the splits give id, sig, label_encoded
    return datasets, emotions


def main(argv=None, feature_caches=None) -> dict:
    """Train and test (every fold with folds_dir); returns what result.json holds.

    feature_caches: a FeatureCachePool shared with the caller's other runs (a study group), or None.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)  # HPARAMS.yaml, --device/--precision/..., --key value
    init_ddp_once(run_opts)  # speechbrain ddp_init_group under torchrun (once per process)
    hparams, record = load_hparams(hparams_file, overrides, run_opts, SCHEMA)  # load_hyperpyyaml, extends chain
    prepare_run(hparams)  # run_on_main(the per-dataset preparer); manifests; run-folder stamp
    create_run_folder(hparams, record)  # sb.create_experiment_directory, once the folder is known to be this run's
    if hparams["folds_dir"]:  # each fold is this same recipe on fold<k>/{train,dev,test}.csv
        return run_folds(hparams, argv, main, feature_caches)
    datasets, emotions = dataio_prep(hparams)
    modules = dict(hparams["modules"], head=hparams["head"](num_classes=len(emotions)))  # one output per emotion
    er_brain = EmotionRecognitionBrain(modules, hparams=hparams, run_opts=run_opts, checkpointer=hparams["checkpointer"],
                                       feature_caches=feature_caches)
    er_brain.label_encoder = emotions  # test_predictions.csv names the emotions
    er_brain.fit(hparams["epoch_counter"], datasets["train"], datasets["valid"])
    er_brain.evaluate(datasets["test"])  # the best-dev checkpoint
    return er_brain.write_result("er", datasets)


if __name__ == "__main__":
    run_as_script(main)
