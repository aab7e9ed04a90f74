"""Where the project overrides SpeechBrain's own code (no public hook suffices), the SpeechBrain code it was
written against is pinned by a hash of its source: a SpeechBrain release that changes it fails here, naming
what to re-read, instead of drifting silently."""
import hashlib
import inspect

import pytest
import speechbrain as sb

from rewire_lib.data.dataio import MIRRORED_TRAIN_LOADER_SPECIFICS, ShardedBatchesDDP
from rewire_lib.training.nonfinite import MIRRORED_FIT_BATCH, NonFiniteGuard


def _hash(function) -> str:
    return hashlib.sha256(inspect.getsource(function).encode()).hexdigest()[:16]


@pytest.mark.parametrize("theirs,recorded,ours", [
    (sb.Brain.fit_batch, MIRRORED_FIT_BATCH, NonFiniteGuard.fit_batch),
    (sb.Brain._train_loader_specifics, MIRRORED_TRAIN_LOADER_SPECIFICS, ShardedBatchesDDP._train_loader_specifics),
])
def test_overridden_speechbrain_code_is_the_version_it_was_written_against(theirs, recorded, ours):
    assert _hash(theirs) == recorded, (
        f"SpeechBrain {sb.__version__} changed Brain.{theirs.__name__}: re-read it, carry its changes over to "
        f"{ours.__qualname__} ({inspect.getsourcefile(ours)}) and record the new hash")
