#!/usr/bin/env python3
"""Speech recognition (SUPERB ASR): the words of an utterance, spelled character by character.

A projection and a 2-layer BiLSTM over the learnable weighted sum of a frozen speech encoder's layers
(SUPERB protocol), trained with CTC over characters; dev/test hypotheses by greedy CTC decoding (no
language model); result.json reports the test WER and CER (%) of the checkpoint with the best dev WER,
and wer_test.txt the alignment of every test utterance. `token_unit: word` makes the CTC targets whole
words instead (a closed vocabulary: hparams/fsdd_connected.yaml, connected digits, with a convolution head).

Data: manifests `ID,duration,wav,wrd` (the transcript; upper-cased, spaces collapsed). Default: the
synthetic corpus (data/synth/asr) made by `python data_prep/prepare_all.py`. LibriSpeech
(train-clean-100 / dev-clean / test-clean) as SUPERB: hparams/librispeech.yaml with `--corpus_folder`.

Run, from the repository root or from this folder:
    python recipes/asr/train.py recipes/asr/hparams/rewired.yaml
    cd recipes/asr && python train.py hparams/baseline.yaml --encoder facebook/wav2vec2-base
    python recipes/asr/train.py recipes/asr/hparams/librispeech.yaml --corpus_folder /corpora/LibriSpeech --device cuda --precision bf16
    torchrun --nproc_per_node=2 recipes/asr/train.py recipes/asr/hparams/baseline.yaml   # DDP

Keys people change (`--key value`): encoder, data_folder or folds_dir (and folds: speaker folds, one run
each, e.g. data/fsdd/connected/folds), train_fraction, seed, lr, batch_size,
max_steps, eval_every_steps, token_unit, blank_penalty / blank_penalty_grid (decoding), specaugment,
freeze_encoder (false fine-tunes: finetune_top_layers, encoder_lr, encoder_warmup_steps, freeze_cnn),
feature_cache; the head's sizes in the YAML.
"""
import sys

import speechbrain as sb

from rewire_lib.downstream.ctc import CTCBrain, add_ctc_pipeline
from rewire_lib.downstream.data import split_datasets
from rewire_lib.downstream.metrics import normalize_text
from rewire_lib.downstream.run import SCHEMA, prepare_run, run_as_script, run_folds
from rewire_lib.training.recipe import create_run_folder, init_ddp_once, load_hparams


class SpeechRecognitionBrain(CTCBrain):
    """compute_forward (CTCBrain): weighted layers -> projection -> BiLSTM -> CTC log-probabilities over tokens."""

    metric = "wer"
    curve_metrics = ("wer", "cer")

    def compute_objectives(self, predictions, batch, stage):
        loss, hypotheses = self.ctc_loss_and_hypotheses(predictions, batch, stage)  # token lists on dev/test
        if hypotheses is not None:
            words = [tokens_to_words(tokens, self.hparams.token_unit) for tokens in hypotheses]
            targets = [tokens_to_words(tokens, self.hparams.token_unit) for tokens in batch.ref_tokens]
            self.wer_metric.append(batch.id, words, targets)
            self.cer_metric.append(batch.id, words, targets)
        return loss

    def on_stage_start(self, stage, epoch=None):
        super().on_stage_start(stage, epoch)
        self.wer_metric = self.hparams.wer_stats()
        self.cer_metric = self.hparams.cer_stats()

    def on_stage_end(self, stage, stage_loss, epoch=None):
        if stage != sb.Stage.TRAIN:
            self.report_stage(stage, stage_loss, wer=self.wer_metric.summarize("error_rate"),
                              cer=self.cer_metric.summarize("error_rate"))
        if stage == sb.Stage.TEST:
            self.write_error_details(self.wer_metric, "wer")
        super().on_stage_end(stage, stage_loss, epoch)


TOKEN_UNITS = ("char", "word")


def text_to_tokens(text: str, unit: str) -> list:
    """The CTC targets of a transcript: its characters (spaces included: they separate the words) or its words."""
    text = normalize_text(text)
    return list(text) if unit == "char" else text.split()


def tokens_to_words(tokens, unit: str) -> list:
    """Words of a token sequence (characters are joined and split at spaces)."""
    return "".join(tokens).split() if unit == "char" else list(tokens)


def dataio_prep(hparams):
    """train/valid/test datasets giving `sig` (16 kHz audio, length policy applied), `ref_tokens`
    (the `token_unit`s of the normalised `wrd`) and `tokens` (their indices in the tokenizer fitted on train)."""
    unit = hparams["token_unit"]
    if unit not in TOKEN_UNITS:
        raise ValueError(f"token_unit: expected one of {TOKEN_UNITS}, got {unit!r}")
    datasets = split_datasets(hparams)
    tokenizer = add_ctc_pipeline(datasets, hparams, column="wrd", tokens_of=lambda text: text_to_tokens(text, unit))
    sb.dataio.dataset.set_output_keys(list(datasets.values()), ["id", "sig", "ref_tokens", "tokens"])
    return datasets, tokenizer


def main(argv=None, feature_caches=None) -> dict:
    """Train the ASR head (CTC over characters), test its best-dev checkpoint; returns what result.json holds.

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
    head = hparams["head"](vocab_size=len(tokenizer))  # output size: the tokens of the training transcripts
    asr_brain = SpeechRecognitionBrain(modules=dict(hparams["modules"], head=head), hparams=hparams,
                                       run_opts=run_opts, checkpointer=hparams["checkpointer"],
                                       feature_caches=feature_caches)
    asr_brain.tokenizer = tokenizer
    asr_brain.fit(hparams["epoch_counter"], datasets["train"], datasets["valid"])
    asr_brain.evaluate(datasets["test"])  # the best-dev checkpoint
    return asr_brain.write_result("asr", datasets)


if __name__ == "__main__":
    run_as_script(main)
