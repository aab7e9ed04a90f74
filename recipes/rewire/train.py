#!/usr/bin/env python3
"""Rewire a pre-trained speech encoder with label-free contrastive learning (twin / neutral / mixed).

    cd recipes/rewire && python train.py hparams/twin.yaml [--encoder PATH_OR_HUB_ID] [--train_csv CSV]
    python recipes/rewire/train.py recipes/rewire/hparams/neutral.yaml --number_of_epochs 2
    torchrun --nproc_per_node=2 recipes/rewire/train.py hparams/twin.yaml   # DDP

Writes <output_folder>/encoder/ (save_pretrained + hub model card README.md), loss.csv, loss.png,
layer_weights.png, log.txt. GPUs and mixed precision are SpeechBrain run options:
    python recipes/rewire/train.py recipes/rewire/hparams/paper.yaml --device cuda:0 --precision bf16

Run from an installed checkout (`pip install -e .`) or with PYTHONPATH set to the repository root.
"""
import sys

import speechbrain as sb
from speechbrain.utils.distributed import run_on_main

from rewire_lib.rewiring.brain import RewireBrain, build_rewire_dataset, finish, make_train_loader_kwargs, presynthesise
from rewire_lib.training.recipe import load_recipe

SCHEMA = {
    "encoder": str, "train_csv": str, "output_folder": str, "number_of_epochs": int, "batch_size": int,
    "seed": int, "view": str, "lr": float, "weight_decay": float, "temperature": float,
    "dropout": bool, "sorting": str, "log_every_steps": int, "max_nonfinite_in_a_row": int,
    "encoder_layerdrop": (float, type(None)), "encoder_spec_augment": (bool, type(None)), "freeze_cnn": bool,
    "gradient_checkpointing": bool,
}


def main(argv=None, brain_class=RewireBrain):
    argv = sys.argv[1:] if argv is None else list(argv)
    hparams, run_opts, hparams_file, overrides = load_recipe(argv, SCHEMA)
    builder = hparams["pair_builder"]
    run_on_main(presynthesise, args=[builder, hparams["train_csv"], hparams.get("tts_workers", 2)])
    train_set = build_rewire_dataset(hparams["train_csv"], builder, hparams["output_folder"],
                                     data_root=hparams.get("data_root"), sorting=hparams["sorting"],
                                     max_duration=hparams.get("max_duration"))
    loader_kwargs = make_train_loader_kwargs(train_set, hparams)
    brain = brain_class(
        modules={"encoder": hparams["encoder_model"], "featurizer": hparams["featurizer"]},
        opt_class=hparams["opt_class"], hparams=hparams, run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    brain.fit(hparams["epoch_counter"], train_set, train_loader_kwargs=loader_kwargs)
    folder = finish(brain, hparams, train_set=train_set, argv=argv)
    if sb.utils.distributed.if_main_process():
        print(f"Rewired encoder written to {folder}")
    return folder


if __name__ == "__main__":
    main()
