"""A study on the user's own data, the fast pieces: a unit is known by content, not by where its
files lie, and a finished rewired encoder is never deleted; a --data-folder task keeps its step budget at its
smallest subset; --help, the seeds note, the recipes' thread setting and the memory sampler's cost.
The end-to-end checks (a copied study folder, SIGTERM, a reused folder's report) are in test_run_all.py."""
import json
import os
from pathlib import Path

import ruamel.yaml
import torch

from rewire_lib.files.paths import REPO_ROOT
from rewire_lib.training.recipe import HparamsError, apply_num_threads
from rewire_study import stages as st
from rewire_study.config import PRESETS, REAL, build_parser, parse_args
from rewire_study.report import seeds_note
from rewire_study.units import MARKER, TreeMemorySampler, Unit, descendants
from test_study_options import base_argv, task_folder

import pytest


# ---------------------------------------------------------------------- units by content
def _spec(root: Path, **changes) -> dict:
    spec = {"view": "twin", "encoder": "/models/base", "encoder_stamp": "abc", "train_csv": str(root / "study/x.csv"),
            "data_fingerprint": "f1", "tts_cache_dir": "/cache/tts", "epochs": 1}
    return {**spec, **changes}


def test_a_unit_moved_with_its_study_folder_or_its_data_is_the_same_unit(tmp_path):
    old_root, new_root = tmp_path / "a", tmp_path / "b"
    u = Unit(old_root / "study/rewire/twin", _spec(old_root), root=old_root, keep=True)
    u.start()
    u.finish()
    stored = json.loads(u.marker.read_text())["spec"]
    assert stored["train_csv"] == "study/x.csv" and stored["encoder"] == "/models/base"  # relative inside the study
    os.rename(old_root, new_root)
    moved = Unit(new_root / "study/rewire/twin", _spec(new_root, encoder="/elsewhere/base", tts_cache_dir="/c2"),
                 root=new_root, keep=True)
    assert moved.is_done()
    # a marker written before paths were stored relative (absolute everywhere) is recognised too
    old = json.loads(moved.marker.read_text())
    old["spec"] = _spec(Path("/some/old/place"))
    moved.marker.write_text(json.dumps(old))
    assert moved.is_done()


def test_a_finished_rewired_encoder_whose_spec_changed_is_moved_aside_not_deleted(tmp_path, capsys):
    root = tmp_path / "out"
    u = Unit(root / "study/rewire/twin", _spec(root), outputs=["encoder/config.json"], root=root, keep=True)
    u.start()
    (u.folder / "encoder").mkdir()
    (u.folder / "encoder/config.json").write_text("{}")
    u.finish()
    changed = Unit(u.folder, _spec(root, data_fingerprint="f2"), outputs=["encoder/config.json"], root=root, keep=True)
    assert not changed.is_done()
    changed.start()
    out = capsys.readouterr().out
    assert "data_fingerprint: \"f1\" -> \"f2\"" in out and "moved to twin.old-" in out
    aside = [p for p in u.folder.parent.iterdir() if p.name.startswith("twin.old-")]
    assert len(aside) == 1 and (aside[0] / "encoder/config.json").is_file() and (aside[0] / MARKER).is_file()
    assert not (u.folder / "encoder").exists()
    # a downstream run (not kept) is still removed, and the message names what changed
    run = Unit(root / "run", {"seed": 0}, root=root)
    run.start()
    run.finish()
    Unit(root / "run", {"seed": 1}, root=root).start()
    assert "seed: 0 -> 1" in capsys.readouterr().out


# ---------------------------------------------------------------------- step budget of user data
def test_a_data_folder_task_keeps_its_step_budget_at_its_smallest_subset(tmp_path, capsys):
    mine = task_folder(tmp_path / "mine", train=400)
    cfg = parse_args(base_argv(tmp_path, "--data-folder", f"ks={mine}", "--per-class", "5,1"))
    assert cfg.presets["ks"] == REAL
    st.make_study_manifests(cfg)
    units = [u for *_, u in st.downstream_units(cfg)]
    assert [u.spec["setting"] for u in units] == ["all", "k5", "k1"]
    # ks: 8 epochs x ceil(400 / 32) = 13 steps, for "all" and for 5 or 1 utterance(s) per label alike
    assert {u.spec["max_steps"] for u in units} == {104}
    assert st.step_budget(cfg, "ks")[0] == 104
    lines = "\n".join(st.budget_lines(cfg))
    assert "ks: preset real-corpus, budget: 104 steps (8 epochs x 13 steps of 32 over all 400" in lines
    # a batch size given for the task changes the budget with it; --max-steps still wins
    cfg = parse_args(base_argv(tmp_path, "--data-folder", f"ks={mine}", "--task-override", "ks:batch_size=100"))
    assert st.step_budget(cfg, "ks")[0] == 8 * 4
    cfg = parse_args(base_argv(tmp_path, "--data-folder", f"ks={mine}", "--max-steps", "ks=9"))
    assert st.step_budget(cfg, "ks")[0] == 9


def test_the_first_lines_of_a_run_name_each_tasks_preset_and_budget(tmp_path, capsys):
    from rewire_study.driver import main

    mine = task_folder(tmp_path / "mine", train=64)
    assert main(base_argv(tmp_path, "--data-folder", f"ks={mine}", "--stages", "")) == 0  # no stage: the header only
    head = capsys.readouterr().out.splitlines()[:4]
    assert any("ks: preset real-corpus, budget: 16 steps" in line for line in head), head


# ---------------------------------------------------------------------- help, seeds note
def test_rewire_csv_help_reads_the_presets_default():
    text = " ".join(build_parser().format_help().split())
    assert f"<data dir>/{PRESETS['default']['rewire_source']}" in text
    assert "Speech Commands train clips" not in text


def test_seeds_note_says_who_chose_fewer_seeds():
    assert "as chosen with --seeds" in seeds_note(parse_args(["--tasks", "ks", "--seeds", "0,1,2"]))
    assert "did not allow more" in seeds_note(parse_args(["--tasks", "ks,ic"]))  # the preset's 3 IC seeds


# ---------------------------------------------------------------------- overheads
def test_recipes_have_a_thread_setting_applied_at_start():
    for name in ("recipes/common/downstream.yaml", "recipes/rewire/hparams/common.yaml"):
        assert ruamel.yaml.YAML(typ="safe").load((REPO_ROOT / name).read_text().replace("!", "#"))["num_threads"] == 1
    before = torch.get_num_threads()
    try:
        apply_num_threads(1, "x.yaml")
        assert torch.get_num_threads() == 1
        apply_num_threads(0, "x.yaml")  # 0: torch's default, left as it is
        assert torch.get_num_threads() == 1
        with pytest.raises(HparamsError, match="x.yaml: num_threads"):
            apply_num_threads(-2, "x.yaml")
    finally:
        torch.set_num_threads(before)


def test_the_memory_sampler_reads_only_the_study_s_own_processes():
    assert sorted(descendants({10: 1, 11: 10, 12: 11, 13: 1, 14: 13}, 10)) == [10, 11, 12]
    sampler = TreeMemorySampler()
    assert sampler.interval >= 2  # a stage's peak lasts far longer than that
    mib = sampler.sample()
    assert mib and mib > 10 and os.getpid() in sampler.last_processes
