"""The per-dataset hparams (recipes/<task>/hparams/<corpus>.yaml) on tiny trees laid out as each corpus
is published: the YAML loads, its preparer writes the manifests from --corpus_folder, and two
optimiser steps of the recipe run with a tiny random encoder. The SUPERB settings each file carries
(learning rate, steps, batch) are checked against ../shared/docs/tasks.md's table."""
import json

import pytest
import ruamel.yaml

from downstream_helpers import run_task
from rewire_lib.files.paths import REPO_ROOT
from tests.test_finetune import fast_env_log  # noqa: F401 (autouse: no pip freeze / git per run)
from test_data_corpora import _audio


def _lines(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def librispeech_tree(src):
    """<split>/<speaker>/<chapter>/<id>.flac and one <speaker>-<chapter>.trans.txt per chapter."""
    texts = ("HELLO WORLD", "GOOD DAY", "HELLO DAY", "GOOD WORLD")
    for split, spk in (("train-clean-100", "19"), ("dev-clean", "84"), ("test-clean", "121")):
        ids = [f"{spk}-198-{u:04d}" for u in range(len(texts))]
        for u, uid in enumerate(ids):
            _audio(src / split / spk / "198" / f"{uid}.flac", fmt="FLAC", seed=u)
        _lines(src / split / spk / "198" / f"{spk}-198.trans.txt", [f"{i} {t}" for i, t in zip(ids, texts)])


def speech_commands_v1_tree(src):
    """<word>/<speaker>_nohash_0.wav, validation_list.txt, testing_list.txt, _background_noise_/."""
    speakers = ("0a7c2a8d", "1b4c9b89", "2c5d0c90", "3d6e1d91")  # the last two: dev, test
    files = [f"{w}/{spk}_nohash_0.wav" for w in ("yes", "no", "bed", "marvin") for spk in speakers]
    for i, rel in enumerate(files):
        _audio(src / rel, 1.0, seed=i % 4)
    _audio(src / "_background_noise_" / "white_noise.wav", 10.0)
    _lines(src / "validation_list.txt", [f for f in files if speakers[2] in f])
    _lines(src / "testing_list.txt", [f for f in files if speakers[3] in f])


def fluent_speech_commands_tree(src):
    """data/<split>_data.csv (`,path,speakerId,transcription,action,object,location`) and the wavs they name."""
    for split, n in (("train", 6), ("valid", 2), ("test", 2)):
        rels = [f"wavs/speakers/spk0/{split}-{i}.wav" for i in range(n)]
        for i, rel in enumerate(rels):
            _audio(src / rel, seed=i)
        _lines(src / "data" / f"{split}_data.csv", [",path,speakerId,transcription,action,object,location"] + [
            f"{i},{rel},spk0,Lights,{('deactivate', 'activate')[i % 2]},lights,kitchen" for i, rel in enumerate(rels)])


def voxceleb1_tree(src):
    """wav/<speaker>/<video>/<n>.wav and iden_split.txt (1/2/3 = train/dev/test)."""
    entries = [(split, f"{spk}/vid/{k:05d}.wav") for spk in ("id10001", "id10002")
               for k, split in enumerate((1, 1, 1, 2, 3))]
    for k, (_, rel) in enumerate(entries):
        _audio(src / "wav" / rel, seed=k)
    _lines(src / "iden_split.txt", [f"{split} {rel}" for split, rel in entries])


def iemocap_tree(src):
    """Session<k>/sentences/wav/<dialog>/<utt>.wav and Session<k>/dialog/EmoEvaluation/<dialog>.txt."""
    emotions = ("neu", "hap", "exc", "sad", "ang", "neu", "sad", "ang")
    for k in range(1, 6):
        dialog = f"Ses0{k}F_impro01"
        utts = [f"{dialog}_{'FM'[i % 2]}{i:03d}" for i in range(len(emotions))]
        for i, utt in enumerate(utts):
            _audio(src / f"Session{k}" / "sentences" / "wav" / dialog / f"{utt}.wav", seed=i)
        _lines(src / f"Session{k}" / "dialog" / "EmoEvaluation" / f"{dialog}.txt",
               ["% header", ""] + [f"[1.0 - 2.0]\t{u}\t{e}\t[2.5, 2.5, 2.5]" for u, e in zip(utts, emotions)])


# task, hparams file, tree, metric, SUPERB lr, max_steps, extra options
CASES = [
    ("asr", "librispeech", librispeech_tree, "wer", 1e-4, 200000, ["--head", "{proj_dim: 16, hidden_size: 16}"]),
    ("pr", "librispeech", librispeech_tree, "per", 1e-2, 100000, []),
    ("ks", "speech_commands_v1", speech_commands_v1_tree, "accuracy", 1e-4, 200000, []),
    ("ic", "fluent_speech_commands", fluent_speech_commands_tree, "accuracy", 1e-4, 200000, []),
    ("sid", "voxceleb1", voxceleb1_tree, "accuracy", 1e-4, 200000, []),
    ("er", "iemocap", iemocap_tree, "accuracy", 1e-4, 30000, ["--folds", "[fold1]"]),
]


@pytest.mark.parametrize("task, name, tree, metric, lr, steps, extra", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_per_dataset_hparams_prepare_and_train(task, name, tree, metric, lr, steps, extra, tmp_path, tiny_encoder_dir):
    hparams_file = REPO_ROOT / "recipes" / task / "hparams" / f"{name}.yaml"
    own = ruamel.yaml.YAML().load(hparams_file.read_text())
    assert own["extends"] == "baseline.yaml" and own["max_steps"] == steps and own["prepare"].tag.value.startswith("!name:data_prep.")
    corpus, prepared, out = tmp_path / "corpus", tmp_path / "prepared", tmp_path / "out"
    tree(corpus)
    argv = [str(hparams_file), "--noprogressbar", "--corpus_folder", str(corpus), "--data_folder", str(prepared),
            "--encoder", str(tiny_encoder_dir), "--output_folder", str(out), "--max_steps", "2", "--batch_size", "2",
            "--eval_every_steps", "2", "--feature_cache", "memory", "--grad_accumulation_factor", "1",
            "--eval_batch_size", "4", *extra]
    result = run_task(task, argv)
    assert (prepared / "prepared.json").is_file()  # the preparer ran (and marks its work done)
    assert result["steps"] == 2 and result["metric"] == metric and result["settings"]["lr"] == pytest.approx(lr)
    assert json.loads((out / "result.json").read_text())["task"] == task
    if task == "er":
        assert result["folds"] == ["fold1"] and (out / "fold1" / "result.json").is_file()
    else:
        assert result["num_train"] > 0 and result["num_test"] > 0
