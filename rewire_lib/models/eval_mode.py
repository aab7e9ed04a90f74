"""A frozen module kept in eval mode while a trainer switches the modes of everything around it."""
from __future__ import annotations

import contextlib
import types

import torch


@contextlib.contextmanager
def kept_in_eval(module: torch.nn.Module, active: bool = True):
    """Within the block `module` is in eval mode, and its `train()` / `eval()` return it unchanged without walking
    its submodules; afterwards its own `train` is back (the module stays in eval mode).

    Why: SpeechBrain's `Brain.fit` calls `self.modules.train()` at the start of every epoch. For a frozen encoder
    that walks every submodule (137 for the tiny HuBERT, 0.7 ms), and the next batch that runs it walks them again
    to put it back in eval mode. With 5 utterances per class an epoch is two steps, so those walks cost more than
    the steps' own arithmetic. `active=False` (an encoder that is fine-tuned) leaves the module alone."""
    if not active:
        yield module
        return
    module.eval()
    module.train = types.MethodType(_stay_in_eval, module)  # an instance attribute: the class's method is untouched
    try:
        yield module
    finally:
        del module.train


def _stay_in_eval(module: torch.nn.Module, mode: bool = True) -> torch.nn.Module:
    return module
