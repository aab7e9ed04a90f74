"""Where things go: environment variables that move data and caches, and SpeechBrain noise we silence."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from rewire_lib.files import paths


def test_rewire_cache_and_data_move_their_folders(tmp_path, monkeypatch):
    monkeypatch.delenv("REWIRE_CACHE", raising=False)
    monkeypatch.delenv("REWIRE_DATA", raising=False)
    assert paths.cache_dir() == paths.REPO_ROOT / "cache"
    assert paths.data_dir() == paths.REPO_ROOT / "data"
    monkeypatch.setenv("REWIRE_CACHE", str(tmp_path / "c"))
    monkeypatch.setenv("REWIRE_DATA", str(tmp_path / "d"))
    assert paths.cache_dir() == tmp_path / "c"
    assert paths.data_dir() == tmp_path / "d"


TORCHVISION_NOTE = "torchvision is not available - cannot save figures"


def _stderr_of(code: str, cwd: Path) -> str:
    env = dict(os.environ, SB_LOG_LEVEL="INFO")
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                          check=True).stderr


def test_speechbrain_torchvision_note_is_silenced(tmp_path):
    """SpeechBrain logs it when speechbrain.utils.train_logger is imported (every recipe run)."""
    if importlib.util.find_spec("torchvision") is None:  # the note exists here: the check below can fail
        assert TORCHVISION_NOTE in _stderr_of("import speechbrain.utils.train_logger", tmp_path)
    out = _stderr_of("import rewire_lib, speechbrain, speechbrain.utils.train_logger, logging;"
                     "logging.getLogger('speechbrain.utils.train_logger').warning('other warnings still show')",
                     tmp_path)
    assert TORCHVISION_NOTE not in out
    assert "other warnings still show" in out
