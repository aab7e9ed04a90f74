"""The one place where the study reaches the recipes: it runs each recipe's own `train.py` `main(argv)`.

Why here and not in `rewire_lib`: dependencies run one way (recipes use `rewire_lib`; the study, the
orchestration layer beside `recipes/`, uses the recipes). A recipe folder is not a package, so its
train.py is loaded from its file, once per process.
"""
from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import Callable

from rewire_lib.files.paths import REPO_ROOT

RECIPES_DIR = REPO_ROOT / "recipes"


def recipe_dir(name: str) -> Path:
    """`recipes/<name>/` (e.g. `ks`, `rewire`)."""
    return RECIPES_DIR / name


def recipe_hparams(name: str, yaml_name: str) -> Path:
    """`recipes/<name>/hparams/<yaml_name>.yaml`."""
    return recipe_dir(name) / "hparams" / f"{yaml_name}.yaml"


DATA_REF = "!ref <repo_root>/data/"


def recipe_data_folder(name: str, yaml_name: str) -> str:
    """The default data folder of `recipes/<name>/hparams/<yaml_name>.yaml`, relative to the data dir: its
    `data_folder: !ref <repo_root>/data/<folder>` (or that of the file it `extends`). The study reads it from
    there so that a recipe's default data is written down once."""
    path = recipe_hparams(name, yaml_name)
    while True:
        keys = dict(line.split(":", 1) for line in path.read_text().splitlines()
                    if line[:1].isalpha() and ":" in line)
        folder = keys.get("data_folder", "").split("#")[0].strip()
        if folder:
            if not folder.startswith(DATA_REF):
                raise ValueError(f"{path}: data_folder {folder!r} is not under {DATA_REF}")
            return folder[len(DATA_REF):]
        if "extends" not in keys:
            raise ValueError(f"{path}: no data_folder")
        path = path.parent / keys["extends"].split("#")[0].strip()


@lru_cache(maxsize=None)
def load_recipe_module(name: str) -> ModuleType:
    """`recipes/<name>/train.py` as a module, loaded once per process (the study, the benchmarks and the tests
    all load recipes through here)."""
    path = recipe_dir(name) / "train.py"
    if not path.is_file():
        raise FileNotFoundError(f"recipe {name!r}: {path.relative_to(REPO_ROOT)} does not exist")
    spec = importlib.util.spec_from_file_location(f"recipes_{name}_train", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_recipe_main(name: str) -> Callable:
    """`main(argv)` of `recipes/<name>/train.py` (argv: `[HPARAMS.yaml, "--key", "value", ...]`)."""
    main = getattr(load_recipe_module(name), "main", None)
    if not callable(main):
        raise AttributeError(f"recipe {name!r}: {(recipe_dir(name) / 'train.py').relative_to(REPO_ROOT)} "
                             "has no main(argv)")
    return main
