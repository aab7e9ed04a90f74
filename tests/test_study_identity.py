"""A study unit is done only for what made it: changed manifests, settings or encoder files make it run
again (and it is not reported meanwhile); unchanged, it is skipped. The downstream recipe is replaced by
a recorder here (what is tested is the study's bookkeeping, not training)."""
import json
import os
from pathlib import Path

import pytest

from rewire_study import launch, units
from rewire_study import stages as st
from rewire_study.config import parse_args
from rewire_study.report import collect_runs
from test_study_options import base_argv, task_folder, write_manifest


@pytest.fixture
def recorder(monkeypatch):
    """Stands in for the recipes' main(): writes result.json/curve.csv where the run asked, counts runs."""
    calls = []

    def fake_run_recipe(cfg, recipe, argv, console, ddp=True, feature_caches=None):
        out = Path(argv[argv.index("--output_folder") + 1])
        out.mkdir(parents=True, exist_ok=True)
        result = {"task": recipe, "metric": "accuracy", "higher_is_better": True, "test_accuracy": 50.0,
                  "steps": 4, "num_train": 10, "seed": int(argv[argv.index("--seed") + 1])}
        (out / "result.json").write_text(json.dumps(result))
        (out / "curve.csv").write_text("step,dev_accuracy\n2,40\n4,50\n")
        calls.append(argv)
        return result

    monkeypatch.setattr(launch, "run_recipe", fake_run_recipe)
    return calls


def study(tmp_path: Path, *extra):
    enc = tmp_path / "enc"
    if not enc.exists():
        enc.mkdir()
        (enc / "config.json").write_text('{"hidden_size": 8}')
        (enc / "model.safetensors").write_bytes(b"\0" * 64)
    mine = tmp_path / "mine"
    if not mine.exists():
        task_folder(mine)
    cfg = parse_args(base_argv(tmp_path, "--encoders", f"base={enc}", "--data-folder", f"ks={mine}",
                               "--seeds", "0,1", "--jobs", "1", *extra))
    st.make_study_manifests(cfg)
    return cfg


def run(cfg) -> int:
    counts = st.stage_downstream(cfg)
    assert counts["units_failed"] == 0
    return counts["units_run"]


def test_unit_runs_again_only_when_what_made_it_changed(tmp_path, recorder):
    cfg = study(tmp_path)
    assert run(cfg) == 4 and len(recorder) == 4  # 2 fractions x 2 seeds
    assert len(collect_runs(cfg)) == 4

    assert run(study(tmp_path)) == 0  # unchanged: every unit skipped
    assert len(recorder) == 4

    # changed data: one training row edited in the user's folder -> the manifests' content differs
    train = tmp_path / "mine" / "train.csv"
    train.write_text(train.read_text().replace("/nowhere/0.wav", "/nowhere/zero.wav"))
    cfg = study(tmp_path)
    assert collect_runs(cfg) == {}  # the old results are not reported as this study's
    assert run(cfg) == 4

    # changed result-affecting setting
    assert run(study(tmp_path, "--task-override", "ks:lr=0.5")) == 4
    assert run(study(tmp_path, "--task-override", "ks:lr=0.5")) == 0

    # changed encoder: same file size and modification time, other bytes (a fresh process: no stamp memo)
    weights = tmp_path / "enc" / "model.safetensors"
    st_before = weights.stat()
    weights.write_bytes(b"\1" * 64)
    os.utime(weights, ns=(st_before.st_atime_ns, st_before.st_mtime_ns))
    units._STAMPS.clear()
    cfg = study(tmp_path, "--task-override", "ks:lr=0.5")
    assert collect_runs(cfg) == {}
    assert run(cfg) == 4 and len(recorder) == 16


def test_rewire_and_isotropy_units_follow_their_manifest(tmp_path):
    cfg = study(tmp_path, "--views", "twin", "--rewire-csv", str(write_manifest(tmp_path / "rw.csv", 10)))
    rewire, iso = st.rewire_unit(cfg, "twin"), st.isotropy_unit(cfg, "base", cfg.encoders["base"])
    rewire.start(), rewire.finish(), iso.start(), iso.finish()
    (rewire.folder / "encoder").mkdir()
    (rewire.folder / "encoder" / "config.json").write_text("{}")
    (iso.folder / "rows.json").write_text("[]")
    (iso.folder / "embedding.json").write_text("{}")
    assert st.rewire_unit(cfg, "twin").is_done() and st.isotropy_unit(cfg, "base", cfg.encoders["base"]).is_done()
    write_manifest(tmp_path / "rw.csv", 11)
    write_manifest(tmp_path / "iso" / "dev.csv", 21)
    cfg = study(tmp_path, "--views", "twin", "--rewire-csv", str(tmp_path / "rw.csv"))
    assert not st.rewire_unit(cfg, "twin").is_done()
    assert not st.isotropy_unit(cfg, "base", cfg.encoders["base"]).is_done()
