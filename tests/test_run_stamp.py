"""A run folder keeps a stamp of what made it (rewire_lib.training.run_stamp): same stamp resumes, a changed run
over checkpoints/results stops with a message naming the difference or moves to a fresh sibling folder."""
import json
import logging
import os
import shutil

import pytest
import yaml

from rewire_lib.training.run_stamp import (RunFolderMismatch, check_run_folder, manifest_fingerprint,
                                  settings_fingerprint)
from tests.test_finetune import fast_env_log, ks, run_ks, small_corpus  # noqa: F401 (fixtures)

STAMP = {"encoder_fingerprint": "a" * 40, "manifests": "b" * 64, "lr": 0.002, "batch_size": 32}


def _trained(folder):
    """A folder as a run leaves it: a checkpoint under save/."""
    (folder / "save" / "CKPT+1").mkdir(parents=True)
    return folder


# ---------------------------------------------------------------------- fingerprints
def test_manifest_fingerprint_follows_content_not_mtime_or_name(tmp_path):
    a = tmp_path / "train.csv"
    a.write_text("ID,duration,wav\nu1,1.0,a.wav\n")
    first = manifest_fingerprint(a)
    os.utime(a, (1, 1))
    assert manifest_fingerprint(a) == first
    copy = tmp_path / "elsewhere.csv"
    copy.write_bytes(a.read_bytes())
    assert manifest_fingerprint(copy) == first
    a.write_text("ID,duration,wav\nu1,1.0,b.wav\n")
    assert manifest_fingerprint(a) != first
    assert len(first) == 64 and int(first, 16) >= 0


def test_manifest_fingerprint_of_several_files_keeps_their_boundaries(tmp_path):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text("xy")
    b.write_text("z")
    joined = manifest_fingerprint(a, b)
    a.write_text("x")
    b.write_text("yz")
    assert manifest_fingerprint(a, b) != joined
    assert manifest_fingerprint(b, a) != manifest_fingerprint(a, b)


def test_missing_manifest_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        manifest_fingerprint(tmp_path / "nope.csv")


def test_settings_fingerprint_ignores_key_order_and_spelling_of_the_same_value(tmp_path):
    assert settings_fingerprint({"a": 1, "b": (1, 2)}) == settings_fingerprint({"b": [1, 2], "a": 1})
    assert settings_fingerprint({"p": tmp_path}) == settings_fingerprint({"p": str(tmp_path)})
    assert settings_fingerprint({"lr": 0.002}) != settings_fingerprint({"lr": 0.5})
    assert settings_fingerprint({"lr": 0.002}) != settings_fingerprint({"lr": 0.002, "seed": 0})


# ---------------------------------------------------------------------- check_run_folder
def test_fresh_folder_is_stamped(tmp_path):
    folder = tmp_path / "run"
    assert check_run_folder(folder, STAMP) == folder
    saved = json.loads((folder / "run_stamp.json").read_text())
    assert saved["stamp"] == STAMP
    assert saved["fingerprint"] == settings_fingerprint(STAMP)
    assert not list(folder.glob(".*tmp*")), "the crash-safe writer left a temporary file"


def test_same_stamp_resumes_the_folder(tmp_path):
    folder = _trained(tmp_path / "run")
    check_run_folder(folder, STAMP)
    before = (folder / "run_stamp.json").stat().st_mtime_ns
    assert check_run_folder(folder, dict(reversed(list(STAMP.items())))) == folder
    assert (folder / "run_stamp.json").stat().st_mtime_ns == before


@pytest.mark.parametrize("evidence", ["checkpoint", "result"])
def test_changed_run_over_a_trained_folder_is_an_error_naming_the_difference(tmp_path, evidence):
    folder = tmp_path / "run"
    check_run_folder(folder, STAMP)
    if evidence == "checkpoint":
        _trained(folder)
    else:
        (folder / "result.json").write_text("{}")
    with pytest.raises(RunFolderMismatch) as err:
        check_run_folder(folder, dict(STAMP, lr=0.5))
    message = str(err.value)
    assert isinstance(err.value, ValueError)
    assert "\n" not in message
    assert str(folder) in message
    assert "lr 0.002 -> 0.5" in message
    assert "batch_size" not in message and "manifests" not in message  # only the keys that differ
    assert "output_folder" in message and "on_changed_run: new" in message
    assert json.loads((folder / "run_stamp.json").read_text())["stamp"] == STAMP  # the old stamp stays


def test_long_values_are_shortened_and_added_or_removed_keys_named(tmp_path):
    folder = _trained(tmp_path / "run")
    check_run_folder(folder, STAMP)
    new = {k: v for k, v in STAMP.items() if k != "batch_size"}
    new.update(manifests="c" * 64, seed=3)
    with pytest.raises(RunFolderMismatch) as err:
        check_run_folder(folder, new)
    message = str(err.value)
    assert f"manifests {'b' * 57}... -> {'c' * 57}..." in message
    assert "b" * 58 not in message
    assert "batch_size 32 -> <absent>" in message
    assert "seed <absent> -> 3" in message


def test_changed_run_with_new_goes_to_a_stamped_sibling_and_resumes_there(tmp_path, caplog):
    folder = _trained(tmp_path / "run")
    check_run_folder(folder, STAMP)
    changed = dict(STAMP, lr=0.5)
    with caplog.at_level(logging.INFO, logger="rewire_lib.training.run_stamp"):
        sibling = check_run_folder(folder, changed, on_mismatch="new")
    assert sibling == tmp_path / f"run-{settings_fingerprint(changed)[:8]}"
    assert str(sibling) in caplog.text and "lr" in caplog.text
    assert json.loads((sibling / "run_stamp.json").read_text())["stamp"] == changed
    assert json.loads((folder / "run_stamp.json").read_text())["stamp"] == STAMP  # old run untouched
    _trained(sibling)
    assert check_run_folder(folder, changed, on_mismatch="new") == sibling  # the same changed command resumes
    assert check_run_folder(folder, STAMP, on_mismatch="new") == folder  # and the original one still does


def test_stamped_folder_with_nothing_trained_is_restamped(tmp_path):
    folder = tmp_path / "run"
    check_run_folder(folder, STAMP)
    (folder / "save").mkdir()  # an empty save/ is not a run
    assert check_run_folder(folder, dict(STAMP, lr=0.5)) == folder
    assert json.loads((folder / "run_stamp.json").read_text())["stamp"]["lr"] == 0.5


def test_trained_folder_without_stamp_is_adopted(tmp_path):
    """Folders from before stamps existed are stamped with the current run (nothing to compare with)."""
    folder = _trained(tmp_path / "run")
    assert check_run_folder(folder, STAMP) == folder
    assert json.loads((folder / "run_stamp.json").read_text())["stamp"] == STAMP


def test_unreadable_stamp_over_a_run_counts_as_changed(tmp_path):
    folder = _trained(tmp_path / "run")
    (folder / "run_stamp.json").write_text("{not json")
    with pytest.raises(RunFolderMismatch, match="lr <absent> -> 0.002"):
        check_run_folder(folder, STAMP)


def test_unknown_on_mismatch_value_is_refused(tmp_path):
    with pytest.raises(ValueError, match="on_changed_run must be one of"):
        check_run_folder(tmp_path, STAMP, on_mismatch="overwrite")


# ---------------------------------------------------------------------- end to end: the KS recipe
def _ks(ks, encoder, corpus, out, **overrides):
    return run_ks(ks, encoder, corpus, out, **{"max_steps": 2, **overrides})


def _checkpoints(out):
    return sorted((p.name, (p / "CKPT.yaml").stat().st_mtime_ns) for p in (out / "save").iterdir())


def test_recipe_same_command_twice_resumes_without_retraining(ks, tiny_encoder_dir, small_corpus, tmp_path):
    out = tmp_path / "run"
    first = _ks(ks, tiny_encoder_dir, small_corpus, out)
    ckpts, curve = _checkpoints(out), (out / "curve.csv").read_text()
    second = _ks(ks, tiny_encoder_dir, small_corpus, out)
    assert _checkpoints(out) == ckpts, "the second run trained again"
    assert (out / "curve.csv").read_text() == curve
    assert second["test_accuracy"] == first["test_accuracy"] and second["layer_weights"] == first["layer_weights"]
    assert json.loads((out / "run_stamp.json").read_text())["stamp"]["lr"] == first["settings"]["lr"]


def test_recipe_changed_lr_stops_naming_it_and_leaves_the_old_run_alone(ks, tiny_encoder_dir, small_corpus,
                                                                       tmp_path):
    out = tmp_path / "run"
    _ks(ks, tiny_encoder_dir, small_corpus, out)
    result = (out / "result.json").read_text()
    with pytest.raises(RunFolderMismatch) as err:
        _ks(ks, tiny_encoder_dir, small_corpus, out, lr=0.5)
    assert str(out) in str(err.value) and "lr 0.002 -> 0.5" in str(err.value)
    assert (out / "result.json").read_text() == result
    # hyperparams.yaml records the run the folder holds, not the refused command
    record = yaml.safe_load("".join(line for line in (out / "hyperparams.yaml").read_text().splitlines(True)
                                    if line.startswith("lr:")))
    assert record == {"lr": 0.002}, f"{out / 'hyperparams.yaml'} now records the refused command: {record}"
    # a run option that changes results (precision: the measured case of a bf16 run "finishing" with the fp32
    # result) is refused the same way; keys declared harmless (cadence, threads) resume the run
    with pytest.raises(RunFolderMismatch, match="precision fp32 -> bf16"):
        _ks(ks, tiny_encoder_dir, small_corpus, out, precision="bf16")
    ckpts = _checkpoints(out)
    again = _ks(ks, tiny_encoder_dir, small_corpus, out, eval_every_steps=1, num_threads=1, eval_batch_size=3)
    assert _checkpoints(out) == ckpts, "a harmless key started the run again"
    assert again["test_accuracy"] == json.loads(result)["test_accuracy"]


def test_recipe_changed_run_with_new_goes_to_a_fresh_folder(ks, tiny_encoder_dir, small_corpus, tmp_path):
    out = tmp_path / "run"
    old = _ks(ks, tiny_encoder_dir, small_corpus, out)
    old_text = (out / "result.json").read_text()
    new = _ks(ks, tiny_encoder_dir, small_corpus, out, lr=0.5, on_changed_run="new")
    siblings = [p for p in tmp_path.iterdir() if p.name.startswith("run-")]
    assert len(siblings) == 1 and len(siblings[0].name) == len("run-") + 8, siblings
    fresh = siblings[0]
    assert json.loads((fresh / "result.json").read_text())["settings"]["lr"] == 0.5
    assert json.loads((fresh / "run_stamp.json").read_text())["stamp"]["lr"] == 0.5
    assert _checkpoints(fresh) and new["steps"] == 2
    assert new["layer_weights"] != old["layer_weights"], "the fresh run reported the old model"
    assert (out / "result.json").read_text() == old_text  # the old run is untouched


def test_recipe_changed_manifest_content_stops_naming_the_manifests(ks, tiny_encoder_dir, small_corpus, tmp_path):
    corpus = tmp_path / "corpus"
    shutil.copytree(small_corpus, corpus)
    out = tmp_path / "run"
    _ks(ks, tiny_encoder_dir, corpus, out)
    train = corpus / "train.csv"
    lines = train.read_text().splitlines(keepends=True)
    train.write_text("".join(lines[:-1]))  # one training utterance fewer, same file name
    with pytest.raises(RunFolderMismatch, match="manifests"):
        _ks(ks, tiny_encoder_dir, corpus, out)


DDP_DRIVER = """
import datetime, json, sys, time
from pathlib import Path
import torch.distributed as dist
from rewire_lib.training.run_stamp import check_run_folder
dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=20))
folder = Path(sys.argv[1])
for lr in sys.argv[2:]:  # the first stamps the fresh folder, the next restamps it (nothing trained)
    if dist.get_rank() == 1:
        time.sleep(1.0)  # rank 0 gets far ahead: it must not stamp before rank 1 has read
    print(check_run_folder(folder, {"lr": float(lr)}), flush=True)
    dist.barrier()  # a rank that skipped a barrier inside would pair this one with it and hang or fail
    print(json.loads((folder / "run_stamp.json").read_text())["stamp"]["lr"], flush=True)
dist.destroy_process_group()
"""


def test_two_processes_take_the_same_branch_and_only_rank0_writes(tmp_path):
    """Under DDP both ranks read the folder before rank 0 stamps it (a fresh folder, then a restamp)."""
    import socket
    import subprocess
    import sys

    from rewire_lib.files.paths import REPO_ROOT

    (tmp_path / "driver.py").write_text(DDP_DRIVER)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [subprocess.Popen(
        [sys.executable, str(tmp_path / "driver.py"), str(tmp_path / "run"), "0.1", "0.2"], cwd=REPO_ROOT,
        env=dict(os.environ, RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                 MASTER_PORT=str(port), OMP_NUM_THREADS="1"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-1500:] for _, err in outs]
    folder = str(tmp_path / "run")
    for out, _ in outs:
        assert out.split() == [folder, "0.1", folder, "0.2"], out
