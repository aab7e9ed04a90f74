"""The study's leakage audit ("What rewiring saw"), run at the start of the rewire stage, before any rewiring.

For every source of label-free training data behind an encoder row -- the rewiring manifest, and the base
encoder's own pre-training data where its folder records it -- and every task split that row is evaluated
on: the split's utterances that hold a recording of that source (by audio content, so renamed copies and
constructed utterances count: rewire_lib.data.leakage), the speakers both have, the share of the split's words
in the source's transcripts, and the transcripts the rewiring consumed beside each setting's labelled
training utterances. Written to OUT/study/audit.json; the report shows it (OUT/audit.csv, summary.md).

A dev or test recording inside the rewiring data is an error (StageError naming task, split, count and
first files) unless `--allow-rewire-overlap` is given; then the report marks the affected cells. The base
encoder's pre-training overlaps are reported and marked, never an error: that encoder is given.

Adding a source (e.g. rewiring per speaker fold): return one more `AuditSource` from `audit_sources`,
with the manifests it trained on, the encoder rows trained on it and the targets (task, fold, split) those
rows are evaluated on.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional

from rewire_lib.files.atomic import atomic_write_json
from rewire_lib.data.leakage import (FingerprintCache, RecordingSet, compare, manifest_wavs, pretraining_manifests,
                                read_set, transcripts)
from rewire_lib.files.logs import atomic_write_csv
from rewire_study import in_domain
from rewire_study.config import BASE, StudyConfig
from rewire_study.layout import encoder_rows, read_sizes, run_data_folder, task_source, tts_views
from rewire_study.units import StageError, shown_path

AUDIT_FILE = "audit.json"
ALLOW_OPTION = "--allow-rewire-overlap"
HELD_OUT = ("dev", "test")
REWIRING, PRETRAINING = "rewiring", "pre-training"
MARK = "⚠"  # beside a result whose encoder saw that task's dev or test audio


class Target(NamedTuple):
    """One split an encoder row is evaluated on (fold: the speaker fold, None for a task without)."""
    task: str
    fold: Optional[str]
    split: str
    manifest: Path


@dataclass
class AuditSource:
    """Label-free training data behind some encoder rows: its manifests (minus `heldout` files, by path),
    the rows trained on it, the splits those rows are evaluated on, and the views that render its
    transcripts with TTS."""
    name: str
    kind: str  # REWIRING (an overlap with dev/test is an error) or PRETRAINING (reported only)
    manifests: List[Path]
    encoders: List[str]
    targets: List[Target]
    heldout: List[Path] = field(default_factory=list)
    tts_views: List[str] = field(default_factory=list)
    note: str = ""


def audit_path(cfg: StudyConfig) -> Path:
    return cfg.work / AUDIT_FILE


def fingerprint_cache_path(cfg: StudyConfig) -> Path:
    return cfg.cache_dir / "audio_fingerprints.json"


def task_targets(cfg: StudyConfig, tasks: List[str]) -> List[Target]:
    """The study's manifests of `tasks` (what the data stage wrote): each fold's train/dev/test for a fold
    task, the task folder's otherwise; a folds_dir task (IEMOCAP) its own fold files."""
    out = []
    for task in tasks:
        src = task_source(cfg, task)
        if "folds_dir" in src:
            for csv in sorted(Path(src["folds_dir"]).rglob("*.csv")):
                if csv.stem in ("train", "dev", "valid", "test"):
                    out.append(Target(task, csv.parent.name, "dev" if csv.stem == "valid" else csv.stem, csv))
            continue
        for seed in (cfg.seeds_of(task) if cfg.folds.get(task) else [None]):
            folder = run_data_folder(cfg, task, seed)
            fold = cfg.fold_of(task, seed) if seed is not None else None
            out += [Target(task, fold, split, folder / f"{split}.csv") for split in ("train", "dev", "test")]
    return out


def audit_sources(cfg: StudyConfig) -> List[AuditSource]:
    """Every label-free training set behind the study's encoder rows: the rewiring manifest (every view, every
    task), each in-domain rewiring set (rewire_study.in_domain: its fold's splits only) and the base encoder's
    pre-training data when its folder records it."""
    targets = task_targets(cfg, cfg.tasks)
    sources = []
    if cfg.views:
        sources.append(AuditSource(REWIRING, REWIRING, [cfg.work / "data" / "rewire" / "train.csv"], list(cfg.views),
                                   targets, tts_views=tts_views(cfg)))
    for d in in_domain.domains(cfg):  # each fold's own rewiring, against the splits of that fold's runs only
        own = [t for t in task_targets(cfg, list(d.tasks)) if t.fold == d.fold]
        sources.append(AuditSource(f"{REWIRING} in-domain {d.name}", REWIRING, [d.manifest(cfg)],
                                   in_domain.row_names(cfg), own, tts_views=tts_views(cfg)))
    pre = pretraining_manifests(cfg.encoders[BASE], cfg.data_dir) if Path(cfg.encoders[BASE]).is_dir() else None
    if pre:
        base_rows = [n for n, r in encoder_rows(cfg).items() if r["path"] == cfg.encoders[BASE]] + list(cfg.views) \
            + in_domain.row_names(cfg)
        note = "not prepared here, not audited: " + ", ".join(shown_path(m, cfg.out) for m in pre["missing"]) \
            if pre["missing"] else ""
        sources.append(AuditSource(PRETRAINING, PRETRAINING, pre["train"], base_rows, targets,
                                   heldout=pre["heldout"], note=note))
    return sources


def audit_source(cfg: StudyConfig, source: AuditSource, cache: FingerprintCache, splits: Dict[Path, RecordingSet],
                 sizes: dict) -> dict:
    """audit.json's entry of one source: what it is and one row per target (split)."""
    data = read_set(source.manifests, cache, exclude_wavs=manifest_wavs(source.heldout))
    rows = []
    for t in source.targets:
        if t.manifest not in splits:
            splits[t.manifest] = read_set([t.manifest], cache)
        found = compare(data, splits[t.manifest])
        leak = t.split in HELD_OUT and found["shared_utterances"] > 0
        rows.append({"task": t.task, "fold": t.fold, "split": t.split, "manifest": shown_path(t.manifest, cfg.out),
                     **found, "held_out_leak": leak, "error": leak and source.kind == REWIRING})
    return {"name": source.name, "kind": source.kind, "encoders": source.encoders,
            "manifests": [shown_path(m, cfg.out) for m in source.manifests],
            "minus_heldout": [shown_path(m, cfg.out) for m in source.heldout], "note": source.note,
            "utterances": len(data.ids), "recordings": len(data.fingerprints()),
            "speakers": len(data.speaker_set()), "vocabulary": len(data.vocabulary()),
            "transcripts": dict(transcripts(data), views=source.tts_views) if source.tts_views else None,
            "labelled_train": {t: _labelled(sizes.get(t, {})) for t in cfg.tasks}, "rows": rows}


def _labelled(info: dict) -> Dict[str, int]:
    """Labelled training utterances of each setting of a task (sizes.json; a fold task: one fold's)."""
    return {s: e["utterances"] for s, e in info.get("settings", {}).items()}


def run_audit(cfg: StudyConfig) -> dict:
    """Audit every source, write audit.json, and raise StageError on a rewiring overlap with a dev or test
    split unless `cfg.allow_rewire_overlap`. Returns counts for stages.json."""
    t0 = time.time()
    cache = FingerprintCache(fingerprint_cache_path(cfg))
    splits: Dict[Path, RecordingSet] = {}
    sizes = read_sizes(cfg)
    sources = audit_sources(cfg)
    missing = sorted({str(m) for s in sources for m in s.manifests + [t.manifest for t in s.targets]
                      if not Path(m).is_file()})
    if missing:
        raise StageError(f"leakage audit: {shown_path(missing[0], cfg.out)} does not exist"
                         f"{f' (and {len(missing) - 1} more manifests)' if len(missing) > 1 else ''}; "
                         "did the data stage run?")
    entries = [audit_source(cfg, s, cache, splits, sizes) for s in sources]
    cache.save()
    seconds = round(time.time() - t0, 2)
    audit = {"allow_rewire_overlap": cfg.allow_rewire_overlap, "seconds": seconds,
             "files_read": cache.read, "files_cached": cache.hits, "sources": entries}
    atomic_write_json(audit_path(cfg), audit)
    leaks = [(e["name"], r) for e in entries for r in e["rows"] if r["held_out_leak"]]
    print(f"  audit of {len(entries)} source(s) in {seconds:.1f} s ({cache.read} files read, {cache.hits} cached): "
          f"{len(leaks)} dev/test split(s) share recordings -> {shown_path(audit_path(cfg), cfg.out)}", flush=True)
    errors = [r for e in entries for r in e["rows"] if r["error"]]
    if errors and not cfg.allow_rewire_overlap:
        raise StageError(overlap_message(cfg, errors))
    return {"audit_seconds": seconds, "audit_files_read": cache.read, "audit_held_out_leaks": len(leaks)}


def where(row: dict) -> str:
    return f"{row['task']} {row['split']}" + (f" ({row['fold']})" if row.get("fold") else "")


def overlap_message(cfg: StudyConfig, errors: List[dict]) -> str:
    """One line: each overlapping task split with its count and first files, what to do."""
    parts = [f"{where(r)}: {r['shared_utterances']} of {r['utterances']} utterances hold rewiring recordings "
             f"(first: {', '.join(r['first'][:3])}; from {', '.join(r['first_matches'][:3])})" for r in errors[:3]]
    more = f"; and {len(errors) - 3} more split(s)" if len(errors) > 3 else ""
    return (f"the rewiring data holds dev/test recordings: {'; '.join(parts)}{more} "
            f"(see {shown_path(audit_path(cfg), cfg.out)}); rewire on other data (--rewire-csv) or pass "
            f"{ALLOW_OPTION} to run anyway (the report then marks the affected results)")


# ---------------------------------------------------------------------- report
def read_audit(cfg: StudyConfig) -> Optional[dict]:
    path = audit_path(cfg)
    return json.loads(path.read_text()) if path.is_file() else None


def marked_cells(audit: Optional[dict]) -> Dict[tuple, List[str]]:
    """(task, encoder row) -> the sources whose dev/test audio that row saw."""
    out: Dict[tuple, List[str]] = {}
    for e in (audit or {}).get("sources", []):
        for task in sorted({r["task"] for r in e["rows"] if r["held_out_leak"]}):
            for enc in e["encoders"]:
                out.setdefault((task, enc), []).append(e["name"])
    return out


def mark(marks: Dict[tuple, List[str]], task: str, enc: str) -> str:
    """The mark of a result cell ('' when its encoder saw none of the task's dev/test audio)."""
    return f" {MARK}" if (task, enc) in marks else ""


def pooled(rows: List[dict]) -> dict:
    """One task split over its folds: counts summed, speakers united, words pooled."""
    tokens = sum(r["word_tokens"] for r in rows)
    hits = [r["word_tokens_in_source"] for r in rows]
    share = None if any(h is None for h in hits) or not tokens else sum(hits) / tokens
    return {"folds": len(rows), "folds_hit": sum(r["shared_utterances"] > 0 for r in rows),
            "utterances": sum(r["utterances"] for r in rows),
            "shared_utterances": sum(r["shared_utterances"] for r in rows),
            "shared_recordings": sum(r["shared_recordings"] for r in rows),
            "first": [i for r in rows for i in r["first"]][:3],
            "shared_speakers": sorted({s for r in rows for s in r["shared_speakers"]}),
            "word_share": share, "leak": any(r["held_out_leak"] for r in rows)}


def _group(entry: dict) -> List[tuple]:
    """(tasks, split, pooled) of one source, in task then train/dev/test order; fold tasks pooled, and tasks
    with the same findings on the same data (ASR and PR on connected digits) in one row."""
    groups: Dict[tuple, List[dict]] = {}
    for r in entry["rows"]:
        groups.setdefault((r["task"], r["split"]), []).append(r)
    merged: Dict[tuple, tuple] = {}
    for (task, split), rows in groups.items():
        p = pooled(rows)
        key = (split, json.dumps(p, sort_keys=True), tuple(r["utterances"] for r in rows))
        tasks = merged.get(key, ([], split, p))[0]
        merged[key] = (tasks + [task], split, p)
    return [(", ".join(tasks), split, p) for tasks, split, p in merged.values()]


def _share(v) -> str:
    return "n/a" if v is None else f"{100 * v:.0f} %"


def audit_markdown(cfg: StudyConfig, audit: Optional[dict]) -> List[str]:
    """summary.md's "What rewiring saw" section."""
    L = ["## What rewiring saw\n"]
    if not audit:
        return L + ["No audit (audit.json is written by the rewire stage).\n"]
    L.append("For each source of label-free training data (the rewiring manifest; the base encoder's own "
             "pre-training data, as its folder records it) and each task split: the split's utterances holding a "
             "recording of the source, matched by audio content (a renamed or re-encoded lossless copy counts, and "
             "a constructed utterance such as a connected-digit string counts through the recordings it was cut "
             "from), the speakers both have, and the share of the split's transcript words that occur in the "
             "source's transcripts. Tasks run on speaker folds: all folds together (per fold: audit.csv). "
             f"{MARK} marks a dev/test split holding source recordings; in the results above it marks every result "
             "of an encoder row trained on that source. The base encoder's pre-training is given, so its overlaps "
             f"are reported, not refused; a rewiring overlap stops the study unless `{ALLOW_OPTION}` is given "
             f"(this study: {'given' if audit.get('allow_rewire_overlap') else 'not given'}). Audit: "
             f"{audit['seconds']:.1f} s, {audit['files_read']} files read, {audit['files_cached']} from the cache.\n")
    for e in audit["sources"]:
        L.append(f"**{e['name']}** ({', '.join(f'`{m}`' for m in e['manifests']) or 'no manifest prepared'}"
                 + (f" minus the files of {len(e['minus_heldout'])} held-out manifests" if e["minus_heldout"] else "")
                 + f"): {e['utterances']} utterances, {e['recordings']} recordings, {e['speakers']} speakers, "
                 f"{e['vocabulary']} distinct words; encoder rows trained on it: {', '.join(e['encoders'])}."
                 + (f" {e['note']}." if e["note"] else "") + "\n")
        L.append("| task | split | utterances | holding source recordings (first) | source recordings | "
                 "shared speakers | words in source transcripts |")
        L.append("|---|---|---|---|---|---|---|")
        for task, split, p in _group(e):
            folds = f" ({p['folds_hit']}/{p['folds']} folds)" if p["folds"] > 1 else ""
            first = f" ({', '.join(p['first'])})" if p["first"] else ""
            spk = f"{len(p['shared_speakers'])}: {', '.join(p['shared_speakers'][:6])}" if p["shared_speakers"] else "0"
            L.append(f"| {task} | {split}{' ' + MARK if p['leak'] else ''} | {p['utterances']} | "
                     f"{p['shared_utterances']}{folds}{first} | {p['shared_recordings']} | {spk} | "
                     f"{_share(p['word_share'])} |")
        L.append("")
        consumed = e["transcripts"]
        if e["kind"] == REWIRING:
            used = (f"{consumed['distinct']} distinct of {consumed['total']} transcripts per epoch "
                    f"({', '.join(consumed['views'])})") if consumed else "none (no view renders transcripts)"
            labelled = "; ".join(f"{t} " + ", ".join(f"{s} {n}" for s, n in v.items())
                                 for t, v in e["labelled_train"].items() if v)
            L.append(f"Transcripts the rewiring consumed: {used}; labelled training utterances per setting "
                     f"(a fold task: per fold): {labelled or 'n/a'}.\n")
    return L


AUDIT_CSV_FIELDS = ["source", "kind", "task", "fold", "split", "utterances", "shared_utterances", "first",
                    "shared_recordings", "first_matches", "shared_speakers", "word_tokens", "word_share",
                    "held_out_leak", "transcripts_distinct", "transcripts_total"]


def write_audit_csv(path: Path, audit: Optional[dict]) -> None:
    """OUT/audit.csv: every (source, task, fold, split) row of audit.json."""
    rows = []
    for e in (audit or {}).get("sources", []):
        t = e["transcripts"] or {}
        for r in e["rows"]:
            rows.append({**{k: r.get(k) for k in AUDIT_CSV_FIELDS}, "source": e["name"], "kind": e["kind"],
                         "first": " ".join(r["first"]), "first_matches": " ".join(r["first_matches"]),
                         "shared_speakers": " ".join(r["shared_speakers"]),
                         "transcripts_distinct": t.get("distinct"), "transcripts_total": t.get("total")})
    atomic_write_csv(path, AUDIT_CSV_FIELDS, rows)
