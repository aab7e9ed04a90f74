#!/usr/bin/env python3
"""Speaker identification (SUPERB SID): which of the training speakers is talking.

A linear classifier over the mean-pooled, learnable weighted sum of a frozen speech encoder's layers
(SUPERB protocol), trained with cross-entropy, optionally on a random window of each training
utterance (`train_crop_seconds`; SUPERB: 8 s); result.json reports the test accuracy (%) of the
checkpoint with the best dev accuracy.

Data: manifests `ID,duration,wav,label` (label: the speaker). Default: FSDD speakers (data/fsdd/speakers,
split by take) made by `python data_prep/prepare_all.py`. VoxCeleb1 identification as SUPERB
(iden_split.txt): hparams/voxceleb1.yaml, which prepares the manifests from `--corpus_folder` first.

Run, from the repository root or from this folder:
    python recipes/sid/train.py recipes/sid/hparams/baseline.yaml
    cd recipes/sid && python train.py hparams/rewired.yaml --seed 1
    python recipes/sid/train.py recipes/sid/hparams/voxceleb1.yaml --corpus_folder /corpora/voxceleb1 --device cuda
    torchrun --nproc_per_node=2 recipes/sid/train.py recipes/sid/hparams/baseline.yaml   # DDP

Keys people change (`--key value`): encoder, data_folder, train_fraction, seed, lr, batch_size,
max_steps, eval_every_steps, train_crop_seconds, max_duration, freeze_encoder, feature_cache.
"""
import speechbrain as sb
import torch

from rewire_lib.downstream.classification import UtteranceClassifierBrain, add_label_pipeline, random_frame_window
from rewire_lib.downstream.data import split_datasets
from rewire_lib.downstream.run import SCHEMA, prepare_run, run_as_script
from rewire_lib.training.recipe import create_run_folder, init_ddp_once, load_hparams


class SpeakerIdentificationBrain(UtteranceClassifierBrain):
    """Utterance classification as KS and ER do it (rewire_lib/downstream/classification.py:
    compute_objectives = cross-entropy, accuracy on dev/test), with SUPERB's training crops."""

    def frame_level(self, stage) -> bool:
        """A training crop picks frames: the crop's stage reads frames, not pooled states."""
        return super().frame_level(stage) or (stage == sb.Stage.TRAIN and bool(self.hparams.train_crop_seconds))

    def compute_forward(self, batch, stage):
        feats, mask = self.layer_features(batch, stage)  # [B, T, D] weighted layers, frame mask [B, T]
        if stage == sb.Stage.TRAIN and self.hparams.train_crop_seconds:
            frames_per_second = int(self.encoder_module.frame_lengths(torch.tensor([16000]))[0])
            mask = random_frame_window(mask, int(self.hparams.train_crop_seconds * frames_per_second))
        return self.modules.head(feats, mask)  # speaker logits [B, n_speakers]


def dataio_prep(hparams):
    """train/valid/test datasets giving `sig` (16 kHz audio, length policy applied) and `label_encoded`
    (the speaker); the training subset (train_fraction) keeps every speaker."""
    datasets = split_datasets(hparams, stratify_key=lambda row: row[hparams["label_column"]])
    speakers = add_label_pipeline(datasets, hparams)  # `label_encoded`; the splits give id, sig, label_encoded
    return datasets, speakers


def main(argv=None, feature_caches=None) -> dict:
    """Train the speaker classifier, test its best-dev checkpoint; returns what result.json holds.

    feature_caches: a FeatureCachePool shared with the caller's other runs (a study group), or None.
    """
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)  # HPARAMS.yaml, --device/--precision/..., --key value
    init_ddp_once(run_opts)  # speechbrain ddp_init_group under torchrun (once per process)
    hparams, record = load_hparams(hparams_file, overrides, run_opts, SCHEMA)  # load_hyperpyyaml, extends chain
    prepare_run(hparams)  # run_on_main(the per-dataset preparer); manifests; run-folder stamp
    create_run_folder(hparams, record)  # sb.create_experiment_directory, once the folder is known to be this run's
    datasets, speakers = dataio_prep(hparams)
    brain = SpeakerIdentificationBrain(modules=dict(hparams["modules"], head=hparams["head"](num_classes=len(speakers))),
                                       hparams=hparams, run_opts=run_opts, checkpointer=hparams["checkpointer"],
                                       feature_caches=feature_caches)
    brain.label_encoder = speakers  # test_predictions.csv names the speakers
    brain.fit(hparams["epoch_counter"], datasets["train"], datasets["valid"])
    brain.evaluate(datasets["test"])  # the best-dev checkpoint
    return brain.write_result("sid", datasets)


if __name__ == "__main__":
    run_as_script(main)
