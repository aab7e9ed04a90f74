"""run_all.sh --launcher slurm: each unit a submitit job, multi-GPU units under torchrun. The job path
runs end to end with submitit's local executor (--launcher submitit-local: the same code, jobs are
processes here), tiny: one task on a few FSDD clips, a tiny encoder, a few steps."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

from rewire_lib.files.paths import REPO_ROOT
from rewire_study import launch
from rewire_study.config import parse_args
from rewire_study.driver import main
from rewire_study.stages import make_study_manifests
from rewire_study.units import StageError

SLURM = ["--launcher", "slurm", "--slurm-partition", "gpu", "--slurm-gpus-per-job", "2", "--slurm-time", "30",
         "--slurm-extra", "account=proj", "--slurm-extra", "qos=high", "--threads", "4"]


def test_slurm_options_become_job_parameters():
    cfg = parse_args(SLURM)
    assert launch.executor_parameters(cfg, "slurm", "downstream") == {
        "name": "rewire-study-downstream", "timeout_min": 30, "nodes": 1, "tasks_per_node": 1, "cpus_per_task": 4,
        "gpus_per_node": 2, "slurm_partition": "gpu", "slurm_additional_parameters": {"account": "proj", "qos": "high"}}
    local = launch.executor_parameters(parse_args(["--launcher", "submitit-local"]), "local", "rewire")
    assert not any(k.startswith("slurm_") for k in local)


def test_slurm_without_sbatch_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(launch.shutil, "which", lambda name: None)
    with pytest.raises(StageError, match="sbatch is not on this machine's PATH"):
        launch.make_executor(parse_args(SLURM + ["--out", str(tmp_path)]), "rewire")


def test_multi_gpu_unit_runs_under_torchrun(monkeypatch, tmp_path):
    cfg = parse_args(SLURM)
    out = tmp_path / "run"
    out.mkdir()
    (out / "result.json").write_text(json.dumps({"metric": "accuracy", "test_accuracy": 12.5}))
    seen = []

    def fake_run(cmd, stdout=None, stderr=None):
        seen.append(cmd)
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(launch.subprocess, "run", fake_run)
    argv = ["recipes/ks/hparams/baseline.yaml", "--output_folder", str(out), "--seed", "0"]
    result = launch.run_recipe(cfg, "ks", argv, tmp_path / "console.txt")
    assert seen == [[sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                     str(REPO_ROOT / "recipes" / "ks" / "train.py"), *argv]]
    assert result["test_accuracy"] == 12.5 and "torch.distributed.run" in (tmp_path / "console.txt").read_text()

    # one GPU (or none), or a unit without DDP: the recipe's main() in the job's own process
    called = []
    monkeypatch.setattr(launch, "load_recipe_main", lambda name: lambda a: called.append((name, a)) or {"ok": 1})
    assert launch.run_recipe(parse_args(["--launcher", "slurm", "--slurm-gpus-per-job", "1"]), "ks", argv, tmp_path / "c1.txt") == {"ok": 1}
    assert launch.run_recipe(cfg, "ks", argv, tmp_path / "c2.txt", ddp=False) == {"ok": 1}
    assert len(called) == 2 and len(seen) == 1


def fsdd_manifest(path: Path, files, with_label=True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ID", "duration", "wav"] + (["label"] if with_label else []))
        for wav in files:
            w.writerow([wav.stem, f"{sf.info(str(wav)).duration:.3f}", str(wav)]
                       + ([wav.stem.split("_")[0]] if with_label else []))
    return path


def test_study_through_submitit_local_jobs(tmp_path, tiny_encoder_dir, fsdd_files, monkeypatch):
    # job processes import the checkout as this process does
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    digits = [f for f in fsdd_files if f.stem.split("_")[0] in "0123"]
    ks = tmp_path / "ks"
    for split, part in (("train", digits[:24]), ("dev", digits[24:32]), ("test", digits[32:40])):
        fsdd_manifest(ks / f"{split}.csv", part)
    argv = ["--quick", "--launcher", "submitit-local", "--out", str(tmp_path / "results"),
            "--encoders", f"base={tiny_encoder_dir}", "--data-dir", str(tmp_path / "data"),
            "--cache-dir", str(tmp_path / "cache"), "--tasks", "ks", "--data-folder", f"ks={ks}",
            "--rewire-csv", str(fsdd_manifest(tmp_path / "rewire.csv", digits[40:48], with_label=False)),
            "--iso-manifest", str(fsdd_manifest(tmp_path / "iso.csv", digits[48:56])),
            "--fractions", "1.0", "--per-class", "none", "--controls", "none", "--seeds", "0", "--max-steps", "4",
            "--eval-every", "2", "--rewire-batch", "4"]
    make_study_manifests(parse_args(argv))  # the data stage without preparing the default corpora
    argv += ["--stages", "rewire,downstream,report"]
    assert main(argv) == 0
    res = tmp_path / "results"
    stages = json.loads((res / "stages.json").read_text())
    assert stages["settings"]["launcher"] == "submitit-local"
    st = stages["stages"]
    assert (st["rewire"]["units_run"], st["downstream"]["units_run"], st["downstream"]["units_failed"]) == (1, 2, 0)
    jobs = res / "study" / "jobs"
    submitted = {d: len(list((jobs / d).glob("*_submitted.pkl"))) for d in ("rewire", "downstream")}
    assert submitted == {"rewire": 1, "downstream": 2}  # one job per unit
    assert (res / "study" / "rewire" / "twin" / "encoder" / "config.json").is_file()
    for enc in ("base", "twin"):  # each job ran the recipe: its result.json, read by the report
        result = json.loads((res / "study" / "runs" / "ks" / enc / "all" / "seed0" / "result.json").read_text())
        assert result["steps"] == 4 and result["num_train"] == 24
    md = (res / "summary.md").read_text()
    assert "| all | base | 24 |" in md and "| all | twin | 24 |" in md and "submitit-local launcher" in md

    # the same command again: every unit found done, no job submitted
    assert main(argv) == 0
    st = json.loads((res / "stages.json").read_text())["stages"]
    assert (st["rewire"]["units_skipped"], st["downstream"]["units_skipped"]) == (1, 2)
    assert {d: len(list((jobs / d).glob("*_submitted.pkl"))) for d in submitted} == submitted
