"""Random-number state as a SpeechBrain recoverable, so a resumed run draws what the killed run would.

SpeechBrain checkpoints models, optimisers and data-loader positions but not the RNG streams, so
dropout masks after a resume would differ from an uninterrupted run. Adding this object to a
Checkpointer's recoverables closes that gap (CPU and, where present, CUDA generators).

The file holds only tensors, numbers, strings and lists/dicts, so it loads with `torch.load(...,
weights_only=True)`: loading a checkpoint never runs code from it.
"""
import random

import numpy as np
import torch
from speechbrain.utils.checkpoints import mark_as_loader, mark_as_saver, register_checkpoint_hooks


class RNGStateError(RuntimeError):
    """An RNG checkpoint this code cannot restore (e.g. written by an older version that pickled numpy arrays)."""


def python_state() -> dict:
    version, internal, gauss_next = random.getstate()
    return {"version": version, "internal": list(internal), "gauss_next": gauss_next}


def set_python_state(state: dict) -> None:
    random.setstate((state["version"], tuple(state["internal"]), state["gauss_next"]))


def numpy_state() -> dict:
    """numpy's legacy global generator (np.random.*) as plain values: its key array as a list of ints."""
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    return {"bit_generator": name, "keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian)}


def set_numpy_state(state: dict) -> None:
    np.random.set_state((state["bit_generator"], np.asarray(state["keys"], dtype=np.uint32), state["pos"],
                         state["has_gauss"], state["cached_gaussian"]))


@register_checkpoint_hooks
class RNGState:
    @mark_as_saver
    def save(self, path):
        state = {"torch": torch.get_rng_state(), "python": python_state(), "numpy": numpy_state()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        torch.save(state, path)

    @mark_as_loader
    def load(self, path, end_of_epoch=False):
        try:
            state = torch.load(path, weights_only=True)
        except Exception as err:  # pickle.UnpicklingError for a file holding anything but plain values
            raise RNGStateError(f"{path}: not a plain RNG state ({type(err).__name__}); a checkpoint written before "
                                "RNG states were saved as plain values cannot be resumed: start the run afresh "
                                "(delete its save/ folder)") from err
        torch.set_rng_state(state["torch"])
        set_python_state(state["python"])
        set_numpy_state(state["numpy"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
