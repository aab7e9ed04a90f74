"""Settings of the study: command line, the default, quick and real-corpus presets, and per-task defaults."""
from __future__ import annotations

import argparse
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional

from rewire_lib.files.paths import REPO_ROOT, cache_dir, data_dir, default_encoder_dir
from rewire_study.recipes import recipe_data_folder

TASKS = ["pr", "asr", "ks", "ic", "sid", "er"]
# The default sweep runs on real speech only (connected digits for PR/ASR, Speech Commands, FSDD speakers): the
# synthetic eSpeak stand-ins for intents (IC) and emotion (ER) are added with --tasks. Their feature extraction
# and runs do not fit the 40-minute budget on 2 cores beside the others (measured: ER alone ~4 minutes).
DEFAULT_TASKS = ["pr", "asr", "ks", "sid"]
VIEWS = ["twin", "neutral", "mixed"]
BASE = "base"
# Control encoder rows: the base encoder's frozen features centred / whitened at the head's
# input (the downstream key `feature_transform`, fit on the training split), and a randomly initialised
# encoder of the base's architecture (the floor).
CONTROLS = {"centre": "base+centre", "whiten": "base+whiten", "random": "random"}
# Tasks whose low-resource settings are k labelled utterances per class; the others (CTC) take fractions.
CLASS_TASKS = {"ks", "ic", "sid", "er"}
# Hparams file of each task's default data when it is not the recipe's baseline.yaml.
TASK_HPARAMS = {"asr": "fsdd_connected", "pr": "fsdd_connected"}


class TaskData(NamedTuple):
    """A task's default data: its folder (relative to the data dir; the `data_folder` of the task's hparams file,
    TASK_HPARAMS), the column that stratifies capped subsets (None: not stratified), the data_prep.prepare_all
    corpus that writes the folder and, where the corpus has them, the sub-folder of its speaker folds (fold1,
    fold2, ... each with train/dev/test.csv)."""
    folder: str
    stratify: Optional[str]
    corpus: str
    folds: Optional[str] = None


def _task_data(task: str, stratify: Optional[str], corpus: str, folds: Optional[str] = None) -> TaskData:
    return TaskData(recipe_data_folder(task, TASK_HPARAMS.get(task, "baseline")), stratify, corpus, folds)


TASK_DATA = {
    "pr": _task_data("pr", None, "fsdd_connected", "folds"), "asr": _task_data("asr", None, "fsdd_connected", "folds"),
    "ks": _task_data("ks", "label", "speech_commands"), "ic": _task_data("ic", "action", "synth"),
    "sid": _task_data("sid", "label", "fsdd"), "er": _task_data("er", "label", "synth"),
}
# The default rewiring corpus: read English sentences with transcripts (LibriSpeech test-clean's short utterances,
# the corpus family the method's authors rewired on), split by speaker: rewiring on train, isotropy and embedding
# geometry on held-out speakers. No recording, speaker or transcript of it is in any task's data (the audit checks).
REWIRE_CORPUS = "librispeech_short"

# Sweep presets. Training steps are an optimiser-step limit (number_of_epochs is set high so the
# step limit binds), the cap of every run of a task; patience may stop a run before it.
# The size caps (train_cap, eval_cap, rewire_utts: 0 = all) and step limits of "default" and "quick"
# exist for the embedded data on 2 CPU cores only; a task fed by a real corpus or by the user's own
# manifests gets the "real-corpus" values (all its data, the recipe's own epochs) unless an option sets them.
# Evaluation sets are whole (eval_cap 0); caps apply to training data only. Low-resource settings: k labelled
# utterances per class (classification tasks) and fractions (CTC tasks), each a distinct nested subset.
# Stopping (`patience`, `max_steps`): a run stops after `patience` dev evaluations in a row without a new best, or at
# the cap `max_steps` (the report flags every cell with a run that hit it: still improving), so the final comparison
# is between converged runs; steps-to-target reads the same curves. A fixed short budget mixed "learns faster" with
# "ends better" (at 150 / 300 steps most base runs had their best dev in the last fifth). The time goes where steps
# are cheap: KS/SID linear heads (~3-7 ms a step) get 10 evaluations (150 steps) and a cap of 1000 (measured, base
# encoder: KS stops at 510-930 steps, SID at 315-390); the CTC heads (~40-45 ms a step) 5 evaluations (150 steps)
# and a cap of 400 instead of 300: their noisy dev curves often still improve there (ASR fold 1: best at 330, would
# stop at 480; PR fold 1: best at 570, stopped at 720), which the report then marks rather than the study paying for it.
# Speaker folds (`folds`, tasks whose default data has them: ASR/PR on connected digits, 6 speakers): run k of a
# task x encoder x setting cell trains on fold k (one held-out test speaker, another for dev) with seed k-1, so the
# cell's result covers several speakers instead of one (measured: test WER 33-59 % depending on the speaker). The
# default runs folds 1-3 (test speakers nicolas, yweweler, george): PR and ASR were 76 % of the downstream stage's
# run-seconds with six folds, their heads' arithmetic at its bound (bench/README.md), and six folds took the study
# to 57 minutes against its 40; `--folds pr=6,asr=6` runs every speaker (42 more runs, ~9 minutes on 2 cores).
# Rewiring: real read sentences (rewire_source, relative to the data dir), rewire_epochs x rewire_utts /
# rewire_batch optimiser steps at rewire_lr. The authors' length rules, scaled to a 2-core CPU: an utterance
# longer than rewire_max_s seconds is skipped, one longer than rewire_split_s is cut in half and one half kept
# (halves alternate; a neutral pair takes the matching half of its TTS rendering). The shipped sentences last
# 1.3-6 s (median 3.7), so most become 1-3 s halves: a pair costs about a third of a whole sentence's forward
# and backward pass. Isotropy and embedding geometry are measured on held-out speakers (iso_source).
PRESETS = {
    "default": dict(
        tasks=DEFAULT_TASKS, fractions=[1.0], per_class=[5], seeds=[0, 1, 2, 3, 4], folds={"asr": 3, "pr": 3},
        task_seeds={"ic": 3, "er": 3}, views=VIEWS, controls=list(CONTROLS),
        task_eval_every={"asr": 30, "pr": 30},  # a CTC dev pass costs more than a classification one
        train_cap={"ks": 1000, "sid": 1000, "er": 300, "ic": 1000}, eval_cap=0, min_train=16,
        # caps and patience (dev evaluations): see the stopping note above; KS/SID steps are cheap, CTC ones are not
        max_steps={**{t: 1000 for t in TASKS}, "asr": 400, "pr": 400}, patience={**{t: 10 for t in TASKS}, "asr": 5, "pr": 5},
        task_overrides={}, eval_every=15, rewire_utts=768, rewire_epochs={"twin": 1, "neutral": 1, "mixed": 1}, rewire_batch=8,
        rewire_lr=0.0002, rewire_source="librispeech_short/train.csv", rewire_max_s=6.0, rewire_split_s=2.0,
        iso_source="librispeech_short/test.csv",
        iso_utts=200, iso_max_vectors=4000, iso_fit_clips=400,
    ),
    "quick": dict(
        tasks=["ks", "sid"], fractions=[1.0], per_class=[5], seeds=[0, 1], folds={}, task_seeds={}, task_eval_every={},
        views=["twin"],
        controls=["whiten"], train_cap={"ks": 600, "sid": 600}, eval_cap=0, min_train=16,
        max_steps={t: 100 for t in TASKS}, patience={t: 3 for t in TASKS}, task_overrides={},
        eval_every=20, rewire_utts=240, rewire_epochs={"twin": 1, "neutral": 1, "mixed": 1}, rewire_batch=8,
        rewire_lr=0.0002, rewire_source="librispeech_short/train.csv", rewire_max_s=6.0, rewire_split_s=2.0,
        iso_source="librispeech_short/test.csv",
        iso_utts=100, iso_max_vectors=2000, iso_fit_clips=100,
    ),
}
# What a real corpus or user data gets instead of the embedded default's caps. max_steps None: the budget is the
# recipe's epochs over the task's whole training set (rewire_study.stages.step_budget), the same for every
# low-resource setting, so that a 5-per-class subset does not train a handful of steps.
# Rewiring on a real corpus keeps the authors' own length rules (11.25 s skip, 5.625 s halving).
REAL_CORPUS = dict(train_cap=0, eval_cap=0, rewire_utts=0, max_steps=None, patience=None, task_overrides={},
                   rewire_max_s=11.25, rewire_split_s=5.625)
REAL = "real-corpus"

# Real corpora: option -> (preparer module, save folder under the data dir, tasks it feeds)
REAL_CORPORA = {
    "librispeech": ("librispeech", "librispeech", ["pr", "asr", "rewire"]),
    "speech_commands_v1": ("speech_commands_v1", "speech_commands_v1", ["ks"]),
    "fsc": ("fluent_speech_commands", "fsc", ["ic"]),
    "voxceleb1": ("voxceleb1", "voxceleb1", ["sid"]),
    "iemocap": ("iemocap", "iemocap", ["er"]),
}


@dataclass
class StudyConfig:
    out: Path
    mode: str  # "default" or "quick": the preset of the embedded data
    encoders: Dict[str, str]  # name -> hub id or folder; "base" is the baseline and the one rewired
    tasks: List[str]
    fractions: List[float]  # CTC tasks' settings (and every task's when per_class is empty)
    seeds: List[int]
    views: List[str]
    train_cap: Dict[str, int]  # task -> at most N training utterances (0: all)
    eval_cap: Dict[str, int]  # task -> at most N dev and N test utterances (0: all)
    min_train: int
    max_steps: Dict[str, Optional[int]]  # task -> optimiser-step limit, the cap (None: the recipe's own epochs)
    eval_every: int
    rewire_utts: int  # 0: all
    rewire_epochs: Dict[str, int]
    rewire_batch: int
    iso_utts: int
    iso_max_vectors: int
    data_dir: Path
    shared_dir: Optional[Path]
    synth_scale: float
    cache_dir: Path
    corpora: Dict[str, str] = field(default_factory=dict)  # option -> source folder
    data_folders: Dict[str, str] = field(default_factory=dict)  # task -> prepared folder (overrides)
    rewire_csv: Optional[str] = None
    iso_manifest: Optional[str] = None
    rewire_overrides: List[str] = field(default_factory=list)
    task_overrides: Dict[str, List[str]] = field(default_factory=dict)
    presets: Dict[str, str] = field(default_factory=dict)  # task (and "rewire") -> preset its sizes come from
    stages: List[str] = field(default_factory=list)
    seed: int = 0
    device: str = "cpu"
    feature_dtype: str = "float16"
    task_seeds: Dict[str, int] = field(default_factory=dict)  # task -> only the first N seeds (budget)
    folds: Dict[str, int] = field(default_factory=dict)  # task -> speaker folds run (run k: fold k, seed k-1)
    task_eval_every: Dict[str, int] = field(default_factory=dict)  # task -> dev every K steps (else eval_every)
    patience: Dict[str, Optional[int]] = field(default_factory=dict)  # task -> dev evaluations without a new best (None: off)
    per_class: List[int] = field(default_factory=list)  # classification tasks: k labelled utterances per class
    controls: List[str] = field(default_factory=list)  # from CONTROLS
    iso_fit_clips: int = 400  # rewiring clips the base's centre/whiten embedding transforms are fit on
    in_domain: List[str] = field(default_factory=list)  # tasks also rewired on their own training split, per fold
    rewire_lr: Optional[float] = None  # None: the rewiring recipe's own lr
    rewire_source: Optional[str] = None  # manifest (relative to data_dir) rewired on by default
    rewire_max_s: Optional[float] = None  # rewiring skips longer utterances (None: no limit)
    rewire_split_s: Optional[float] = None  # rewiring halves longer utterances (None: never)
    iso_source: Optional[str] = None  # manifest (relative to data_dir) of the isotropy clips by default
    command: List[str] = field(default_factory=list)  # the command line that made this study (shown in the report)
    jobs: int = 2
    threads: int = 1
    launcher: str = "local"  # local | slurm | submitit-local
    slurm: Dict[str, object] = field(default_factory=dict)  # partition, gpus_per_job, time_min, extra
    allow_rewire_overlap: bool = False  # rewire although the rewiring data holds dev/test recordings (audit)

    def option_given(self, option: str) -> bool:
        """Whether the command line that made this study set `option` (e.g. "--seeds"), rather than the preset."""
        return any(a == option or a.startswith(option + "=") for a in self.command)

    def eval_every_of(self, task: str) -> int:
        """Dev evaluation interval of a task's runs: its own where the preset sets one, else `eval_every`."""
        return self.task_eval_every.get(task, self.eval_every)

    def seeds_of(self, task: str) -> List[int]:
        """The seeds a task runs: all of `seeds`, or its first N where the preset's budget says so; a fold task
        runs seed k-1 on fold k (`fold_of`)."""
        if self.folds.get(task):
            return list(range(self.folds[task]))
        n = self.task_seeds.get(task)
        return list(self.seeds) if not n else list(self.seeds[:n])

    def fold_of(self, task: str, seed: int) -> Optional[str]:
        """The fold folder a task's run with this seed trains and tests on (None: the task has no folds)."""
        return f"fold{seed + 1}" if self.folds.get(task) else None

    @property
    def work(self) -> Path:
        """Working folder (rewired encoders, isotropy, runs, capped manifests)."""
        return self.out / "study"

    def as_dict(self) -> dict:
        d = asdict(self)
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}


STAGES = ["data", "tts", "rewire", "isotropy", "downstream", "report"]
LAUNCHERS = ["local", "slurm", "submitit-local"]


def _list(text: str, cast=str, what: str = "") -> list:
    items = [x.strip() for x in text.split(",") if x.strip()]
    try:
        return [cast(x) for x in items]
    except ValueError:
        bad = next(x for x in items if not _casts(x, cast))
        raise argparse.ArgumentTypeError(f"{what}: {bad!r} is not a valid {cast.__name__} (got {text!r})") from None


def _casts(text: str, cast) -> bool:
    try:
        cast(text)
        return True
    except ValueError:
        return False


def _int(text: str, what: str) -> int:
    return _list(text, int, what)[0]


def _per_task_ints(text: Optional[str], what: str) -> Dict[str, int]:
    """An option given as N (every task) or task=N,... (those tasks; the others keep the preset)."""
    if not text:
        return {}
    if "=" not in text:
        return {t: _int(text, what) for t in TASKS}
    given = {k: _int(v, what) for k, v in _pairs(text, what).items()}
    check_names(given, TASKS, what, "task")
    return given


def _pairs(text: str, what: str) -> Dict[str, str]:
    out = {}
    for item in _list(text):
        if "=" not in item:
            raise argparse.ArgumentTypeError(f"{what}: expected NAME=VALUE items separated by commas, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def check_names(names, valid, what: str, kind: str) -> None:
    """A per-task or per-view option key that is not a known name is a one-line error listing the valid ones."""
    bad = [n for n in names if n not in valid]
    if bad:
        raise argparse.ArgumentTypeError(f"{what}: unknown {kind} {', '.join(repr(b) for b in bad)}; "
                                         f"valid: {', '.join(valid)}")


def check_prepared_folder(task: str, folder: Path) -> None:
    """A --data-folder holds the three split manifests (checked before any stage does work)."""
    from rewire_lib.data.manifest import SPLIT_FILES

    for split in ("train", "dev", "test"):
        if not any((folder / name).is_file() for name in SPLIT_FILES[split]):
            raise argparse.ArgumentTypeError(
                f"--data-folder {task}: {folder / SPLIT_FILES[split][0]} does not exist (a prepared folder holds "
                "train.csv, dev.csv or valid.csv, and test.csv; data_prep/ makes them)")


class OneLineParser(argparse.ArgumentParser):
    """Errors in one line (the option, what is wrong, the valid values), not the whole usage block."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (./run_all.sh --help lists every option)\n")


def user_data_tasks(corpora: Dict[str, str], data_folders: Dict[str, str]) -> Dict[str, str]:
    """Tasks (and "rewire") fed by a real corpus or the user's own folder -> the option that feeds them."""
    fed = {}
    for opt, (_, _, tasks) in REAL_CORPORA.items():
        if opt in corpora:
            fed.update({t: f"--{opt.replace('_', '-')}" for t in tasks})
    fed.update({t: "--data-folder" for t in data_folders})
    return fed


def presets_help(active: str, fed: Dict[str, str]) -> str:
    """Every preset value, and which preset each task takes with the options given so far."""
    keys = ["tasks", "fractions", "per_class", "seeds", "folds", "task_seeds", "views", "controls", "train_cap", "eval_cap", "min_train", "max_steps",
            "patience", "eval_every", "task_eval_every", "rewire_utts", "rewire_epochs", "rewire_batch", "rewire_lr",
            "rewire_source", "rewire_max_s", "rewire_split_s", "iso_source", "iso_utts", "iso_max_vectors", "iso_fit_clips",
            "task_overrides"]
    lines = ["Presets (an option given on the command line replaces the preset value; caps: 0 = all):"]
    lines.append(f"  {'key':<16}{'default':<44}{'quick':<44}{REAL}")
    for k in keys:
        row = [PRESETS["default"][k], PRESETS["quick"][k], REAL_CORPUS.get(k, "(as the preset)")]
        if k == "max_steps":
            row[2] = "epochs x steps of the whole training set, every setting (stages.step_budget)"
        elif k == "patience":
            row[2] = "None (the recipe's own: off)"
        elif k == "task_overrides":
            row[2] = "none (the recipe's own values)"
        lines.append(f"  {k:<16}" + "".join(f"{_short(v):<43} " for v in row[:2]) + _short(row[2]))
    lines.append(f"  '{REAL}' applies to each task fed by a real corpus option (--librispeech, --voxceleb1, ...), "
                 "--data-folder or --rewire-csv (the user's own data): all of it is used unless --train-cap, "
                 "--eval-cap, --rewire-utts or --max-steps set a limit. --quick caps every task, real corpora "
                 "included (it is a first look).")
    active_line = f"Active preset: {active}"
    if fed and active != "quick":
        active_line += f"; {REAL} for " + ", ".join(f"{t} ({o})" for t, o in sorted(fed.items()))
    lines.append(active_line)
    return "\n".join(lines)


def _short(v) -> str:
    if isinstance(v, dict):
        return ",".join(f"{k}={'+'.join(x) if isinstance(x, list) else x}" for k, x in v.items())
    if isinstance(v, list):
        return ",".join(str(x) for x in v)
    return str(v)


def build_parser(active: str = "default", fed: Optional[Dict[str, str]] = None) -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="run_all.sh", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="The study of the paper in one command: data, TTS cache, rewiring (twin/neutral/mixed), "
                    "isotropy, the downstream sweep (tasks x encoders x fractions x seeds) and the report "
                    "(summary.md, summary.csv, PNGs). Every stage skips finished work.",
        epilog="Examples:\n  ./run_all.sh --quick\n  ./run_all.sh\n"
               "  ./run_all.sh --encoders base=facebook/wav2vec2-base --tasks ks,sid --seeds 0,1,2\n"
               "  ./run_all.sh --librispeech /corpora/LibriSpeech --voxceleb1 /corpora/VoxCeleb1\n"
               "  ./run_all.sh --launcher slurm --slurm-partition gpu --slurm-gpus-per-job 1 --device cuda\n\n"
               + presets_help(active, fed or {}))
    p.add_argument("--quick", action="store_true", help="a first look in minutes: fewer tasks, seeds, fractions, "
                                                         "steps and data; twin view only; still every stage")
    p.add_argument("--out", default=str(REPO_ROOT / "results"), help="report folder (default: results/); "
                   "working files go to OUT/study/")
    p.add_argument("--encoders", default=None,
                   help=f"NAME=PATH_OR_HUB_ID,...; '{BASE}' is the baseline and the encoder rewired "
                        f"(default: {BASE}=pretrained/tiny-hubert); other names are compared as given")
    p.add_argument("--views", default=None, help="rewiring views, e.g. twin,neutral,mixed ('' or none: no rewiring)")
    p.add_argument("--tasks", default=None, help=f"comma list from {','.join(TASKS)}")
    p.add_argument("--fractions", default=None, help="training fractions of the CTC tasks (asr, pr), e.g. 1.0,0.1; "
                   "of every task when --per-class is none")
    p.add_argument("--per-class", default=None, help="low-resource settings of the classification tasks: k labelled "
                   "utterances per class, e.g. 20,5,1 (plus all of the data); none: use --fractions")
    p.add_argument("--controls", default=None, help=f"control encoder rows from {','.join(CONTROLS)} "
                   "(centre/whiten: base features centred/whitened at the head; random: random init); none: no controls")
    p.add_argument("--rewire-lr", type=float, default=None, help="learning rate of the rewiring")
    p.add_argument("--in-domain-rewiring", default=None, metavar="TASKS",
                   help="also rewire the base on these tasks' own training splits (e.g. pr,asr), once per speaker "
                        "fold without the fold's dev/test speakers; adds the rows <view>-in-domain for those tasks "
                        "(rewire_study/in_domain.py). Default: none (rewiring on the preset's corpus only)")
    p.add_argument("--seeds", default=None, help="seeds, e.g. 0,1,2 (tasks with speaker folds: see --folds)")
    p.add_argument("--folds", default=None, help="speaker folds run per cell by the tasks whose default data has "
                   "them (asr, pr: connected digits, 6 speakers; default 3 each): task=N,... (run k: fold k, seed "
                   "k-1); none: their default split with --seeds instead")
    p.add_argument("--max-steps", default=None,
                   help="optimiser steps per downstream run, the cap when --patience stops runs earlier: N (every "
                        "task) or task=N,... (the others keep the preset)")
    p.add_argument("--patience", default=None,
                   help="stop a downstream run after N dev evaluations in a row without a new best dev metric "
                        "(--eval-every apart; --max-steps stays the cap): N (every task) or task=N,...; 0: off, "
                        "every run trains to the cap")
    p.add_argument("--eval-every", type=int, default=None, help="dev evaluation every K steps (convergence curves)")
    p.add_argument("--train-cap", type=int, default=None,
                   help="at most N training utterances per task, every task (seeded, stratified; 0 = all)")
    p.add_argument("--eval-cap", type=int, default=None,
                   help="at most N dev and N test utterances per task, every task (0 = all)")
    p.add_argument("--min-train", type=int, default=None,
                   help="low-resource subsets keep at least N utterances (the fraction is raised to reach it)")
    p.add_argument("--rewire-utts", type=int, default=None, help="utterances the rewiring trains on (0 = all)")
    p.add_argument("--rewire-epochs", default=None, help="epochs per view, e.g. twin=1,neutral=1,mixed=1")
    p.add_argument("--rewire-batch", type=int, default=None, help="pairs per rewiring step")
    p.add_argument("--rewire-override", action="append", default=[], metavar="KEY=VALUE",
                   help="extra override for the rewiring recipe (repeatable), e.g. lr=0.0001 or "
                        "tts_backend=festival (the TTS stage uses it too)")
    p.add_argument("--task-override", action="append", default=[], metavar="TASK:KEY=VALUE",
                   help="extra override for a downstream recipe (repeatable), e.g. asr:lr=0.002 or all:batch_size=8")
    p.add_argument("--iso-utts", type=int, default=None, help="utterances for the isotropy measurement")
    p.add_argument("--iso-fit-clips", type=int, default=None,
                   help="rewiring clips the centre/whiten transforms of the base's embeddings are fit on")
    p.add_argument("--iso-max-vectors", type=int, default=None, help="vectors sampled per layer and level")
    p.add_argument("--iso-manifest", default=None, help="manifest for isotropy and embedding geometry "
                   "(default: the preset's iso_source, speakers the rewiring never heard)")
    p.add_argument("--allow-rewire-overlap", action="store_true",
                   help="rewire even when the leakage audit finds dev/test recordings (by audio content) in the "
                        "rewiring data; by default that stops the rewire stage. The report marks the affected results")
    p.add_argument("--rewire-csv", default=None, help="manifest to rewire on (default: the preset's rewire_source, "
                   f"<data dir>/{PRESETS[active]['rewire_source']}, or LibriSpeech train with --librispeech)")
    p.add_argument("--data-dir", default=str(data_dir()), help="generated corpora and manifests (default: data/)")
    p.add_argument("--shared-dir", default=None, help="shared real speech (default: ../shared/data)")
    p.add_argument("--synth-scale", type=float, default=1.0, help="size of the eSpeak corpus (data_prep/synth.py)")
    p.add_argument("--cache-dir", default=str(cache_dir()), help="TTS and feature caches (default: cache/)")
    p.add_argument("--feature-dtype", default="float16", choices=["float32", "float16"],
                   help="dtype of the frozen-feature disk cache (default float16, the recipes' own: half the "
                        "memory and disk, features rounded ~1e-3 relative)")
    for opt, (_, _, tasks) in REAL_CORPORA.items():
        p.add_argument(f"--{opt.replace('_', '-')}", dest=opt, default=None, metavar="DIR",
                       help=f"real corpus in its published layout, prepared and used (all of it) for {', '.join(tasks)}")
    p.add_argument("--speech-commands-v1-test", default=None, metavar="DIR",
                   help="the separate Speech Commands v0.01 test set (with --speech-commands-v1)")
    p.add_argument("--data-folder", action="append", default=[], metavar="TASK=DIR",
                   help="use an already prepared folder (train/dev/test.csv) for a task, all of it (repeatable)")
    p.add_argument("--stages", default=",".join(STAGES), help="stages to run (default: all), e.g. downstream,report")
    p.add_argument("--seed", type=int, default=0, help="seed of data preparation, subsets and isotropy sampling")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                   help="worker processes for rewiring, isotropy and the sweep (default: 2, or 1 on one core)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker (default 1)")
    p.add_argument("--launcher", default="local", choices=LAUNCHERS,
                   help="where units (rewiring, isotropy, downstream runs) run: local worker pool (default), "
                        "slurm (one submitit job per unit), submitit-local (the slurm code path on this machine)")
    p.add_argument("--slurm-partition", default=None, help="SLURM partition of the jobs")
    p.add_argument("--slurm-gpus-per-job", type=int, default=0,
                   help="GPUs per job; more than 1 runs rewiring and downstream units under torchrun (DDP)")
    p.add_argument("--slurm-cpus-per-job", type=int, default=None, help="CPUs per job (default: --threads)")
    p.add_argument("--slurm-time", type=int, default=60, metavar="MINUTES", help="time limit of each job")
    p.add_argument("--slurm-extra", action="append", default=[], metavar="KEY=VALUE",
                   help="extra sbatch option (repeatable), e.g. account=myproj or qos=high")
    return p


def _preview(argv) -> tuple:
    """The active preset and user-fed tasks from argv alone, so that --help can show them."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--quick", action="store_true")
    pre.add_argument("--data-folder", action="append", default=[])
    pre.add_argument("--rewire-csv", default=None)
    for opt in REAL_CORPORA:
        pre.add_argument(f"--{opt.replace('_', '-')}", dest=opt, default=None)
    a, _ = pre.parse_known_args(argv)
    folders = {}
    for item in a.data_folder:
        for part in item.split(","):
            if "=" in part:
                folders[part.split("=", 1)[0].strip()] = part.split("=", 1)[1]
    fed = user_data_tasks(corpora_given(a), folders)
    if a.rewire_csv:
        fed["rewire"] = "--rewire-csv"
    return ("quick" if a.quick else "default"), fed


def corpora_given(a: argparse.Namespace) -> Dict[str, str]:
    return {k: getattr(a, k) for k in REAL_CORPORA if getattr(a, k)}


def parse_args(argv=None) -> StudyConfig:
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(*_preview(argv))
    a = parser.parse_args(argv)
    mode = "quick" if a.quick else "default"
    pre = PRESETS[mode]
    try:
        encoders = _pairs(a.encoders, "--encoders") if a.encoders else {BASE: str(default_encoder_dir())}
        if BASE not in encoders:
            raise argparse.ArgumentTypeError(f"--encoders must name a '{BASE}' encoder (the baseline), got {list(encoders)}")
        tasks = _list(a.tasks) if a.tasks is not None else list(pre["tasks"])
        check_names(tasks, TASKS, "--tasks", "task")
        views = [] if a.views in ("", "none") else (_list(a.views) if a.views is not None else list(pre["views"]))
        check_names(views, VIEWS, "--views", "view")
        clash = [v for v in views if v in encoders]
        if clash:
            raise argparse.ArgumentTypeError(f"--encoders names {clash} are taken by the rewired encoders")
        fractions = _list(a.fractions, float, "--fractions") if a.fractions else list(pre["fractions"])
        if any(not 0 < f <= 1 for f in fractions):
            raise argparse.ArgumentTypeError(f"--fractions must be in (0, 1], got {fractions}")
        fractions = sorted(set(fractions), reverse=True)
        if a.per_class is None:
            per_class = list(pre["per_class"])
        elif a.per_class in ("", "none"):
            per_class = []
        else:
            per_class = _list(a.per_class, int, "--per-class")
            if any(k < 1 for k in per_class):
                raise argparse.ArgumentTypeError(f"--per-class must be >= 1, got {per_class}")
        per_class = sorted(set(per_class), reverse=True)
        if a.controls is None:
            controls = list(pre["controls"])
        else:
            controls = [] if a.controls in ("", "none") else _list(a.controls)
        check_names(controls, list(CONTROLS), "--controls", "control")
        taken = [CONTROLS[c] for c in controls if CONTROLS[c] in encoders]
        if taken:
            raise argparse.ArgumentTypeError(f"--encoders names {taken} are taken by the control rows (--controls)")
        seeds = _list(a.seeds, int, "--seeds") if a.seeds else list(pre["seeds"])
        if a.folds is None:
            folds = dict(pre["folds"])
        elif a.folds in ("", "none"):
            folds = {}
        else:
            folds = {k: _int(v, "--folds") for k, v in _pairs(a.folds, "--folds").items()}
            check_names(folds, [t for t in TASKS if TASK_DATA[t].folds], "--folds", "task with speaker folds")
            if any(n < 1 for n in folds.values()):
                raise argparse.ArgumentTypeError(f"--folds: N >= 1 expected, got {folds}")
        steps_given = _per_task_ints(a.max_steps, "--max-steps")
        patience_given = _per_task_ints(a.patience, "--patience")
        if any(n < 0 for n in patience_given.values()):
            raise argparse.ArgumentTypeError(f"--patience: N >= 0 expected (0: off), got {a.patience!r}")
        if a.iso_fit_clips is not None and a.iso_fit_clips < 2:
            raise argparse.ArgumentTypeError(f"--iso-fit-clips: N >= 2 expected (a centre/whiten fit needs clips), "
                                             f"got {a.iso_fit_clips}")
        rewire_epochs = dict(pre["rewire_epochs"])
        if a.rewire_epochs:
            given = {k: _int(v, "--rewire-epochs") for k, v in _pairs(a.rewire_epochs, "--rewire-epochs").items()}
            check_names(given, VIEWS, "--rewire-epochs", "view")
            rewire_epochs.update(given)
        in_domain = _list(a.in_domain_rewiring) if a.in_domain_rewiring not in (None, "", "none") else []
        check_names(in_domain, tasks, "--in-domain-rewiring", "task of this study (--tasks)")
        if in_domain and not views:
            raise argparse.ArgumentTypeError("--in-domain-rewiring needs at least one view (--views)")
        stages = _list(a.stages)
        check_names(stages, STAGES, "--stages", "stage")
        data_folders = _pairs(",".join(a.data_folder), "--data-folder") if a.data_folder else {}
        check_names(data_folders, TASKS, "--data-folder", "task")
        for task, folder in data_folders.items():
            check_prepared_folder(task, Path(folder))
        fed = user_data_tasks(corpora_given(a), data_folders)
        if a.rewire_csv:
            fed["rewire"] = "--rewire-csv"
        # each task's sizes: the embedded preset, or all the data for a real corpus / the user's own folder
        presets = {t: (REAL if t in fed and mode != "quick" else mode) for t in TASKS + ["rewire"]}
        task_overrides: Dict[str, List[str]] = {k: list(v) for k, v in pre["task_overrides"].items()
                                                if presets.get(k) != REAL}
        for item in a.task_override:
            if ":" not in item or "=" not in item:
                raise argparse.ArgumentTypeError(f"--task-override: expected TASK:KEY=VALUE, got {item!r}")
            t, kv = item.split(":", 1)
            check_names([t], TASKS + ["all"], "--task-override", "task")
            task_overrides.setdefault(t, []).append(kv)
        for item in a.rewire_override:
            if "=" not in item:
                raise argparse.ArgumentTypeError(f"--rewire-override: expected KEY=VALUE, got {item!r}")
        slurm_extra = _pairs(",".join(a.slurm_extra), "--slurm-extra") if a.slurm_extra else {}
        corpora = corpora_given(a)
        if a.speech_commands_v1_test:
            corpora["speech_commands_v1_test"] = a.speech_commands_v1_test
        for name, folder in corpora.items():
            if not Path(folder).is_dir():
                raise argparse.ArgumentTypeError(f"--{name.replace('_', '-')}: {folder} is not a folder "
                                                 "(expected the corpus in its published layout)")
    except argparse.ArgumentTypeError as e:
        parser.error(str(e))
    pick = lambda v, k: pre[k] if v is None else v  # noqa: E731
    size = lambda t, k: (REAL_CORPUS[k] if presets[t] == REAL else pre[k])  # noqa: E731
    cap = lambda t: (lambda v: v.get(t, 0) if isinstance(v, dict) else v)(size(t, "train_cap"))  # noqa: E731
    train_cap = {t: cap(t) if a.train_cap is None else a.train_cap for t in tasks}
    eval_cap = {t: size(t, "eval_cap") if a.eval_cap is None else a.eval_cap for t in tasks}
    max_steps = {t: steps_given.get(t, None if presets[t] == REAL else pre["max_steps"][t]) for t in TASKS}
    patience = {t: patience_given.get(t, None if presets[t] == REAL else pre["patience"][t]) or None for t in TASKS}
    rewire_utts = size("rewire", "rewire_utts") if a.rewire_utts is None else a.rewire_utts
    folds = {t: n for t, n in folds.items() if t in tasks and t not in fed}  # the default data's folds only
    return StudyConfig(
        out=Path(a.out).resolve(), mode=mode, encoders=encoders, tasks=tasks, fractions=fractions, seeds=seeds,
        per_class=per_class, controls=controls, in_domain=in_domain, task_seeds={} if a.seeds else dict(pre["task_seeds"]), folds=folds,
        task_eval_every={} if a.eval_every is not None else dict(pre["task_eval_every"]), rewire_lr=a.rewire_lr if a.rewire_lr is not None else pre["rewire_lr"],
        rewire_source=pre["rewire_source"], iso_source=pre["iso_source"], command=["./run_all.sh", *argv],
        rewire_max_s=size("rewire", "rewire_max_s"), rewire_split_s=size("rewire", "rewire_split_s"),
        views=views, train_cap=train_cap, eval_cap=eval_cap,
        min_train=pick(a.min_train, "min_train"), max_steps=max_steps, patience=patience,
        eval_every=pick(a.eval_every, "eval_every"), rewire_utts=rewire_utts,
        rewire_epochs=rewire_epochs, rewire_batch=pick(a.rewire_batch, "rewire_batch"),
        iso_utts=pick(a.iso_utts, "iso_utts"), iso_max_vectors=pick(a.iso_max_vectors, "iso_max_vectors"),
        iso_fit_clips=pick(a.iso_fit_clips, "iso_fit_clips"),
        data_dir=Path(a.data_dir).resolve(), shared_dir=Path(a.shared_dir).resolve() if a.shared_dir else None,
        synth_scale=a.synth_scale, cache_dir=Path(a.cache_dir).resolve(), corpora=corpora,
        data_folders=data_folders, rewire_csv=a.rewire_csv, iso_manifest=a.iso_manifest,
        rewire_overrides=list(a.rewire_override), task_overrides=task_overrides, presets=presets,
        stages=stages, seed=a.seed, device=a.device, feature_dtype=a.feature_dtype, jobs=max(1, a.jobs),
        threads=max(1, a.threads), launcher=a.launcher,
        slurm={"partition": a.slurm_partition, "gpus_per_job": max(0, a.slurm_gpus_per_job),
               "cpus_per_job": a.slurm_cpus_per_job or max(1, a.threads), "time_min": a.slurm_time,
               "extra": slurm_extra},
        allow_rewire_overlap=a.allow_rewire_overlap,
    )
