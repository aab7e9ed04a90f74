"""Where the study's inputs and outputs are: functions of the configuration only (no stage runs here), shared
by the stages, the leakage audit and the in-domain rewiring sets, which all import this module and not each
other."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional

from rewire_study.config import BASE, CONTROLS, REAL_CORPORA, TASK_DATA, StudyConfig


def task_source(cfg: StudyConfig, task: str) -> Dict[str, str]:
    """Where a task's data comes from: {'data_folder': DIR} or {'folds_dir': DIR} (IEMOCAP)."""
    if task in cfg.data_folders:
        return {"data_folder": str(Path(cfg.data_folders[task]).resolve())}
    for opt, (_, save, tasks) in REAL_CORPORA.items():
        if opt in cfg.corpora and task in tasks:
            if opt == "iemocap":
                return {"folds_dir": str(cfg.data_dir / save)}
            return {"data_folder": str(cfg.data_dir / save)}
    return {"data_folder": str(cfg.data_dir / TASK_DATA[task].folder)}


def study_data_folder(cfg: StudyConfig, task: str) -> Path:
    return cfg.work / "data" / task


def run_data_folder(cfg: StudyConfig, task: str, seed: Optional[int] = None) -> Path:
    """The study's manifests a run reads: the task's folder, or its fold's (`StudyConfig.fold_of`)."""
    fold = cfg.fold_of(task, seed) if seed is not None else None
    return study_data_folder(cfg, task) / fold if fold else study_data_folder(cfg, task)


def random_encoder_dir(cfg: StudyConfig) -> Path:
    return cfg.work / "controls" / "random"


def encoder_rows(cfg: StudyConfig) -> Dict[str, dict]:
    """Every encoder row compared: name -> {"path", "overrides"}: the given encoders, the control rows
    (base+centre, base+whiten: the base encoder with `feature_transform`; random), then the rewired views."""
    rows = {n: {"path": p, "overrides": []} for n, p in cfg.encoders.items()}
    for c in cfg.controls:
        if c == "random":
            rows[CONTROLS[c]] = {"path": str(random_encoder_dir(cfg)), "overrides": []}
        else:  # centre / whiten: the base encoder's features transformed at the head's input
            rows[CONTROLS[c]] = {"path": cfg.encoders[BASE], "overrides": [f"feature_transform={c}"]}
    for view in cfg.views:
        rows[view] = {"path": str(cfg.work / "rewire" / view / "encoder"), "overrides": []}
    return rows


def sizes_path(cfg: StudyConfig) -> Path:
    return cfg.work / "data" / "sizes.json"


def read_sizes(cfg: StudyConfig) -> dict:
    """What the data stage wrote (sizes, settings, folds per task); {} before it has run."""
    path = sizes_path(cfg)
    return json.loads(path.read_text()) if path.is_file() else {}


def tts_views(cfg: StudyConfig) -> List[str]:
    return [v for v in cfg.views if v in ("neutral", "mixed")]
