#!/usr/bin/env python3
"""Phoneme recognition (SUPERB PR): the phoneme sequence of an utterance.

A linear layer (optionally after a projection) over the learnable weighted sum of a frozen speech
encoder's layers (SUPERB protocol), trained with CTC; dev/test hypotheses by greedy CTC decoding;
result.json reports the test PER (%) of the checkpoint with the best dev PER, and per_test.txt the
alignment of every test utterance.

Data: manifests `ID,duration,wav,phn` (phonemes separated by spaces). Default: the synthetic corpus
(data/synth/asr) made by `python data_prep/prepare_all.py`. LibriSpeech (train-clean-100 / dev-clean
/ test-clean, phonemes by g2p) as SUPERB: hparams/librispeech.yaml with `--corpus_folder`.

Run, from the repository root or from this folder:
    python recipes/pr/train.py recipes/pr/hparams/baseline.yaml
    cd recipes/pr && python train.py hparams/rewired.yaml --train_fraction 0.1
    python recipes/pr/train.py recipes/pr/hparams/librispeech.yaml --corpus_folder /corpora/LibriSpeech
    torchrun --nproc_per_node=2 recipes/pr/train.py recipes/pr/hparams/baseline.yaml   # DDP

Keys people change (`--key value`): encoder, data_folder or folds_dir (and folds: speaker folds, one run
each, e.g. data/fsdd/connected/folds), train_fraction, seed, lr, batch_size,
max_steps, eval_every_steps, blank_penalty / blank_penalty_grid (decoding), freeze_encoder, feature_cache;
the head's sizes in the YAML.
"""
import sys

import speechbrain as sb

from rewire_lib.downstream.ctc import CTCBrain, add_ctc_pipeline
from rewire_lib.downstream.data import split_datasets
from rewire_lib.downstream.run import SCHEMA, prepare_run, run_as_script, run_folds
from rewire_lib.training.recipe import create_run_folder, init_ddp_once, load_hparams


class PhonemeRecognitionBrain(CTCBrain):
    """compute_forward (CTCBrain): weighted layers -> linear -> CTC log-probabilities."""

    metric = "per"
    curve_metrics = ("per",)

    def compute_objectives(self, predictions, batch, stage):
        loss, hypotheses = self.ctc_loss_and_hypotheses(predictions, batch, stage)  # phoneme lists on dev/test
        if hypotheses is not None:
            self.per_metric.append(batch.id, hypotheses, batch.ref_tokens)
        return loss

    def on_stage_start(self, stage, epoch=None):
        super().on_stage_start(stage, epoch)
        self.per_metric = self.hparams.per_stats()

    def on_stage_end(self, stage, stage_loss, epoch=None):
        if stage != sb.Stage.TRAIN:
            self.report_stage(stage, stage_loss, per=self.per_metric.summarize("error_rate"))
        if stage == sb.Stage.TEST:
            self.write_error_details(self.per_metric, "per")
        super().on_stage_end(stage, stage_loss, epoch)


def dataio_prep(hparams):
    """train/valid/test datasets giving `sig` (16 kHz audio, length policy applied), `ref_tokens`
    (the phonemes of `phn`) and `tokens` (their indices in the tokenizer fitted on train)."""
    datasets = split_datasets(hparams)
    tokenizer = add_ctc_pipeline(datasets, hparams, column="phn", tokens_of=lambda text: text.split())
    sb.dataio.dataset.set_output_keys(list(datasets.values()), ["id", "sig", "ref_tokens", "tokens"])
    return datasets, tokenizer


def main(argv=None, feature_caches=None) -> dict:
    """Train the phoneme recogniser (CTC over phonemes), test its best-dev checkpoint; returns what result.json holds.

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
    datasets, tokenizer = dataio_prep(hparams)
    modules = dict(hparams["modules"], head=hparams["head"](vocab_size=len(tokenizer)))
    brain = PhonemeRecognitionBrain(modules=modules, hparams=hparams, run_opts=run_opts,
                                    checkpointer=hparams["checkpointer"], feature_caches=feature_caches)
    brain.tokenizer = tokenizer
    brain.fit(hparams["epoch_counter"], datasets["train"], datasets["valid"])
    brain.evaluate(datasets["test"])  # the best-dev checkpoint
    return brain.write_result("pr", datasets)


if __name__ == "__main__":
    run_as_script(main)
