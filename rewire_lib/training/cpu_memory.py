"""Bound the memory that oneDNN (PyTorch's CPU convolution and matmul kernels) keeps per input shape.

Why: oneDNN caches a compiled kernel ("primitive", with its scratch buffers) for every input shape it
meets, 1024 of them by default. Rewiring pads each batch to its longest view, so nearly every step brings a
new shape: measured on the 2-core host, a twin rewiring of the tiny HuBERT (40 steps of 8 pairs) peaked at
3.6 GB resident with the default cache and at 2.4 GB with a cache of 4 kernels, in the same time; two
rewirings side by side were the default study's 8.2 GB peak. The variable is read when oneDNN first
builds a kernel, so it is set when a recipe or a study worker starts, before any model runs.
"""
from __future__ import annotations

import os

CACHE_VARIABLE = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"
DEFAULT_CAPACITY = 8  # kernels: enough for a step's forward and backward shapes to be reused within the step


def bound_kernel_cache(capacity: int = DEFAULT_CAPACITY) -> str:
    """Set oneDNN's kernel-cache capacity unless the user has set it; returns the value in force."""
    return os.environ.setdefault(CACHE_VARIABLE, str(int(capacity)))
