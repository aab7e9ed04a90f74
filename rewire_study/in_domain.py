"""In-domain rewiring, an option of the study (`--in-domain-rewiring TASKS`), never its default.

The default rewires once, on read sentences that no task evaluates on. This option answers a second
question honestly: does rewiring on the task's own corpus and vocabulary help more? For each named task
the base encoder is rewired again on that task's own training split, once per speaker fold (or once,
for a task without folds), so that a fold's dev and test speakers never reach the rewiring that its runs
use. The rewired encoders become extra encoder rows, `<view>-in-domain`, beside the corpus-rewired
`<view>` rows, for the named tasks only; the leakage audit covers each of these rewiring sets against
the splits of the runs that use it. Tasks that read the same prepared data (PR and ASR on connected
digits) share one rewiring per fold.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from rewire_study.config import StudyConfig
from rewire_study.layout import run_data_folder, task_source

SUFFIX = "-in-domain"


def row_name(view: str) -> str:
    return view + SUFFIX


def view_of(row: str) -> Optional[str]:
    """The view of an in-domain row (None for any other row)."""
    return row[: -len(SUFFIX)] if row.endswith(SUFFIX) else None


def row_names(cfg: StudyConfig, task: Optional[str] = None) -> List[str]:
    """The in-domain rows (of `task`, when given: none unless the task is rewired in-domain)."""
    if not cfg.in_domain or (task is not None and task not in cfg.in_domain):
        return []
    return [row_name(v) for v in cfg.views]


@dataclass(frozen=True)
class Domain:
    """One in-domain rewiring set: the training split a task's fold reads (shared by tasks reading the same
    data). `name` is a folder name: the data's source, hashed short, then the fold."""
    name: str
    fold: Optional[str]
    tasks: tuple  # the tasks whose runs of this fold use encoders rewired on it
    train_csv: Path  # the study's copy of the split (what the downstream runs of the fold train on)

    def manifest(self, cfg: StudyConfig) -> Path:
        """The rewiring manifest: the training split capped at `rewire_utts` (written by the data stage)."""
        return cfg.work / "data" / "rewire-in-domain" / self.name / "train.csv"

    def folder(self, cfg: StudyConfig, view: str) -> Path:
        return cfg.work / "rewire" / "in-domain" / self.name / view


def _source_key(cfg: StudyConfig, task: str) -> str:
    """A folder name for the task's data source: its path under the data dir (`fsdd_connected`), so that a copied
    or moved study folder finds its rewired encoders again; a source elsewhere (the user's --data-folder) gets
    its name and a short hash of its location."""
    src = Path(next(iter(task_source(cfg, task).values()))).resolve()
    try:
        return "_".join(src.relative_to(Path(cfg.data_dir).resolve()).parts)
    except ValueError:
        return src.name + "-" + hashlib.sha1(str(src).encode()).hexdigest()[:6]


def domains(cfg: StudyConfig) -> List[Domain]:
    """Every in-domain rewiring set of the study, in task and fold order."""
    found: Dict[str, dict] = {}
    for task in cfg.tasks:
        if task not in cfg.in_domain:
            continue
        for seed in cfg.seeds_of(task):
            fold = cfg.fold_of(task, seed)
            name = _source_key(cfg, task) + (f"-{fold}" if fold else "")
            entry = found.setdefault(name, {"fold": fold, "tasks": [],
                                            "train_csv": run_data_folder(cfg, task, seed) / "train.csv"})
            if task not in entry["tasks"]:
                entry["tasks"].append(task)
    return [Domain(n, e["fold"], tuple(e["tasks"]), e["train_csv"]) for n, e in found.items()]


def domain_of(cfg: StudyConfig, task: str, seed: int) -> Domain:
    fold = cfg.fold_of(task, seed)
    for d in domains(cfg):
        if task in d.tasks and d.fold == fold:
            return d
    raise KeyError(f"{task} is not rewired in-domain (--in-domain-rewiring)")


def encoder_path(cfg: StudyConfig, row: str, task: str, seed: int) -> str:
    """The encoder of an in-domain row for one run of `task` (its fold's rewiring)."""
    return str(domain_of(cfg, task, seed).folder(cfg, view_of(row)) / "encoder")
