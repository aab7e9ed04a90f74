"""A batch that does not fit in memory: say which utterances it held and what to change.

PyTorch's own message ("CUDA out of memory. Tried to allocate 2.3 GiB ...") names neither the data
nor the settings that matter. Long utterances are the usual cause with large encoders (activation
memory grows with length, attention quadratically), so the error lists the batch's IDs and durations.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch


class BatchDoesNotFit(RuntimeError):
    """One training batch ran out of (GPU or CPU) memory."""


def is_out_of_memory(err: BaseException) -> bool:
    """torch.OutOfMemoryError (CUDA, MPS...) or the RuntimeError an allocator raises ("out of memory")."""
    if isinstance(err, torch.OutOfMemoryError):
        return True
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()


def describe_batch(ids: Sequence[str], seconds: Sequence[float], limit: int = 20) -> str:
    """'a (12.31 s), b (9.80 s), ...' longest first, at most `limit` entries."""
    items = sorted(zip(ids, seconds), key=lambda item: -item[1])
    text = ", ".join(f"{utt} ({sec:.2f} s)" for utt, sec in items[:limit])
    return text + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


@contextlib.contextmanager
def name_the_batch_on_oom(ids: Sequence[str], seconds: Sequence[float], what: str = "batch") -> Iterator[None]:
    """Re-raise an out-of-memory error as BatchDoesNotFit naming the batch and the settings to change."""
    try:
        yield
    except Exception as err:  # noqa: BLE001 - anything else is re-raised untouched
        if not is_out_of_memory(err):
            raise
        raise BatchDoesNotFit(
            f"Out of memory on a {what} of {len(ids)} utterances: {describe_batch(ids, seconds)}. "
            "Lower `batch_size`, skip long utterances with `max_duration` (seconds; the authors skipped "
            "> 11.25 s and halved > 5.6 s: `length_rules: True`), set `gradient_checkpointing: True`, "
            f"or train in mixed precision (`--precision bf16` or `fp16`). Original error: {str(err)[:300]}"
        ) from err
