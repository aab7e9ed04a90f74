"""The one place where the study reaches the recipes: it runs each recipe's own `train.py` `main(argv)`.

Why here and not in `rewire_lib`: dependencies run one way (recipes use `rewire_lib`; the study, the
orchestration layer beside `recipes/`, uses the recipes). A recipe folder is not a package, so its
train.py is loaded from its file, once per process.
"""
from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path
from typing import Callable

from rewire_lib.paths import REPO_ROOT

RECIPES_DIR = REPO_ROOT / "recipes"


def recipe_dir(name: str) -> Path:
    """`recipes/<name>/` (e.g. `ks`, `rewire`)."""
    return RECIPES_DIR / name


def recipe_hparams(name: str, yaml_name: str) -> Path:
    """`recipes/<name>/hparams/<yaml_name>.yaml`."""
    return recipe_dir(name) / "hparams" / f"{yaml_name}.yaml"


@lru_cache(maxsize=None)
def load_recipe_main(name: str) -> Callable:
    """`main(argv)` of `recipes/<name>/train.py` (argv: `[HPARAMS.yaml, "--key", "value", ...]`)."""
    path = recipe_dir(name) / "train.py"
    if not path.is_file():
        raise FileNotFoundError(f"recipe {name!r}: {path.relative_to(REPO_ROOT)} does not exist")
    spec = importlib.util.spec_from_file_location(f"recipes_{name}_train", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    main = getattr(module, "main", None)
    if not callable(main):
        raise AttributeError(f"recipe {name!r}: {path.relative_to(REPO_ROOT)} has no main(argv)")
    return main
