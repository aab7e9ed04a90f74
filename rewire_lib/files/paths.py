"""Where the project finds things: its own root, the shared real-speech data, and generated data.

Everything is resolved from this file's location so that recipes work whether they are started
from the repository root or from their own folder, and can be redirected with environment
variables on machines where the data lives elsewhere.
"""
import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]  # rewire_lib/files/paths.py -> the checkout


def shared_data_dir() -> Path:
    """Real speech shipped beside the checkout (`../shared/data`), or `$REWIRE_SHARED_DATA`."""
    return Path(os.environ.get("REWIRE_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def data_dir() -> Path:
    """Generated corpora and manifests (git-ignored): `<repo>/data`, or `$REWIRE_DATA`."""
    return Path(os.environ.get("REWIRE_DATA", REPO_ROOT / "data"))


def cache_dir() -> Path:
    """The one root of every cache: `<repo>/cache`, or `$REWIRE_CACHE`. Users of it: TTS renderings
    (`<cache>/tts`), frozen-encoder features (`<cache>/features`), benchmark work (`<cache>/bench`).
    Code that keeps a cache takes its default from here, never from the checkout's location."""
    return Path(os.environ.get("REWIRE_CACHE", REPO_ROOT / "cache"))


def default_encoder_dir() -> Path:
    """The small pre-trained encoder committed with the project (see `pretrained/`)."""
    return REPO_ROOT / "pretrained" / "tiny-hubert"
