"""Shared fixtures: tiny random encoders and a few real FSDD utterances."""
import logging
import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

from rewire_lib.files.paths import shared_data_dir  # noqa: E402
from rewire_lib.models.tiny import make_tiny_encoder  # noqa: E402

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


@pytest.fixture(autouse=True)
def _restore_process_wide_logging():
    """Benchmarks and recipes run in-process change process-wide state (logging.disable, logger levels,
    TQDM_DISABLE, torch threads) as a command-line program may; restore it so later tests are unaffected."""
    manager = logging.root.manager
    disabled = manager.disable
    loggers = {name: (lg.level, lg.disabled, lg.propagate) for name, lg in manager.loggerDict.items()
               if isinstance(lg, logging.Logger)}
    tqdm_disable = os.environ.get("TQDM_DISABLE")
    threads = torch.get_num_threads()  # numerics depend on it: a resumed run must match a straight one
    yield
    torch.set_num_threads(threads)
    logging.disable(disabled)
    for name, lg in list(manager.loggerDict.items()):
        if isinstance(lg, logging.Logger):  # loggers made during the test go back to the defaults
            lg.level, lg.disabled, lg.propagate = loggers.get(name, (logging.NOTSET, False, True))
    if tqdm_disable is None:
        os.environ.pop("TQDM_DISABLE", None)
    else:
        os.environ["TQDM_DISABLE"] = tqdm_disable
