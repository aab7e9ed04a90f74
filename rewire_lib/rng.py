"""Random-number state as a SpeechBrain recoverable, so a resumed run draws what the killed run would.

SpeechBrain checkpoints models, optimisers and data-loader positions but not the RNG streams, so
dropout masks after a resume would differ from an uninterrupted run. Adding this object to a
Checkpointer's recoverables closes that gap (CPU and, where present, CUDA generators).
"""
import random

import numpy as np
import torch
from speechbrain.utils.checkpoints import mark_as_loader, mark_as_saver, register_checkpoint_hooks


@register_checkpoint_hooks
class RNGState:
    @mark_as_saver
    def save(self, path):
        state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        torch.save(state, path)

    @mark_as_loader
    def load(self, path, end_of_epoch=False):
        state = torch.load(path, weights_only=False)
        torch.set_rng_state(state["torch"])
        random.setstate(state["python"])
        np.random.set_state(state["numpy"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
