"""Output folders that cannot be written (read-only, no permission, a file in the way, a full disk), at
every entry point that writes: the recipes (load_recipe), the preparers, manifests, the isotropy
command. Each gives an OutputFolderError / exit code 2 naming the folder or file and the reason, and
does so before the work starts where it can."""
import csv
import errno
import os

import numpy as np
import pytest
import soundfile as sf

import rewire_lib.files.outputs as outputs
from rewire_lib.analysis.isotropy.cli import main as isotropy_main
from rewire_lib.data.manifest import write_manifest
from rewire_lib.files.outputs import OutputFolderError, check_writable
from rewire_lib.files.paths import REPO_ROOT
from rewire_lib.training.recipe import load_recipe


def _refuse(code):
    def mkstemp(*args, **kwargs):
        raise OSError(code, os.strerror(code), kwargs.get("dir"))
    return mkstemp


@pytest.mark.parametrize("code,words", [(errno.EROFS, "read-only"), (errno.EACCES, "no permission"),
                                        (errno.ENOSPC, "disk is full")])
def test_check_writable_names_the_folder_and_the_reason(tmp_path, monkeypatch, code, words):
    monkeypatch.setattr(outputs.tempfile, "mkstemp", _refuse(code))
    with pytest.raises(OutputFolderError, match=rf"results: cannot write to {tmp_path}/out: .*{words}") as err:
        check_writable(tmp_path / "out", "results")
    assert err.value.errno == code


def test_a_file_in_the_way_and_a_really_read_only_folder(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputFolderError, match="(?i)file/out: .*not a directory"):
        check_writable(tmp_path / "file" / "out")
    if os.geteuid() != 0:  # root writes through permission bits: only the patched cases above apply
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        try:
            with pytest.raises(OutputFolderError, match="no permission"):
                check_writable(ro / "sub")
        finally:
            ro.chmod(0o755)


def test_recipe_refuses_an_unwritable_output_folder_before_training(tmp_path, tiny_encoder_dir, monkeypatch):
    (tmp_path / "file").write_text("x")
    argv = [str(REPO_ROOT / "recipes" / "rewire" / "hparams" / "twin.yaml"), "--encoder", str(tiny_encoder_dir),
            "--output_folder", str(tmp_path / "file" / "run")]
    with pytest.raises(OutputFolderError, match=r"(?i)twin\.yaml: output_folder: cannot write .*file/run.*not a directory"):
        load_recipe(argv)
    monkeypatch.setattr(outputs.tempfile, "mkstemp", _refuse(errno.EROFS))
    argv[-1] = str(tmp_path / "ok")
    with pytest.raises(OutputFolderError, match="output_folder: cannot write to .*/ok: .*read-only"):
        load_recipe(argv)


def test_preparer_refuses_an_unwritable_save_folder(tmp_path, monkeypatch):
    from data_prep.common import finish

    wav = tmp_path / "a.wav"
    sf.write(str(wav), np.full(1600, 0.1, np.float32), 16000)
    monkeypatch.setattr(outputs.tempfile, "mkstemp", _refuse(errno.EACCES))
    with pytest.raises(OutputFolderError, match=r"save_folder: cannot write to .*/manifests: .*no permission"):
        finish(tmp_path / "manifests", {"train": [dict(ID="a", wav=str(wav))]}, fractions=())


def test_disk_full_while_writing_a_manifest(tmp_path, monkeypatch):
    import rewire_lib.data.manifest as manifest

    real_replace = os.replace

    def full(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(manifest.os, "replace", full)
    try:
        with pytest.raises(OutputFolderError, match=r"manifest: cannot write .*train\.csv: .*disk is full"):
            write_manifest(tmp_path / "train.csv", [dict(ID="a", duration="1.0", wav="/a.wav")])
    finally:
        monkeypatch.setattr(manifest.os, "replace", real_replace)
    assert list(tmp_path.iterdir()) == []  # no temp file left behind, no half-written manifest


def test_isotropy_command_checks_its_output_folder_first_and_reports_a_full_disk(tmp_path, tiny_encoder_dir,
                                                                               fsdd_files, monkeypatch, capsys):
    import rewire_lib.analysis.isotropy.cli as cli

    manifest = tmp_path / "m.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ID", "duration", "wav"])
        for p in fsdd_files[:3]:
            w.writerow([p.stem, f"{sf.info(str(p)).duration:.4f}", str(p)])
    (tmp_path / "file").write_text("x")
    args = ["--encoder", str(tiny_encoder_dir), "--manifest", str(manifest), "--level", "utterance",
            "--layers", "0", "--no-progress"]
    assert isotropy_main(args + ["--out", str(tmp_path / "file" / "iso")]) == 2
    assert "--out: cannot write to" in capsys.readouterr().err

    def full(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(cli, "atomic_write_bytes", full)  # every file the command writes goes through it
    assert isotropy_main(args + ["--out", str(tmp_path / "iso")]) == 2
    err = capsys.readouterr().err
    assert f"cannot write {tmp_path / 'iso'}" in err and "disk is full" in err
