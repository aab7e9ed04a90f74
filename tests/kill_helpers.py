"""A run killed by SIGKILL at a chosen optimiser step, for the resume tests of every recipe."""
from typing import Optional, Sequence


def killed_at_step_script(brain: str, call: str, kill_at: int, paths: Sequence[str] = (),
                          threads: Optional[int] = None) -> str:
    """Python source for `python -c`: `call` runs with `brain`'s (a dotted class path) fit_batch patched to SIGKILL
    its own process at optimiser step `kill_at`, as a crash or `kill -9` would, with no chance to clean up."""
    module, name = brain.rsplit(".", 1)
    return "\n".join([
        "import os, signal, sys",
        *(f"sys.path.insert(0, {p!r})" for p in paths),
        *([f"import torch; torch.set_num_threads({threads})"] if threads else []),
        f"from {module} import {name} as Brain",
        "fit_batch = Brain.fit_batch",
        "def dying_fit_batch(self, batch):",
        f"    if self.optimizer_step == {kill_at}:",
        "        os.kill(os.getpid(), signal.SIGKILL)",
        "    return fit_batch(self, batch)",
        "Brain.fit_batch = dying_fit_batch",
        call,
    ])
