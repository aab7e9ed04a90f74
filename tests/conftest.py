"""Shared fixtures: tiny random encoders and a few real FSDD utterances."""
import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

from rewire_lib.paths import shared_data_dir  # noqa: E402
from rewire_lib.tiny import make_tiny_encoder  # noqa: E402

FSDD = shared_data_dir() / "fsdd" / "recordings"


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory) -> Path:
    """A tiny random wav2vec 2.0 (layer-norm variant, attention mask) saved once per test session."""
    return make_tiny_encoder(tmp_path_factory.mktemp("tiny_w2v2"), "wav2vec2", seed=0)


@pytest.fixture(scope="session")
def fsdd_files() -> list[Path]:
    files = sorted(FSDD.glob("*.wav"))
    if not files:
        pytest.fail(f"FSDD recordings not found under {FSDD}: the shared data must sit beside the checkout")
    return files
