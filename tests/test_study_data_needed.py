"""The study's data stage prepares only the embedded corpora its tasks read; study workers compute
SpeechBrain's environment description once."""
import pytest

from data_prep.prepare_all import prepare_all
from rewire_study.config import parse_args
from rewire_study.launch import remember_environment_description
from rewire_study.stages import default_corpora_needed


@pytest.mark.parametrize("argv,expected", [
    ([], ["fsdd", "fsdd_connected", "speech_commands", "librispeech_short"]),  # real speech only: no eSpeak corpus
    (["--quick"], ["fsdd", "speech_commands", "librispeech_short"]),
    (["--tasks", "ks,er"], ["synth", "speech_commands", "librispeech_short"]),  # rewiring on LibriSpeech, not FSDD
    (["--tasks", "ic", "--rewire-csv", "r.csv", "--iso-manifest", "i.csv"], ["synth"]),
])
def test_data_stage_prepares_what_the_tasks_read(argv, expected, tmp_path):
    assert default_corpora_needed(parse_args(argv + ["--out", str(tmp_path)])) == expected


def test_every_task_names_a_corpus_that_prepare_all_makes():
    from data_prep.prepare_all import CORPORA
    from rewire_study.config import REWIRE_CORPUS, TASK_DATA

    assert {d.corpus for d in TASK_DATA.values()} | {REWIRE_CORPUS} <= set(CORPORA)
    assert all(d.folder.split("/")[0] in d.corpus for d in TASK_DATA.values())  # fsdd/..., synth/..., speech_commands


def test_a_task_fed_by_the_users_folder_needs_no_default_corpus(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    for split in ("train", "dev", "test"):
        (folder / f"{split}.csv").write_text("ID,duration,wav,label\n")
    cfg = parse_args(["--tasks", "ks", "--data-folder", f"ks={folder}", "--rewire-csv", "r.csv",
                      "--iso-manifest", "i.csv", "--out", str(tmp_path)])
    assert default_corpora_needed(cfg) == []


def test_prepare_all_refuses_an_unknown_corpus_by_name(tmp_path):
    with pytest.raises(ValueError, match="unknown corpora \\['librispeech'\\]; valid: synth, fsdd"):
        prepare_all(tmp_path, corpora=["librispeech"])


def test_environment_description_is_computed_once_per_worker(monkeypatch):
    import speechbrain.utils.logger as sb_logger

    calls = []
    monkeypatch.setattr(sb_logger, "get_environment_description", lambda: calls.append(1) or "pip freeze\n")
    remember_environment_description()
    remember_environment_description()  # idempotent: not wrapped twice
    assert [sb_logger.get_environment_description() for _ in range(3)] == ["pip freeze\n"] * 3
    assert len(calls) == 1
