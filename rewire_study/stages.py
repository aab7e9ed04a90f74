"""The study's stages. Each calls the project's own entry points (data_prep, rewire_lib.views.tts, the
rewiring recipe's and the downstream recipes' `train.py` main(), rewire_lib.analysis.isotropy) and skips the
units it finds finished. A unit is finished only for the same spec: its settings, the content
fingerprint of its manifests and the stamp of its encoder's files."""
from __future__ import annotations

import csv
import importlib
import io
import json
import math
import time
import traceback
from pathlib import Path
from typing import Dict, List, Optional

from rewire_lib.data.manifest import ManifestError, read_manifest, split_csv
from rewire_lib.data.subsets import nested_subset, per_class_subset
from rewire_lib.downstream.feature_cache import FeatureCachePool
from rewire_lib.files.atomic import atomic_write_json, atomic_write_text
from rewire_lib.files.paths import shared_data_dir
from rewire_study.config import (BASE, CLASS_TASKS, REAL_CORPORA, REWIRE_CORPUS, TASK_DATA,
                                 TASK_HPARAMS, StudyConfig)
from rewire_study import in_domain
from rewire_study.layout import (encoder_rows, random_encoder_dir, read_sizes, run_data_folder, sizes_path,
                                 study_data_folder, task_source, tts_views)
from rewire_study.launch import freeze_import_time_objects, run_units
from rewire_study.recipes import recipe_hparams
from rewire_study.units import StageError, Unit, data_fingerprint, encoder_stamp, is_inside, quiet, shown_path


# ---------------------------------------------------------------------- helpers
def read_stage_manifest(path) -> tuple[list, List[dict]]:
    """(columns, rows) of a manifest the study reads (rewire_lib.data.manifest.read_manifest, which also checks it); a
    missing one is a StageError saying the data stage has most likely not made it, a malformed one names its line."""
    try:
        rows = read_manifest(path, required=("ID",), hint="did the data stage run?")
    except ManifestError as err:
        raise StageError(str(err)) from err
    return manifest_columns(path, rows), rows


def manifest_columns(path, rows: List[dict]) -> list:
    """A manifest's columns in file order: its rows' keys, or its header line when it has no rows."""
    if rows:
        return list(rows[0])
    with open(path, newline="", encoding="utf-8") as f:
        return next(csv.reader(f), [])


def write_manifest_if_changed(path: Path, fields: list, rows: List[dict]) -> bool:
    """Write a manifest atomically unless the same content is already there (keeps mtimes stable)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fields, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    text = buf.getvalue()
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return False
    atomic_write_text(path, text)
    return True


def cap_rows(rows: List[dict], cap: int, seed: int, stratify: Optional[str]) -> List[dict]:
    """At most about `cap` rows (0: all), a seeded stratified nested subset (rewire_lib.data.subsets)."""
    if not cap or len(rows) <= cap:
        return rows
    strat = stratify if rows and stratify in rows[0] else None
    return nested_subset(rows, fraction=cap / len(rows), seed=seed, stratify=strat)


def effective_fraction(fraction: float, n_train: int, min_train: int) -> float:
    """The fraction actually drawn: raised so that a subset keeps at least `min_train` utterances."""
    if fraction >= 1 or n_train == 0:
        return 1.0
    return min(1.0, max(fraction, min_train / n_train))


ALL = "all"


def task_settings(cfg: StudyConfig, task: str) -> List[str]:
    """The low-resource settings of a task, largest first: "all", then "k{K}" (K labelled utterances per class,
    classification tasks) or "frac{F}" (CTC tasks, and every task when --per-class is none)."""
    if task in CLASS_TASKS and cfg.per_class:
        return [ALL] + [f"k{k}" for k in cfg.per_class]
    return [ALL] + [f"frac{f:g}" for f in cfg.fractions if f < 1]


def setting_csv_name(setting: str) -> str:
    return "train.csv" if setting == ALL else f"train_{setting}.csv"


def task_manifests(cfg: StudyConfig, task: str, setting: str = ALL, seed: Optional[int] = None) -> List[Path]:
    """The manifests a downstream run of `task` (with `seed`: of that run's fold) reads (what its data
    fingerprint covers)."""
    src = task_source(cfg, task)
    if "folds_dir" in src:
        return sorted(Path(src["folds_dir"]).rglob("*.csv"))
    folder = run_data_folder(cfg, task, seed)
    files = [folder / "train.csv", folder / "dev.csv", folder / "test.csv"]
    return files + ([folder / setting_csv_name(setting)] if setting != ALL else [])


def rewire_source_csv(cfg: StudyConfig) -> Path:
    if cfg.rewire_csv:
        return Path(cfg.rewire_csv).resolve()
    if "librispeech" in cfg.corpora:
        return cfg.data_dir / "librispeech" / "train.csv"
    return cfg.data_dir / (cfg.rewire_source or "synth/rewire/train.csv")


def iso_source_csv(cfg: StudyConfig) -> Path:
    return Path(cfg.iso_manifest).resolve() if cfg.iso_manifest else cfg.data_dir / cfg.iso_source


def row_names(cfg: StudyConfig, task: Optional[str] = None) -> List[str]:
    """The encoder rows compared (on `task`, when given): `encoder_rows` plus the in-domain rows of the tasks
    rewired in-domain, whose encoder depends on the run's fold (rewire_study.in_domain)."""
    return list(encoder_rows(cfg)) + in_domain.row_names(cfg, task)


def encoder_paths(cfg: StudyConfig) -> Dict[str, str]:
    """Every encoder row's model folder (the centre/whiten controls share the base's)."""
    return {n: r["path"] for n, r in encoder_rows(cfg).items()}


def model_paths(cfg: StudyConfig) -> Dict[str, str]:
    """The distinct models (no feature-transform rows): what isotropy and alignment/uniformity measure."""
    return {n: r["path"] for n, r in encoder_rows(cfg).items() if not r["overrides"]}


def make_random_encoder(base: str, folder: Path, seed: int = 0) -> Path:
    """A randomly initialised encoder of the base's architecture: AutoConfig of the base, AutoModel.from_config
    under a fixed seed, saved with the base's feature-extractor files. Kept when already there."""
    import shutil

    import torch
    from transformers import AutoConfig, AutoFeatureExtractor, AutoModel

    folder = Path(folder)
    if (folder / "config.json").is_file():
        return folder
    config = AutoConfig.from_pretrained(base)
    torch.manual_seed(seed)
    model = AutoModel.from_config(config)
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    AutoFeatureExtractor.from_pretrained(base).save_pretrained(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


def ensure_controls(cfg: StudyConfig) -> None:
    if "random" in cfg.controls:
        make_random_encoder(cfg.encoders[BASE], random_encoder_dir(cfg), seed=cfg.seed)


def worker_threads() -> List[str]:
    """The recipe's num_threads: the threads this worker was given (rewire_study.pool from --threads), so
    that the recipe's own default (1) does not replace them."""
    import torch

    return ["--num_threads", str(torch.get_num_threads())]


def _overrides(items: List[str]) -> List[str]:
    argv = []
    for kv in items:
        k, v = kv.split("=", 1)
        argv += [f"--{k.strip()}", v.strip()]
    return argv


# ---------------------------------------------------------------------- 1. data
def stage_data(cfg: StudyConfig) -> dict:
    """Default corpora (skipped when prepared), real corpora when given, then the study's manifests."""
    from data_prep.prepare_all import prepare_all

    corpora = default_corpora_needed(cfg)
    print(f"  default corpora -> {cfg.data_dir}: {', '.join(corpora) or 'none'} (eSpeak synth scale "
          f"{cfg.synth_scale}; skipped when already prepared)", flush=True)
    if corpora:
        prepare_all(cfg.data_dir, seed=cfg.seed, scale=cfg.synth_scale, num_workers=2,
                    shared=cfg.shared_dir or shared_data_dir(), corpora=corpora)
    for opt, src in cfg.corpora.items():
        if opt not in REAL_CORPORA:
            continue
        module, save, _ = REAL_CORPORA[opt]
        print(f"  {opt}: {src} -> {cfg.data_dir / save}", flush=True)
        mod = importlib.import_module(f"data_prep.{module}")
        kwargs = {"test_folder": cfg.corpora["speech_commands_v1_test"]} \
            if opt == "speech_commands_v1" and "speech_commands_v1_test" in cfg.corpora else {}
        mod.prepare(src, cfg.data_dir / save, seed=cfg.seed, **kwargs)
    return make_study_manifests(cfg)


def default_corpora_needed(cfg: StudyConfig) -> List[str]:
    """The embedded corpora (data_prep.prepare_all names) that this study reads: its tasks' default data
    (a task fed by a real corpus or --data-folder needs none) and FSDD for the default rewiring and isotropy
    clips; the eSpeak corpus is made only when a task (IC, ER) reads it."""
    from data_prep.prepare_all import CORPORA

    needed = {TASK_DATA[t].corpus for t in cfg.tasks
              if task_source(cfg, t) == {"data_folder": str(cfg.data_dir / TASK_DATA[t].folder)}}
    if not cfg.rewire_csv or not cfg.iso_manifest:
        needed.add(REWIRE_CORPUS)
    unknown = needed - set(CORPORA)
    if unknown:  # a TASK_DATA entry naming a preparer prepare_all does not have: a programming error
        raise StageError(f"TASK_DATA names corpora that data_prep.prepare_all does not prepare: {sorted(unknown)}")
    return [c for c in CORPORA if c in needed]


def make_study_manifests(cfg: StudyConfig) -> dict:
    """Capped copies of each task's manifests under OUT/study/data/<task>/ (seeded, stratified) and the
    low-resource subsets `train_frac{F}.csv` beside them (nested; at least `min_train` utterances)."""
    sizes = {}
    for task in cfg.tasks:
        src = task_source(cfg, task)
        if "folds_dir" in src:
            sizes[task] = {"folds_dir": shown_path(src["folds_dir"], cfg.out), "preset": cfg.presets[task]}
            continue
        info = {"source": shown_path(src["data_folder"], cfg.out), "preset": cfg.presets[task],
                "train_cap": cfg.train_cap[task], "eval_cap": cfg.eval_cap[task]}
        if cfg.folds.get(task):
            folds = fold_sources(cfg, task)
            info["folds"] = {name: study_split(cfg, task, folder, study_data_folder(cfg, task) / name, {})
                             for name, folder in folds.items()}
            info.update(info["folds"]["fold1"])  # sizes of one fold (all alike)
        else:
            study_split(cfg, task, Path(src["data_folder"]), study_data_folder(cfg, task), info)
        sizes[task] = info
        print(f"  {task}: {info}", flush=True)
    if cfg.views:
        fields, rows = read_stage_manifest(rewire_source_csv(cfg))
        available = len(rows)
        rows = cap_rows(rows, cfg.rewire_utts, cfg.seed, None)
        write_manifest_if_changed(cfg.work / "data" / "rewire" / "train.csv", fields, rows)
        sizes["rewire"] = {"source": shown_path(rewire_source_csv(cfg), cfg.out), "preset": cfg.presets["rewire"],
                           "cap": cfg.rewire_utts, "train_available": available, "train": len(rows)}
        print(f"  rewire: {sizes['rewire']}", flush=True)
    for d in in_domain.domains(cfg):
        sizes.setdefault("rewire_in_domain", {})[d.name] = write_in_domain_manifest(cfg, d)
    fields, rows = read_stage_manifest(iso_source_csv(cfg))
    rows = cap_rows(rows, cfg.iso_utts, cfg.seed, "label")
    write_manifest_if_changed(cfg.work / "data" / "isotropy.csv", fields, rows)
    sizes["isotropy"] = {"source": shown_path(iso_source_csv(cfg), cfg.out), "utterances": len(rows)}
    print(f"  isotropy: {sizes['isotropy']}", flush=True)
    atomic_write_json(sizes_path(cfg), sizes)
    return {"sizes": sizes}


def write_in_domain_manifest(cfg: StudyConfig, d: "in_domain.Domain") -> dict:
    """An in-domain rewiring set's manifest: the training split its tasks' runs read, capped at `rewire_utts`; the
    neutral and mixed views need its transcripts (`wrd`)."""
    fields, rows = read_stage_manifest(d.train_csv)
    needs_text = [v for v in cfg.views if v in ("neutral", "mixed")]
    if needs_text and "wrd" not in fields:
        raise StageError(f"--in-domain-rewiring {','.join(d.tasks)}: views {needs_text} render transcripts, but "
                         f"{shown_path(d.train_csv, cfg.out)} has no 'wrd' column (use --views twin for this task)")
    kept = cap_rows(rows, cfg.rewire_utts, cfg.seed, None)
    write_manifest_if_changed(d.manifest(cfg), fields, kept)
    info = {"tasks": list(d.tasks), "fold": d.fold, "source": shown_path(d.train_csv, cfg.out),
            "train_available": len(rows), "train": len(kept)}
    print(f"  rewire in-domain {d.name}: {info}", flush=True)
    return info


def study_split(cfg: StudyConfig, task: str, folder: Path, dst: Path, info: dict) -> dict:
    """The capped train/dev/test copies of one prepared folder in `dst` and its settings' subsets; `info`
    gets the sizes (and is returned)."""
    strat = TASK_DATA[task].stratify
    fields, train = read_stage_manifest(folder / "train.csv")
    info["train_available"] = len(train)
    train = cap_rows(train, cfg.train_cap[task], cfg.seed, strat)
    write_manifest_if_changed(dst / "train.csv", fields, train)
    info["train"] = len(train)
    for split in ("dev", "test"):  # a source's dev split may be named valid.csv; the study's copy is dev.csv
        f2, rows = read_stage_manifest(split_csv(folder, split, must_exist=False))
        info[f"{split}_available"] = len(rows)
        rows = cap_rows(rows, cfg.eval_cap[task], cfg.seed, strat)
        write_manifest_if_changed(dst / f"{split}.csv", f2, rows)
        info[split] = len(rows)
        if split == "test" and cfg.folds.get(task):
            info["test_speakers"] = sorted({r.get("spk_id", "") for r in rows})
    info["settings"] = write_settings(cfg, task, dst, fields, train)
    return info


def fold_sources(cfg: StudyConfig, task: str) -> Dict[str, Path]:
    """{fold name: prepared folder} of the first `cfg.folds[task]` folds of the task's default data."""
    root = Path(task_source(cfg, task)["data_folder"]) / TASK_DATA[task].folds
    n = cfg.folds[task]
    folds = {f"fold{k}": root / f"fold{k}" for k in range(1, n + 1)}
    missing = [name for name, f in folds.items() if not (f / "train.csv").is_file()]
    if missing:
        raise StageError(f"{task}: --folds {task}={n} but {root} lacks {', '.join(missing)} (its preparer writes "
                         f"fold1..foldK: python data_prep/prepare_all.py; or fewer folds)")
    return folds


def write_settings(cfg: StudyConfig, task: str, dst: Path, fields: list, train: List[dict]) -> Dict[str, dict]:
    """Each low-resource setting's training manifest (train_{setting}.csv), nested and distinct: a setting whose
    subset has as many utterances as the next larger one is the same subset, recorded as `same_as` it (the
    report says so, and its runs are not made)."""
    strat = TASK_DATA[task].stratify
    strat_col = strat if train and strat in train[0] else None
    out: Dict[str, dict] = {}
    previous = None
    for setting in task_settings(cfg, task):
        if setting == ALL:
            sub = train
        elif setting.startswith("k"):
            if strat_col is None:
                raise StageError(f"{task}: per-class settings need the column {strat!r} in its train manifest")
            sub = per_class_subset(train, int(setting[1:]), cfg.seed, strat_col)
        else:
            eff = effective_fraction(float(setting[4:]), len(train), cfg.min_train)
            sub = nested_subset(train, fraction=eff, seed=cfg.seed, stratify=strat_col)
        entry = {"utterances": len(sub), "same_as": None}
        if previous is not None and len(sub) == out[previous]["utterances"]:
            entry["same_as"] = out[previous]["same_as"] or previous
        else:
            previous = setting
        if setting != ALL:
            write_manifest_if_changed(dst / setting_csv_name(setting), fields, sub)
        out[setting] = entry
    return out


def run_settings(cfg: StudyConfig, task: str) -> List[str]:
    """The settings that get runs: those whose subset is not the same as a larger setting's."""
    same = read_sizes(cfg).get(task, {}).get("settings", {})
    return [s for s in task_settings(cfg, task) if not same.get(s, {}).get("same_as")]


# ---------------------------------------------------------------------- 2. TTS
def rewire_setting(cfg: StudyConfig, view: str, key: str):
    """A rewiring YAML key as the recipe will see it: the view's YAML (with its `extends:` base) under
    the study's `--rewire-override`s. Read from the YAML so that its default lives in one place."""
    return yaml_setting(recipe_hparams("rewire", view), cfg.rewire_overrides, key)


def yaml_setting(hparams: Path, overrides: List[str], key: str):
    """A recipe key's value as the recipe will see it: its hparams file (with `extends:` bases) under
    KEY=VALUE `overrides`."""
    from rewire_lib.training.recipe import hparams_value

    text = "".join(f"{k.strip()}: {v.strip()}\n" for k, v in (kv.split("=", 1) for kv in overrides))
    return hparams_value(str(hparams), key, text)


def tts_choice(cfg: StudyConfig) -> dict:
    """The TTS backend and settings the neutral/mixed views will use (the same cache folder)."""
    views = tts_views(cfg)
    if not views:
        return {"backend": None, "settings": {}}
    backend = str(rewire_setting(cfg, views[0], "tts_backend"))
    settings = rewire_setting(cfg, views[0], "tts_settings") or {}
    return {"backend": backend, "settings": json.loads(json.dumps(dict(settings)))}


def stage_tts(cfg: StudyConfig) -> dict:
    views = tts_views(cfg)
    if not views:
        print("  no view needs TTS (twin only): nothing to synthesise", flush=True)
        return {"texts": 0}
    from rewire_lib.views.tts import TTSCache, TTSUnavailable, make_backend, read_manifest_texts

    choice = tts_choice(cfg)
    manifests = [cfg.work / "data" / "rewire" / "train.csv"] + [d.manifest(cfg) for d in in_domain.domains(cfg)]
    try:
        backend = make_backend(choice["backend"], **choice["settings"])
    except (TTSUnavailable, ValueError) as err:
        raise StageError(f"TTS backend {choice['backend']!r} (--rewire-override tts_backend=...): {err}") from None
    cache = TTSCache(cfg.cache_dir / "tts", backend)
    print(f"  {choice['backend']} renderings of {', '.join(shown_path(m, cfg.out) for m in manifests)}'s transcripts "
          f"for {views} -> {shown_path(cache.folder, cfg.out)} (cached texts are skipped)", flush=True)
    texts = list(dict.fromkeys(t for m in manifests for t in read_manifest_texts(m)))
    with quiet(None):
        stats = cache.synthesize_missing(texts, num_workers=2, progress=False)
    return {"texts": len(texts), "backend": choice["backend"], "synthesised": stats.done, "cached": stats.cached,
            "skipped": stats.skipped}


# ---------------------------------------------------------------------- 3. rewiring
def rewire_unit(cfg: StudyConfig, view: str, domain: Optional[str] = None) -> Unit:
    """The rewiring of `base` with one view: on the study's rewiring corpus, or (`domain`: an in-domain set's
    name, rewire_study.in_domain) on a task's own training split."""
    base = cfg.encoders[BASE]
    csv_path, folder = cfg.work / "data" / "rewire" / "train.csv", cfg.work / "rewire" / view
    if domain is not None:
        d = next(d for d in in_domain.domains(cfg) if d.name == domain)
        csv_path, folder = d.manifest(cfg), d.folder(cfg, view)
    spec = {"view": view, "encoder": base, "encoder_stamp": encoder_stamp(base), "train_csv": str(csv_path),
            "data_fingerprint": data_fingerprint(csv_path),
            "epochs": cfg.rewire_epochs.get(view, 1), "batch_size": cfg.rewire_batch, "lr": cfg.rewire_lr,
            "length_rules": length_rules(cfg), "overrides": cfg.rewire_overrides, "tts_cache_dir": str(cfg.cache_dir / "tts"), "device": cfg.device}
    return Unit(folder, spec, outputs=["encoder/config.json"], root=cfg.out, keep=True)


def rewire_argv(cfg: StudyConfig, unit: Unit) -> List[str]:
    s = unit.spec
    return [str(recipe_hparams("rewire", s["view"])), "--encoder", s["encoder"],
            "--train_csv", s["train_csv"], "--output_folder", str(unit.folder),
            "--number_of_epochs", str(s["epochs"]), "--batch_size", str(s["batch_size"]),
            "--tts_cache_dir", s["tts_cache_dir"], "--device", cfg.device, "--noprogressbar", *worker_threads()] + \
        (["--lr", str(s["lr"])] if s.get("lr") is not None else []) + _length_rule_argv(s.get("length_rules")) + \
        _overrides(cfg.rewire_overrides)


def length_rules(cfg: StudyConfig) -> Optional[dict]:
    """The rewiring's length rules in samples (rewire_lib.views.pairs.LengthRules), None when the preset sets none."""
    if cfg.rewire_max_s is None and cfg.rewire_split_s is None:
        return None
    samples = lambda s: None if s is None else int(round(s * 16000))  # noqa: E731
    return {"max_samples": samples(cfg.rewire_max_s), "split_samples": samples(cfg.rewire_split_s)}


def _length_rule_argv(rules: Optional[dict]) -> List[str]:
    if not rules:
        return []
    return ["--length_rules", "True"] + [a for k, v in rules.items() for a in (f"--{k}", "null" if v is None else str(v))]


def rewire_threads(cfg: StudyConfig, n_units: int) -> List[Optional[int]]:
    """Torch threads of each rewiring in running order (None: the worker's own). The local pool runs `jobs`
    rewirings at a time with `threads` each; the rewirings of a last, partial round share the whole pool's
    threads instead of running beside idle cores (three views on two workers: the third ran alone for six
    minutes on one core). Only the thread count differs, which moves results by floating-point noise at most."""
    jobs = cfg.jobs if cfg.launcher == "local" else 1
    rest = n_units % jobs if n_units > jobs else 0
    shared = max(1, cfg.threads * jobs // rest) if rest else None
    return [None] * (n_units - rest) + [shared] * rest


def _rewire_one(cfg: StudyConfig, job) -> dict:
    """In a worker or job: rewire `base` with one view, on the corpus (`item` a view) or in-domain (`item` a
    (view, domain name) pair), with `threads` torch threads (None: the worker's); the recipe's own main(), its
    console to console.txt. `job` is (item, threads)."""
    import torch

    from rewire_study.launch import run_recipe

    item, threads = job
    if threads:
        torch.set_num_threads(threads)  # read by worker_threads() into the recipe's --num_threads
    view, domain = (item, None) if isinstance(item, str) else item
    unit = rewire_unit(cfg, view, domain)
    unit.start()
    t0 = time.time()
    run_recipe(cfg, "rewire", rewire_argv(cfg, unit), unit.folder / "console.txt")
    seconds = round(time.time() - t0, 2)
    used = torch.get_num_threads()
    unit.finish(seconds=seconds, threads=used)
    label = view if domain is None else f"{view} in-domain {domain}"
    return {"text": f"  {label}: rewired in {seconds:.1f} s ({used} thread{'s' * (used > 1)}) -> "
                    f"{shown_path(unit.folder / 'encoder', cfg.out)}", "seconds": seconds, "threads": used}


def rewire_items(cfg: StudyConfig) -> List:
    """Every rewiring of the study: each view on the corpus, then each view on each in-domain set."""
    return list(cfg.views) + [(v, d.name) for d in in_domain.domains(cfg) for v in cfg.views]


def stage_rewire(cfg: StudyConfig) -> dict:
    from rewire_study.audit import run_audit

    audit = run_audit(cfg)  # before any rewiring: a dev/test recording in the rewiring data stops here
    ensure_controls(cfg)
    todo = []
    items = rewire_items(cfg)
    for item in items:
        view, domain = (item, None) if isinstance(item, str) else item
        label = view if domain is None else f"{view} in-domain {domain}"
        unit = rewire_unit(cfg, view, domain)
        if unit.is_done():
            print(f"  {label}: already rewired ({shown_path(unit.folder / 'encoder', cfg.out)}), skipped", flush=True)
            continue
        s = unit.spec
        print(f"  {label}: rewiring {s['encoder']} for {s['epochs']} epoch(s), {s['batch_size']} pairs a step, "
              f"on {shown_path(s['train_csv'], cfg.out)} (log: {shown_path(unit.folder / 'console.txt', cfg.out)})",
              flush=True)
        todo.append(item)
    jobs = [[(item, threads)] for item, threads in zip(todo, rewire_threads(cfg, len(todo)))]
    msgs = run_units(_rewire_one, cfg, jobs, "rewire", isolate=True) if todo else []
    print(continue_by_hand(cfg), flush=True)
    return {"units_run": len(msgs), "units_skipped": len(items) - len(todo),
            "unit_seconds": [m["seconds"] for m in msgs], "unit_threads": [m.get("threads") for m in msgs],
            "worker_peak_rss_mib": _worker_peak(msgs), **audit}


def continue_by_hand(cfg: StudyConfig, in_report: bool = False) -> str:
    """The commands that run a downstream recipe by hand on the study's rewired encoders (from the
    repository root): rewired.yaml finds `<rewire_results>/twin/encoder`, other views by --encoder.
    In the report, a study folder outside the checkout is written `OUT/` (the report's own folder): a
    relative walk from the repository to a scratch folder would only hold on the machine that ran it."""
    from rewire_lib.files.paths import REPO_ROOT

    outside = not is_inside(cfg.out.resolve(), REPO_ROOT.resolve())
    results = "OUT/study/rewire" if in_report and outside else shown_path(cfg.work / "rewire", REPO_ROOT)
    task = cfg.tasks[0] if cfg.tasks else "ks"
    hparams = task_hparams(cfg, task).name  # the study's own file (e.g. connected digits), else baseline.yaml
    lines = [f"  continue by hand (from the repository root): the rewired encoders are under {results}/<view>/encoder"]
    for view in cfg.views:
        if view == "twin" and hparams == "baseline.yaml":
            lines.append(f"    python recipes/{task}/train.py recipes/{task}/hparams/rewired.yaml "
                         f"--rewire_results {results}")
        else:  # rewired.yaml extends baseline.yaml: the default data's own file takes the encoder by --encoder
            yaml = "rewired.yaml" if hparams == "baseline.yaml" else hparams
            lines.append(f"    python recipes/{task}/train.py recipes/{task}/hparams/{yaml} "
                         f"--encoder {results}/{view}/encoder")
    return "\n".join(lines)


# ---------------------------------------------------------------------- 4. isotropy
def isotropy_unit(cfg: StudyConfig, name: str, encoder: str) -> Unit:
    manifest = cfg.work / "data" / "isotropy.csv"
    spec = {"encoder": encoder, "encoder_stamp": encoder_stamp(encoder), "manifest": str(manifest),
            "data_fingerprint": data_fingerprint(manifest),
            "level": "both", "max_vectors": cfg.iso_max_vectors, "seed": cfg.seed, "alignment_uniformity": True}
    transforms = [c for c in cfg.controls if c in ("centre", "whiten")] if name == BASE else []
    if transforms:  # the controls' "isotropy for free", fit on training clips (those of the rewiring)
        fit = rewire_source_csv(cfg)
        spec.update(transforms=transforms, fit_manifest=str(fit), fit_fingerprint=data_fingerprint(fit),
                    fit_clips=cfg.iso_fit_clips)
    return Unit(cfg.work / "isotropy" / name, spec, outputs=["rows.json", "embedding.json"], root=cfg.out)


def _isotropy_one(cfg: StudyConfig, item) -> dict:
    """In a worker: isotropy of one encoder, frame and utterance level, every layer -> rows.json."""
    from rewire_lib.analysis.isotropy import measure_encoder

    name, enc = item
    unit = isotropy_unit(cfg, name, enc)
    unit.start()
    t0 = time.time()
    with quiet(None):
        rows = measure_encoder(enc, unit.spec["manifest"], level="both", max_vectors=cfg.iso_max_vectors,
                               seed=cfg.seed, encoder_name=name, device=cfg.device, progress=False)
    atomic_write_json(unit.folder / "rows.json", rows)
    from rewire_study.embedding_change import alignment_uniformity

    with quiet(None):
        held_out = read_stage_manifest(unit.spec["manifest"])[1]
        transforms = unit.spec.get("transforms", [])
        fit_rows = read_stage_manifest(unit.spec["fit_manifest"])[1][:unit.spec["fit_clips"]] if transforms else []
        atomic_write_json(unit.folder / "embedding.json",
                          alignment_uniformity(enc, held_out, seed=cfg.seed, fit_rows=fit_rows, transforms=transforms))
    unit.finish()
    return {"text": f"  {name}: measured in {time.time() - t0:.1f} s"}


def stage_isotropy(cfg: StudyConfig) -> dict:
    from rewire_lib.analysis.isotropy import cli as isotropy_cli

    ensure_controls(cfg)
    encs = model_paths(cfg)
    todo = []
    for name, enc in encs.items():
        if isotropy_unit(cfg, name, enc).is_done():
            print(f"  {name}: measured before, skipped", flush=True)
        else:
            todo.append((name, enc))
    if todo:
        print(f"  measuring {[n for n, _ in todo]}: frame and utterance level, every layer, on "
              f"{shown_path(cfg.work / 'data' / 'isotropy.csv', cfg.out)} (up to {cfg.iso_max_vectors} vectors per "
              "layer and level)", flush=True)
        run_units(_isotropy_one, cfg, [[t] for t in todo], "isotropy")
    rows = []
    for name, enc in encs.items():
        rows += json.loads((isotropy_unit(cfg, name, enc).folder / "rows.json").read_text())
    settings = {"encoders": {n: shown_path(e, cfg.out) for n, e in encs.items()},
                "manifest": shown_path(cfg.work / "data" / "isotropy.csv", cfg.out), "level": "both",
                "layers": None, "centred": False, "normalised": False, "max_vectors": cfg.iso_max_vectors,
                "seed": cfg.seed, "top_k": rows[0]["top_k"] if rows else 1}
    out = cfg.work / "isotropy"
    isotropy_cli.write_json(out / "isotropy.json", settings, rows)
    isotropy_cli.write_csv(out / "isotropy.csv", rows)
    return {"units_run": len(todo), "units_skipped": len(encs) - len(todo)}


# ---------------------------------------------------------------------- 5. downstream sweep
def run_folder(cfg: StudyConfig, task: str, enc_name: str, setting: str, seed: int) -> Path:
    """runs/<task>/<encoder row>/<setting>/seed<S> (fold tasks: fold<K>, trained with seed K-1)."""
    return cfg.work / "runs" / task / enc_name / setting / (cfg.fold_of(task, seed) or f"seed{seed}")


def task_hparams(cfg: StudyConfig, task: str) -> Path:
    """The recipe's hparams file: the default data's own (e.g. asr/pr on connected digits) unless the task is
    fed another folder or corpus, then baseline.yaml with --data_folder."""
    name = TASK_HPARAMS.get(task)
    if name and task not in cfg.data_folders and not any(task in REAL_CORPORA[o][2] for o in cfg.corpora
                                                          if o in REAL_CORPORA):
        path = recipe_hparams(task, name)
        if path.is_file():
            return path
    return recipe_hparams(task, "baseline")


def step_budget(cfg: StudyConfig, task: str) -> tuple:
    """(optimiser steps of every run of `task`, how they were set). A preset or --max-steps value is used as
    it is. Without one (a real corpus or --data-folder: the `real-corpus` preset) the budget is the recipe's
    epochs over the task's whole (capped) training set, the same for every low-resource setting: the
    recipe's own epochs over a 5-per-class subset would train a handful of steps. None only when the
    training set's size is unknown (IEMOCAP's folds): then the recipe's own epochs apply."""
    if cfg.max_steps.get(task) is not None:
        return cfg.max_steps[task], ("--max-steps" if cfg.option_given("--max-steps") else
                                     f"the {cfg.presets.get(task, cfg.mode)} preset's max_steps")
    n = full_train_size(cfg, task)
    if not n:
        return None, ("the recipe's own number_of_epochs" if "folds_dir" in task_source(cfg, task) else
                      "counted from the training set once the data stage has prepared it")
    overrides = cfg.task_overrides.get("all", []) + cfg.task_overrides.get(task, [])
    epochs = int(yaml_setting(task_hparams(cfg, task), overrides, "number_of_epochs"))
    batch = int(yaml_setting(task_hparams(cfg, task), overrides, "batch_size"))
    per_epoch = math.ceil(n / batch)
    return epochs * per_epoch, (f"{epochs} epochs x {per_epoch} steps of {batch} over all {n} training utterances, "
                                "for every setting")


def full_train_size(cfg: StudyConfig, task: str) -> Optional[int]:
    """Utterances in the task's whole training split as the study uses it (after `train_cap`), read from the
    source's train.csv (before the data stage has copied it), or None (folds, or no manifest yet)."""
    src = task_source(cfg, task)
    if "folds_dir" in src or not (Path(src["data_folder"]) / "train.csv").is_file():
        return None
    with open(Path(src["data_folder"]) / "train.csv", newline="", encoding="utf-8") as f:
        n = sum(1 for _ in csv.DictReader(f))
    cap = cfg.train_cap.get(task, 0)
    return min(n, cap) if cap else n


def budget_lines(cfg: StudyConfig) -> List[str]:
    """Per task, the preset its sizes come from and the step budget of its runs (printed in a run's first lines)."""
    lines = []
    for task in cfg.tasks:
        steps, why = step_budget(cfg, task)
        shown = f"{steps} steps" if steps is not None else "epochs"
        lines.append(f"  {task}: preset {cfg.presets.get(task, cfg.mode)}, budget: {shown} ({why})")
    return lines


def downstream_units(cfg: StudyConfig) -> List[tuple]:
    """(task, encoder row, setting, seed, Unit) in running order: per task and encoder, the whole training set
    first (it fills the feature cache that the smaller subsets then hit)."""
    units = []
    rows = encoder_rows(cfg)
    stamps = {}  # encoder path -> stamp, each read once
    for task in cfg.tasks:
        src = task_source(cfg, task)
        steps = step_budget(cfg, task)[0]
        settings = run_settings(cfg, task) if "folds_dir" not in src else [ALL]
        seeds = cfg.seeds_of(task)
        fingerprints = {}  # (setting, data folder) -> hash of its manifests: once a folder, not once a seed
        for st in settings:
            for seed in seeds:
                key = (st, run_data_folder(cfg, task, seed))
                if key not in fingerprints:
                    fingerprints[key] = data_fingerprint(*task_manifests(cfg, task, st, seed))
        for name in row_names(cfg, task):
            row = rows.get(name, {"overrides": []})
            for setting in settings:
                for seed in seeds:
                    path = row["path"] if name in rows else in_domain.encoder_path(cfg, name, task, seed)
                    if path not in stamps:
                        stamps[path] = encoder_stamp(path)
                    data = {"folds_dir": src["folds_dir"]} if "folds_dir" in src else \
                        {"data_folder": str(run_data_folder(cfg, task, seed))}
                    train_csv = None if (setting == ALL or "folds_dir" in data) else \
                        str(run_data_folder(cfg, task, seed) / setting_csv_name(setting))
                    spec = {"task": task, "hparams": task_hparams(cfg, task).name, "encoder": path,
                            "encoder_stamp": stamps[path], **data, "train_csv": train_csv,
                            "data_fingerprint": fingerprints[(setting, run_data_folder(cfg, task, seed))],
                            "device": cfg.device,
                            "setting": setting, "seed": seed, "max_steps": steps,
                            "eval_every_steps": cfg.eval_every_of(task),
                            # only when on: a study without patience keeps its finished runs' specs
                            **({"patience": cfg.patience[task]} if cfg.patience.get(task) else {}),
                            "overrides": row["overrides"] + cfg.task_overrides.get("all", []) +
                            cfg.task_overrides.get(task, []),
                            "feature_dtype": cfg.feature_dtype}
                    units.append((task, name, setting, seed,
                                  Unit(run_folder(cfg, task, name, setting, seed), spec,
                                       outputs=["result.json", "curve.csv"], root=cfg.out)))
    return units


def downstream_argv(cfg: StudyConfig, unit: Unit) -> List[str]:
    s = unit.spec
    data = ["--folds_dir", s["folds_dir"]] if "folds_dir" in s else ["--data_folder", s["data_folder"]]
    if s.get("train_csv"):
        data += ["--train_csv", s["train_csv"]]
    # a step limit binds only with epochs to spare; without one the recipe's own number_of_epochs runs
    steps = [] if s["max_steps"] is None else ["--number_of_epochs", "100000", "--max_steps", str(s["max_steps"])]
    steps += ["--patience", str(s["patience"])] if s.get("patience") else []  # stops before the cap once converged
    return [str(recipe_hparams(s["task"], s.get("hparams", "baseline.yaml")[:-5])), "--encoder", s["encoder"], *data,
            "--seed", str(s["seed"]),
            "--output_folder", str(unit.folder), *steps, "--eval_every_steps", str(s["eval_every_steps"]),
            "--feature_cache", "disk", "--feature_cache_dir", str(cfg.cache_dir / "features"),
            "--feature_cache_dtype", s["feature_dtype"], "--device", cfg.device, "--noprogressbar", *worker_threads(),
            "--plots", "false",  # the report draws every run's curve in figures/
            *_overrides(s["overrides"])]


class DownstreamRuns:
    """The unit function of the downstream stage (`run_units(runs, ...)`): one run per item, the runs of a group
    (one task and encoder) sharing a FeatureCachePool, so the group's utterances are loaded once. The pool goes
    with the items: a worker process gets its own copy with its group; in-process, a new group drops the
    previous group's features, and `close` drops the last one's."""

    def __init__(self):
        self.feature_caches = FeatureCachePool()

    def __call__(self, cfg: StudyConfig, item) -> dict:
        freeze_import_time_objects()
        task, unit = item[0], item[4]
        self.feature_caches.keep_for((task, unit.spec["encoder"]))
        return _downstream_one(cfg, item, self.feature_caches)

    def close(self) -> None:
        self.feature_caches.clear()


def _downstream_one(cfg: StudyConfig, item, feature_caches: Optional[FeatureCachePool] = None) -> dict:
    """In a worker or job: one downstream run through the task recipe's own main(); a failure is
    reported, not raised. feature_caches: the pool the run shares with its group's other runs."""
    from rewire_study.launch import run_recipe

    task, name, setting, seed, unit = item
    label = f"{task} {name} {setting} {unit.folder.name}"  # seed<S>, or fold<K> for a fold task
    unit.start()
    t0 = time.time()
    try:
        result = run_recipe(cfg, task, downstream_argv(cfg, unit), unit.folder / "console.txt",
                            feature_caches=feature_caches)
    except Exception as err:  # one failed run must not lose the others: counted, listed, reported
        atomic_write_text(unit.folder / "error.txt", traceback.format_exc())
        where = shown_path(unit.folder, cfg.out)
        return {"failed": True, "unit": where, "error": f"{type(err).__name__}: {err}",
                "text": f"  FAILED {label}: {type(err).__name__}: {err} (see {where}/error.txt)"}
    seconds = round(time.time() - t0, 2)
    unit.finish(seconds=seconds)
    result = result or {}
    metric = result.get("metric")
    value = result.get(f"test_{metric}")
    shown = f"test {metric} {value:.2f}" if isinstance(value, (int, float)) and not math.isnan(value) else "done"
    return {"failed": False, "seconds": seconds, "text": f"  {label}: {shown} ({result.get('steps')} steps, {seconds:.1f} s)"}


def stage_downstream(cfg: StudyConfig) -> dict:
    ensure_controls(cfg)
    units = downstream_units(cfg)
    todo = [u for u in units if not u[4].is_done()]
    runs_per_cell = ", ".join(f"{t} {len(cfg.seeds_of(t))} {'folds' if cfg.folds.get(t) else 'seeds'}"
                              for t in cfg.tasks)
    print(f"  {len(units)} runs ({len(cfg.tasks)} tasks x {len(encoder_paths(cfg))} encoder rows x "
          f"their settings x {runs_per_cell}); {len(units) - len(todo)} done before, "
          f"{len(todo)} to run in {cfg.jobs} worker(s); each run's log: <run folder>/console.txt", flush=True)
    groups = {}
    for u in todo:  # one group per task and model, whole training set first (it fills the feature cache);
        # the centre/whiten rows read the base's cached features, so they join the base's group
        groups.setdefault((u[0], u[4].spec["encoder"]), []).append(u)
    runs = DownstreamRuns()
    try:
        msgs = run_units(runs, cfg, list(groups.values()), "downstream", failures="report")
    finally:
        runs.close()  # runs made in this process (one worker) free their features
    failed = [{"unit": m["unit"], "error": m["error"]} for m in msgs if m.get("failed")]
    secs = [m["seconds"] for m in msgs if not m.get("failed")]
    return {"units": len(units), "units_run": len(msgs) - len(failed), "units_skipped": len(units) - len(todo),
            "units_failed": len(failed), "failed": failed,
            "unit_seconds_mean": round(sum(secs) / len(secs), 2) if secs else None,
            "unit_seconds_max": max(secs) if secs else None, "worker_peak_rss_mib": _worker_peak(msgs)}


def _worker_peak(msgs: List[dict]):
    peaks = [m["worker_peak_rss_mib"] for m in msgs if m.get("worker_peak_rss_mib") is not None]
    return max(peaks) if peaks else None
