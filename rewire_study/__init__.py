"""The study: the orchestration layer over the recipes (`run_all.sh` -> `python -m rewire_study`).

It prepares the data, fills the TTS cache, runs the rewiring recipe and the downstream recipes (each
`recipes/<name>/train.py` main(), see `recipes.py`) as independent units on a local worker pool or as
SLURM jobs (`launch.py`), measures isotropy and writes the report. It sits beside `recipes/`, not in
`rewire_lib`: the recipes use the library, the study uses the recipes. See `driver.main`.
"""
from rewire_study.driver import main, run_study  # noqa: F401
