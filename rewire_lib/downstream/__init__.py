"""Downstream evaluation (SUPERB protocol) shared by the six recipes: `run_task("ks")` etc."""
from rewire_lib.downstream.run import default_output_folder, encoder_tag, run_task  # noqa: F401
