"""The whole study in one command (`run_all.sh` -> `python -m rewire_study`): data, TTS cache,
rewiring, isotropy, the downstream sweep and the report. See `driver.main`."""
from rewire_study.driver import main, run_study  # noqa: F401
