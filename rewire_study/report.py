"""The report: OUT/summary.md, OUT/summary.csv (long form) and OUT/figures/*.png, computed only from
the files the stages wrote (result.json and curve.csv of every run, the isotropy rows, stages.json).
No number in it is typed by hand."""
from __future__ import annotations

import csv
import io
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from rewire_lib.analysis.stats import BETTER, NO_DIFFERENCE as NO_DIFF, WORSE, mean_std
from rewire_lib.files.atomic import atomic_write_bytes, atomic_write_text
from rewire_lib.files.logs import pyplot
from rewire_study.audit import MARK, audit_markdown, mark, marked_cells, read_audit, write_audit_csv
from rewire_study.config import BASE, CONTROLS, StudyConfig
from rewire_study.comparison import N_BOOT, NO_FILE, PREDICTIONS, compare_final, convergence, read_predictions
from rewire_study.stages import (continue_by_hand, downstream_units, encoder_paths, isotropy_unit, model_paths,
                                 read_sizes, row_names, step_budget, task_settings)
from rewire_study.units import SAMPLE_EVERY_S, portable, shown_path, this_invocation

CSV_FIELDS = ["section", "task", "setting", "encoder", "seed", "level", "layer", "quantity", "value"]
ISO_MEASURES = [("iw", "I(W)"), ("iw_centred", "I(W) centred"), ("avg_cosine", "avg cosine"), ("isoscore", "IsoScore")]
NOT_REACHED = "not reached"
CAP_MARK = "†"  # a cell with runs that hit the step cap (max_steps) before their patience ran out


# ---------------------------------------------------------------------- reading
def read_curve(path: Path, metric: str) -> List[tuple]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    out = []
    for r in rows:
        v = r.get(f"dev_{metric}")
        if v not in (None, ""):
            out.append((int(float(r["step"])), float(v)))
    return out


def collect_runs(cfg: StudyConfig) -> Dict[tuple, dict]:
    """{(task, encoder, setting, seed): {"result", "curve": [(step, dev)], "predictions" (or None), "folder"}} for
    finished runs: a run counts only when its unit is done with the current spec (same settings, manifests'
    content and encoder files), so a stale folder left by other data or another encoder is never reported."""
    runs = {}
    for task, name, setting, seed, unit in downstream_units(cfg):
        res_path = unit.folder / "result.json"
        if not unit.is_done() or not res_path.is_file():
            continue
        result = json.loads(res_path.read_text())
        curve_path = unit.folder / "curve.csv"
        curve = read_curve(curve_path, result["metric"]) if curve_path.is_file() else []
        pred_path = unit.folder / PREDICTIONS
        preds = read_predictions(pred_path) if pred_path.is_file() else None
        runs[(task, name, setting, seed)] = {"result": result, "curve": curve, "predictions": preds,
                                             "folder": unit.folder}
    return runs


# ---------------------------------------------------------------------- computing
def cell_settings(cfg: StudyConfig, task: str) -> List[str]:
    return task_settings(cfg, task)


def compute(cfg: StudyConfig, runs: Dict[tuple, dict]) -> dict:
    """Per task and setting: metric info, per-encoder test stats, the paired comparison with base and the
    censored convergence (rewire_study.comparison)."""
    cells = {}
    for task in cfg.tasks:
        encoders = row_names(cfg, task)
        for setting in cell_settings(cfg, task):
            present = {k: v for k, v in runs.items() if k[0] == task and k[2] == setting}
            if not present:
                continue
            any_res = next(iter(present.values()))["result"]
            metric, hib = any_res["metric"], bool(any_res["higher_is_better"])
            cell = {"metric": metric, "higher_is_better": hib, "encoders": {}}
            seeds = cfg.seeds_of(task)
            base_runs = {s: present[(task, BASE, setting, s)] for s in seeds if (task, BASE, setting, s) in present}
            base_preds = {s: r["predictions"] for s, r in base_runs.items() if r["predictions"] is not None}
            base_curves = {s: r["curve"] for s, r in base_runs.items()}
            for enc in encoders:
                per_seed = {s: present[(task, enc, setting, s)] for s in seeds if (task, enc, setting, s) in present}
                tests = {s: r["result"].get(f"test_{metric}") for s, r in per_seed.items()}
                m, sd = mean_std(list(tests.values()))
                e = {"tests": tests, "mean": m, "std": sd, "n": len([v for v in tests.values() if v is not None]),
                     "num_train": sorted({r["result"].get("num_train") for r in per_seed.values()}, key=str),
                     "steps_run": sorted({r["result"].get("steps") for r in per_seed.values()}, key=str),
                     "ends": [(r["result"].get("stop_reason"), r["result"].get("steps")) for r in per_seed.values()]}
                e["at_cap"] = sum(reason == "cap" for reason, _ in e["ends"])
                if per_seed and base_runs:
                    e["conv"] = convergence(base_curves, {s: r["curve"] for s, r in per_seed.items()}, hib,
                                            with_speedup=enc != BASE)
                else:
                    e["conv"] = None
                if enc == BASE or not per_seed:
                    e["compare"] = None
                else:
                    preds = {s: r["predictions"] for s, r in per_seed.items() if r["predictions"] is not None}
                    if len(preds) < len(per_seed) or len(base_preds) < len(base_runs):
                        e["compare"] = {"na": NO_FILE}
                    else:
                        e["compare"] = compare_final(base_preds, preds, hib, folds=bool(cfg.folds.get(task)))
                cell["encoders"][enc] = e
            cells[(task, setting)] = cell
    return cells


def isotropy_rows(cfg: StudyConfig) -> List[dict]:
    path = cfg.work / "isotropy" / "isotropy.json"
    if not path.is_file():
        return []
    return json.loads(path.read_text())["rows"]


def isotropy_provenance(cfg: StudyConfig, stages: dict) -> str:
    """Which invocation the isotropy and embedding numbers come from: this one, an earlier one with the same
    encoders and clips (named), or none that fits this study's settings ("Left out ...": they are not shown)."""
    entry = stages.get("stages", {}).get("isotropy")
    if entry is not None and entry.get("invocation") == (stages.get("invocation") or {}).get("id"):
        return ""
    if not all(isotropy_unit(cfg, n, e).is_done() for n, e in model_paths(cfg).items()):
        return ("Left out: the isotropy measurements in `study/isotropy/` are not of this study's encoders and clips "
                "(run the isotropy stage).")
    when = f" of {entry['finished_at']}" if entry else ""
    return (f"Measured by an earlier invocation{when}, on the same encoders (by the stamp of their files) and the "
            f"same clips (`{shown_path(cfg.work / 'data' / 'isotropy.csv', cfg.out)}`, by content).")


def isotropy_summary(rows: List[dict]) -> Dict[tuple, dict]:
    """{(encoder, level): {measure: {"mean": over layers, "last": last layer}}}"""
    groups = defaultdict(list)
    for r in rows:
        groups[(r["encoder"], r["level"])].append(r)
    out = {}
    for key, rs in groups.items():
        rs = sorted(rs, key=lambda r: r["layer"])
        out[key] = {m: {"mean": sum(float(r[m]) for r in rs) / len(rs), "last": float(rs[-1][m]),
                        "last_layer": rs[-1]["layer"]} for m, _ in ISO_MEASURES}
    return out


# ---------------------------------------------------------------------- formatting
def fmt(v, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.{digits}f}"


def fmt_small(v, digits: int = 3) -> str:
    """Like fmt, but values that would print as 0.000 (I(W) is often 1e-18) in scientific notation."""
    if isinstance(v, (int, float)) and not math.isnan(v) and v != 0 and abs(v) < 10 ** -digits:
        return f"{v:.1e}"
    return fmt(v, digits)


def fmt_interval(low, high, digits: int = 2) -> str:
    return f"[{fmt_bound(low, digits)}, {fmt_bound(high, digits)}]"


def fmt_bound(v, digits: int = 2) -> str:
    if isinstance(v, float) and math.isinf(v):
        return "∞" if v > 0 else "-∞"
    return fmt(v, digits)


def signed(v, digits: int = 2) -> str:
    return "n/a" if v is None else ("+" if v >= 0 else "") + fmt(v, digits)


def conv_text(c: Optional[dict]) -> str:
    """Median steps to the base's best dev [95 % interval] (reached / censored of runs)."""
    if not c:
        return "n/a"
    med = NOT_REACHED if c["median"] is None else fmt(c["median"], 0)
    return f"{med} {fmt_interval(c['ci_low'], c['ci_high'], 0)} ({c['n_reached']} reached, {c['n_censored']} censored)"


def speedup_text(c: Optional[dict]) -> str:
    if not c or c.get("speedup") is None:
        return "n/a" if not c else "n/a (a median not reached)"
    return f"{fmt_bound(c['speedup'])}x {fmt_interval(c['speedup_low'], c['speedup_high'])}"


def compare_text(e: dict, enc: str) -> Tuple[str, str]:
    """(difference [95 % interval], verdict) of a row against base."""
    if enc == BASE:
        return "—", "baseline"
    c = e.get("compare")
    if not c:
        return "n/a", "n/a"
    if "na" in c:
        return c["na"], "n/a"
    return f"{signed(c['diff'])} {fmt_interval(c['ci_low'], c['ci_high'])}", c["verdict"]


def setting_label(setting: str) -> str:
    if setting == "all":
        return "all"
    if setting.startswith("k"):
        return f"{setting[1:]} per class"
    return f"fraction {setting[4:]}"


# ---------------------------------------------------------------------- writing
def write_csv(path: Path, cfg: StudyConfig, cells: dict, iso_rows: List[dict], stages: dict,
              rewiring: Optional[dict] = None) -> None:
    rows = []
    add = lambda **kw: rows.append({f: kw.get(f, "") for f in CSV_FIELDS})  # noqa: E731
    for (task, setting), cell in cells.items():
        q = f"test_{cell['metric']}"
        for enc, e in cell["encoders"].items():
            common = dict(task=task, setting=setting, encoder=enc)
            for s, v in e["tests"].items():
                add(section="test", seed=s, quantity=q, value=v, **common)
            add(section="test", seed="mean", quantity=q, value=e["mean"], **common)
            add(section="test", seed="std", quantity=q, value=e["std"], **common)
            add(section="test", seed="n", quantity=q, value=e["n"], **common)
            add(section="test", seed="all", quantity="num_train", value="/".join(map(str, e["num_train"])), **common)
            add(section="test", seed="all", quantity="runs_at_cap", value=e["at_cap"], **common)
            c = e.get("compare")
            if c and "na" not in c:
                for k in ("diff", "ci_low", "ci_high", "verdict", "n_seeds", "n_utts"):
                    add(section="difference_to_base", seed="all", quantity=k, value=c[k], **common)
            elif c:
                add(section="difference_to_base", seed="all", quantity="verdict", value=c["na"], **common)
            v = e.get("conv")
            if v:
                for s, t, cens in zip(v["seeds"], v["times"], v["censored_at"]):
                    add(section="convergence", seed=s, quantity="steps_to_base_best",
                        value=NOT_REACHED if t is None else t, **common)
                    if t is None:
                        add(section="convergence", seed=s, quantity="censored_at", value=cens, **common)
                for k in ("median", "ci_low", "ci_high", "n_reached", "n_censored", "speedup", "speedup_low",
                          "speedup_high"):
                    add(section="convergence", seed="all", quantity=k,
                        value=NOT_REACHED if (k == "median" and v[k] is None) else v[k], **common)
    for r in iso_rows:
        for m, _ in ISO_MEASURES:
            add(section="isotropy", encoder=r["encoder"], level=r["level"], layer=r["layer"], quantity=m, value=r[m])
    for (enc, level), d in isotropy_summary(iso_rows).items():
        for m, _ in ISO_MEASURES:
            add(section="isotropy", encoder=enc, level=level, layer="mean", quantity=m, value=d[m]["mean"])
    for view, info in (rewiring or {}).get("loss", {}).items():
        for k in ("steps", "first", "last"):
            add(section="rewiring_loss", encoder=view, quantity=k, value=info[k])
    for enc, info in (rewiring or {}).get("embedding", {}).items():
        for k in ("alignment", "uniformity", "isoscore", "avg_cosine", "n_clips"):
            add(section="embedding", encoder=enc, quantity=k, value=info[k])
    for name, st in this_invocation(stages).items():
        for q in ("wall_time_s", "work_time_s"):
            add(section="stage", task=name, quantity=q, value=st.get(q))
        add(section="stage", task=name, quantity="peak_rss_mib", value=st["peak_rss_mib"]["self"])
        add(section="stage", task=name, quantity="peak_tree_pss_mib", value=st.get("peak_tree_pss_mib"))
    buf = io.StringIO()
    w = csv.DictWriter(buf, CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in r.items()})
    atomic_write_text(path, buf.getvalue())


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    pyplot().close(fig)
    atomic_write_bytes(path, buf.getvalue())


def plot_convergence(path: Path, task: str, setting: str, cell: dict, runs: dict, seeds: List[int],
                     over: str = "seeds") -> None:
    """One line per encoder (mean dev metric over seeds, or folds, at each logged step) with a min-max band."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, enc in enumerate(cell["encoders"]):
        by_step = defaultdict(list)
        for s in seeds:
            run = runs.get((task, enc, setting, s))
            if run:
                for step, v in run["curve"]:
                    by_step[step].append(v)
        if not by_step:
            continue
        steps = sorted(by_step)
        mean = [sum(by_step[s]) / len(by_step[s]) for s in steps]
        ax.plot(steps, mean, color=f"C{i}", lw=1.6, label=f"{enc} (n={max(len(v) for v in by_step.values())})")
        ax.fill_between(steps, [min(by_step[s]) for s in steps], [max(by_step[s]) for s in steps],
                        color=f"C{i}", alpha=0.15, lw=0)
    targets = [t for t in ((cell["encoders"].get(BASE) or {}).get("conv") or {}).get("targets", [])]
    if targets:
        ax.axhline(sum(targets) / len(targets), color="k", ls=":", lw=1, label="base's best dev (mean)")
    ax.set_xlabel("training step")
    ax.set_ylabel(f"dev {cell['metric']} (%)" + (" - higher is better" if cell["higher_is_better"] else
                                                  " - lower is better"))
    ax.set_title(f"{task.upper()}, {setting_label(setting)}: dev metric vs steps (band: min-max over {over})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _save(fig, path)


def rewiring_info(cfg: StudyConfig) -> dict:
    """Each view's loss curve (loss.csv of its rewiring run) and alignment/uniformity of every model on the
    held-out clips (embedding.json of its isotropy unit)."""
    loss, emb = {}, {}
    for view in cfg.views:
        path = cfg.work / "rewire" / view / "loss.csv"
        if not path.is_file():
            continue
        with open(path, newline="") as f:
            pts = [(int(float(r["step"])), float(r["loss"])) for r in csv.DictReader(f) if r.get("loss") not in (None, "")]
        if pts:
            k = max(1, len(pts) // 10)  # first and last tenth of the steps
            loss[view] = {"curve": pts, "steps": pts[-1][0], "first": sum(v for _, v in pts[:k]) / k,
                          "last": sum(v for _, v in pts[-k:]) / k, "window": k}
    for name in model_paths(cfg):
        path = cfg.work / "isotropy" / name / "embedding.json"
        if path.is_file():
            found = json.loads(path.read_text())
            emb[name] = found["model"]
            for mode, info in found.items():
                if mode != "model":
                    emb[CONTROLS.get(mode, mode)] = info
    return {"loss": loss, "embedding": emb}


def plot_rewiring_loss(path: Path, loss: dict) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (view, info) in enumerate(loss.items()):
        steps, vals = [p[0] for p in info["curve"]], [p[1] for p in info["curve"]]
        ax.plot(steps, vals, color=f"C{i}", lw=0.7, alpha=0.35)
        w = max(1, len(vals) // 20)
        smooth = [sum(vals[max(0, j - w + 1):j + 1]) / len(vals[max(0, j - w + 1):j + 1]) for j in range(len(vals))]
        ax.plot(steps, smooth, color=f"C{i}", lw=1.8, label=f"{view} (running mean of {w})")
    ax.set_xlabel("rewiring step")
    ax.set_ylabel("contrastive loss")
    ax.set_title("Rewiring loss per view (loss.csv of each rewiring run)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_isotropy(path: Path, rows: List[dict]) -> None:
    """Per layer: I(W) on a log scale (it spans orders of magnitude), average cosine and IsoScore."""
    plt = pyplot()
    panels = [("iw", "I(W), log scale"), ("avg_cosine", "average cosine"), ("isoscore", "IsoScore")]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.9))
    encoders = list(dict.fromkeys(r["encoder"] for r in rows))
    styles = {"frame": "-", "utterance": "--"}
    for ax, (key, title) in zip(axes, panels):
        for i, enc in enumerate(encoders):
            for level, ls in styles.items():
                pts = sorted((r["layer"], float(r[key])) for r in rows if r["encoder"] == enc and r["level"] == level)
                if key == "iw":
                    pts = [(x, max(y, 1e-300)) for x, y in pts]
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], ls, marker="o", ms=3, color=f"C{i}",
                            label=f"{enc} ({level})")
        if key == "iw":
            ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("layer")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    _save(fig, path)


def _steps(n) -> str:
    return "the recipe's epochs" if n is None else str(n)


def budget_text(cfg: StudyConfig, task: str) -> str:
    """A task's training budget per run: its patience (dev evaluations without a new best), the evaluation
    interval and the step cap."""
    cap, patience, every = step_budget(cfg, task)[0], cfg.patience.get(task), cfg.eval_every_of(task)
    if not patience:
        return f"{_steps(cap)} steps (no patience), dev every {every}"
    return (f"until {patience} dev evaluations (every {every} steps, so {patience * every} steps) bring no new best, "
            f"at most {_steps(cap)} steps")


def stops_text(ends: List[tuple]) -> str:
    """How a task's finished runs ended ((result.json's stop_reason, steps) per run) and how many steps they ran."""
    reasons = defaultdict(int)
    for reason, _ in ends:
        reasons[reason or "unrecorded"] += 1
    steps = sorted(n for _, n in ends if isinstance(n, (int, float)))
    span = f"; steps run {steps[0]}-{steps[-1]} (median {steps[len(steps) // 2]})" if steps else ""
    return ", ".join(f"{n} on {reason}" for reason, n in sorted(reasons.items())) + span


def budget_lines(cfg: StudyConfig, cells: dict) -> List[str]:
    """Per task: the budget each run had and how the finished runs ended; the final comparison holds for converged
    runs only where none hit the cap (those cells carry CAP_MARK)."""
    L = ["**Training budget per run** (the test metric is always that of the best-dev checkpoint; a run stops on "
         "*patience* once its dev metric has stopped improving, on the *cap* while it may still improve, on *epochs* "
         "when the recipe's own epochs ran out):\n"]
    for task in cfg.tasks:
        ends = [end for (t, _), cell in cells.items() if t == task for e in cell["encoders"].values() for end in e["ends"]]
        ended = f" Runs ended: {stops_text(ends)}." if ends else ""
        L.append(f"- **{task}**: {budget_text(cfg, task)}.{ended}")
    return L + [""]


def cap_mark(e: dict) -> str:
    """' †k/n' for a cell where k of its n runs hit the step cap, else ''."""
    return f" {CAP_MARK}{e['at_cap']}/{len(e['tests'])}" if e.get("at_cap") else ""


def machine() -> str:
    """Cores and memory of the machine the report was written on (the one that ran the study's stages)."""
    import os
    import platform

    mem = "n/a"
    try:
        with open("/proc/meminfo") as f:
            kb = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
        mem = f"{kb / 2 ** 20:.1f} GiB"
    except (OSError, StopIteration, ValueError):
        pass
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpus} CPU cores available ({os.cpu_count()} in the machine), {mem} memory, {platform.machine()}, " \
           f"{platform.system()}"


def shown_command(cfg: StudyConfig) -> str:
    import shlex

    argv = portable(list(cfg.command or ["./run_all.sh"]), cfg.out)
    return " ".join(shlex.quote(x) for x in argv)


def what_ran(cfg: StudyConfig) -> List[str]:
    """The data sizes actually used per task (from the data stage's sizes.json), each setting's training
    utterances, and which settings are the same subset."""
    sizes = read_sizes(cfg)
    L = ["## What ran\n",
         "Training utterances per task (of those available) and per low-resource setting; dev and test sets are "
         "used whole unless a cap was set. Each setting is a distinct nested subset (k per class: the first k of "
         "each class in a seeded hash order; fractions: rewire_lib.data.subsets).\n",
         "| task | preset | source | train | dev | test | settings (training utterances) | step cap |",
         "|---|---|---|---|---|---|---|---|"]
    used = lambda info, k: (f"{info[k]} of {info[k + '_available']}" if f"{k}_available" in info  # noqa: E731
                            else str(info.get(k, "n/a")))
    same, fold_notes = [], []
    for task in cfg.tasks:
        info = sizes.get(task, {})
        if "folds_dir" in info:
            L.append(f"| {task} | {info.get('preset', cfg.presets.get(task))} | {info['folds_dir']} | folds | folds | "
                     f"folds | all | {_steps(step_budget(cfg, task)[0])} |")
            continue
        sets = info.get("settings", {})
        shown = ", ".join(f"{setting_label(k)}: {v['utterances']}" for k, v in sets.items())
        same += [f"{task} {setting_label(k)} = {setting_label(v['same_as'])}" for k, v in sets.items() if v["same_as"]]
        folds = info.get("folds", {})
        each = f" each of {len(folds)} folds" if folds else ""
        L.append(f"| {task} | {info.get('preset', cfg.presets.get(task))} | {info.get('source', 'n/a')} | "
                 f"{used(info, 'train')}{each} | {used(info, 'dev')}{each} | {used(info, 'test')}{each} | "
                 f"{shown or 'n/a'} | {_steps(step_budget(cfg, task)[0])} |")
        if folds:
            fold_notes.append(f"{task}: " + ", ".join(f"{name} {'+'.join(f.get('test_speakers', []))}"
                                                       for name, f in folds.items()))
    if "rewire" in sizes:
        r = sizes["rewire"]
        L.append(f"| rewiring | {r.get('preset')} | {r.get('source')} | {r.get('train')} of "
                 f"{r.get('train_available', 'n/a')} | — | — | {cfg.rewire_batch} pairs a step, lr "
                 f"{cfg.rewire_lr if cfg.rewire_lr is not None else 'of the recipe'} | "
                 + ", ".join(f"{v} {cfg.rewire_epochs.get(v, 1)} epoch(s)" for v in cfg.views) + " |")
    L.append("")
    if fold_notes:
        L.append("Speaker folds (leave one speaker out): the k-th run of each encoder and setting trains on fold k "
                 "with seed k-1 and is tested on that fold's held-out speaker, so a cell covers every speaker; the "
                 "test speaker of each fold: " + "; ".join(fold_notes) + ".\n")
    if same:
        L.append("Settings that are the same subset as a larger one (no runs of their own; their rows are the "
                 "larger setting's): " + "; ".join(same) + ".\n")
    else:
        L.append("No two settings of a task share a subset.\n")
    return L


def verdict_lines(cfg: StudyConfig, cells: dict, marks: Optional[Dict[tuple, List[str]]] = None) -> List[str]:
    L = ["## Verdict: difference to the base encoder\n",
         f"Per task and setting, the test metric of each encoder row minus that of `{BASE}`, with a 95 % interval "
         "from a paired bootstrap over seeds and test utterances (rewire_lib.analysis.stats.paired_bootstrap_diff: each "
         "replicate draws seeds and, independently, test utterances with replacement, the same draw for both "
         f"encoders; {N_BOOT} replicates; tasks run on speaker folds, each fold with its own test speaker, draw "
         "folds and then each drawn fold's utterances: paired_bootstrap_diff_nested). *better* / *worse* only when "
         "the whole interval lies on one side of 0; otherwise (ties included) *no detectable difference*.\n"]
    for enc in row_names(cfg):
        if enc == BASE:
            continue
        groups = defaultdict(list)
        for (task, setting), cell in cells.items():
            e = cell["encoders"].get(enc)
            if e is None:  # a row of some tasks only (in-domain rewiring)
                continue
            c = e.get("compare")
            key = "n/a" if not c or "na" in c else c["verdict"]
            groups[key].append(f"{task} @ {setting_label(setting)}")
        total = sum(len(v) for k, v in groups.items() if k != "n/a")
        parts = [f"{k} in {len(groups[k])}" + (f" ({', '.join(groups[k])})" if groups[k] and k != NO_DIFF else "")
                 for k in (BETTER, WORSE, NO_DIFF) if k in groups]
        line = f"- **{enc}** vs `{BASE}` over {total} cells: " + ("; ".join(parts) if parts else "no comparison") + "."
        if groups.get("n/a"):
            line += f" Not compared ({NO_FILE} or no run): {', '.join(groups['n/a'])}."
        seen = sorted({t for t, _ in cells if (t, enc) in (marks or {})})
        if seen:
            line += (f" {MARK} Its training data held dev/test audio of {', '.join(seen)} "
                     f"({'; '.join(f'{t}: ' + ', '.join(marks[(t, enc)]) for t in seen)}; What rewiring saw).")
        L.append(line)
    L.append("")
    return L


def seeds_note(cfg: StudyConfig) -> str:
    folds = {t: cfg.folds[t] for t in cfg.tasks if cfg.folds.get(t)}
    few = {t: len(cfg.seeds_of(t)) for t in cfg.tasks if len(cfg.seeds_of(t)) < 5 and t not in folds}
    notes = []
    if folds:
        notes.append("Speaker folds for " + ", ".join(f"{t} ({n})" for t, n in folds.items())
                     + ", one run per fold (fold k: seed k-1).")
    if few:
        why = "as chosen with --seeds" if cfg.option_given("--seeds") else \
            "the budget of this preset did not allow more there"
        notes.append("Fewer than 5 seeds for " + ", ".join(f"{t} ({n})" for t, n in few.items()) + f": {why}; "
                     "those intervals are wider.")
    return " ".join(notes) or f"{len(cfg.seeds)} seeds for every task."


def per_fold_table(cfg: StudyConfig, task: str, task_cells: list) -> List[str]:
    """A fold task's test metric per encoder row and held-out speaker (run k: fold k), every setting."""
    folds = read_sizes(cfg).get(task, {}).get("folds", {})
    seeds = cfg.seeds_of(task)
    names = [cfg.fold_of(task, s) for s in seeds]
    heads = [f"{n} ({'+'.join(folds.get(n, {}).get('test_speakers', [])) or '?'})" for n in names]
    L = [f"Test {task_cells[0][1]['metric']} (%) of each held-out speaker (fold k: seed k-1):\n",
         "| setting | encoder | " + " | ".join(heads) + " |", "|---|---|" + "---|" * len(heads)]
    for setting, cell in task_cells:
        for enc, e in cell["encoders"].items():
            values = " | ".join(fmt(e["tests"].get(s), 1) for s in seeds)
            L.append(f"| {setting_label(setting)} | {enc} | {values} |")
    return L + [""]


def write_markdown(path: Path, cfg: StudyConfig, cells: dict, iso_rows: List[dict], stages: dict,
                   figures: Dict[str, str], rewiring: Optional[dict] = None) -> None:
    rewiring = rewiring or {"loss": {}, "embedding": {}}
    encs = encoder_paths(cfg)
    L = ["# Study: rewired encoders against their base encoder\n"]
    current = this_invocation(stages)
    peaks = [st["peak_tree_pss_mib"] for st in current.values() if st.get("peak_tree_pss_mib") is not None]
    L.append(f"Made by `{shown_command(cfg)}` ({cfg.mode} preset, {cfg.launcher} launcher, {cfg.jobs} worker(s) x "
             f"{cfg.threads} thread(s)) on a machine with {machine()}; this invocation's stages "
             f"({', '.join(current) or 'none yet'}) took {fmt(sum(st['wall_time_s'] for st in current.values()), 0)} s "
             f"(less when it found work done), peak memory of all study processes together "
             f"{fmt(max(peaks) if peaks else None, 0)} MiB. Every number below is read from the files under "
             "`study/`; paths are relative to this report's folder.\n")
    L.append("**Encoder rows**: " + ", ".join(f"`{n}` = `{shown_path(p, cfg.out)}`" for n, p in encs.items()) + ". ")
    if cfg.in_domain:
        L.append(f"In-domain rows (`--in-domain-rewiring {','.join(cfg.in_domain)}`): "
                 + ", ".join(f"`{n}`" for n in row_names(cfg, cfg.in_domain[0])[len(encs):])
                 + " = the base rewired with that view on the task's own training split, once per speaker fold, "
                 "without the fold's dev and test speakers (`study/rewire/in-domain/<set>/<view>/encoder`); their "
                 "isotropy is not measured.  ")
    if cfg.controls:
        L.append("Controls: `base+centre` / `base+whiten` are the base encoder with its frozen features centred / "
                 "whitened at the head's input (fit on the training split: downstream `feature_transform`), "
                 "`random` a randomly initialised encoder of the base's architecture (the floor).  ")
    L.append(f"**Tasks**: {', '.join(cfg.tasks)}; **seeds**: {', '.join(map(str, cfg.seeds))} ({seeds_note(cfg)}) "
             "**step cap per run**: " + ", ".join(f"{t} {_steps(step_budget(cfg, t)[0])}" for t in cfg.tasks)
             + "; **dev every**: " + ", ".join(f"{t} {cfg.eval_every_of(t)}" for t in cfg.tasks) + " steps.\n")
    L += budget_lines(cfg, cells)
    L += what_ran(cfg)
    audit = read_audit(cfg)
    marks = marked_cells(audit)
    L += audit_markdown(cfg, audit)
    L += verdict_lines(cfg, cells, marks)

    L.append("## Downstream results and convergence\n")
    L.append("Test metric of the best-dev checkpoint: mean ± standard deviation over seeds (n). Difference to base: "
             "paired bootstrap, 95 % interval. Steps to base's best: training steps until the row's dev metric first "
             f"reaches the best dev metric `{BASE}` reaches in its run of the same seed (or fold); runs that never "
             "reach it are censored at their last evaluated step and counted; Kaplan-Meier median with its 95 % interval "
             "(rewire_lib.analysis.stats.censored_median; ∞: beyond the observed steps). Speed-up: base median / row median "
             "with a paired bootstrap interval over seeds (rewire_lib.analysis.stats.speedup).\n")
    for task in cfg.tasks:
        task_cells = [(st, cells[(task, st)]) for st in cell_settings(cfg, task) if (task, st) in cells]
        if not task_cells:
            L.append(f"### {task.upper()}\n\nNo finished run.\n")
            continue
        c0 = task_cells[0][1]
        arrow = "higher is better" if c0["higher_is_better"] else "lower is better"
        L.append(f"### {task.upper()} — {c0['metric']} (%), {arrow}\n")
        L.append(f"| setting | encoder | train utts | test {c0['metric']} | Δ vs base [95 % CI] | verdict | "
                 "steps to base's best: median [95 % CI] | speed-up [95 % CI] |")
        L.append("|---|---|---|---|---|---|---|---|")
        for setting, cell in task_cells:
            for enc, e in cell["encoders"].items():
                if e["n"] == 0 and not e.get("conv"):
                    L.append(f"| {setting_label(setting)} | {enc} | n/a | no result | n/a | n/a | n/a | n/a |")
                    continue
                diff, verdict = compare_text(e, enc)
                ntr = "/".join(str(x) for x in e["num_train"])
                test = f"{fmt(e['mean'])} ± {fmt(e['std'])} (n={e['n']}){cap_mark(e)}"
                up = "—" if enc == BASE else speedup_text(e.get("conv"))
                verdict += mark(marks, task, enc)  # its encoder saw this task's dev/test audio
                L.append(f"| {setting_label(setting)} | {enc} | {ntr} | {test} | {diff} | {verdict} | "
                         f"{conv_text(e.get('conv'))} | {up} |")
        if any(e.get("at_cap") for _, cell in task_cells for e in cell["encoders"].values()):
            why = ("before their patience ran out: still improving" if cfg.patience.get(task) else
                   "with no patience set: not known to have converged")
            L.append(f"\n{CAP_MARK}k/n: k of the cell's n runs hit the step cap ({_steps(step_budget(cfg, task)[0])}) {why}, "
                     "so their test metric is not that of a converged run.")
        L.append("")
        if cfg.folds.get(task):
            L += per_fold_table(cfg, task, task_cells)
        for setting, _ in task_cells:
            fig = figures.get(f"{task}|{setting}")
            if fig:
                L.append(f"![{task} {setting}]({fig})")
        L.append("")

    L.append("## What rewiring changed\n")
    loss = rewiring["loss"]
    if loss:
        L.append("Contrastive loss of each view's rewiring run (mean of the first and of the last tenth of its steps, "
                 "from its loss.csv):\n")
        L.append("| view | steps | loss, first tenth | loss, last tenth |")
        L.append("|---|---|---|---|")
        for view, info in loss.items():
            L.append(f"| {view} | {info['steps']} | {fmt(info['first'], 3)} | {fmt(info['last'], 3)} |")
        L.append("")
        if figures.get("rewiring_loss"):
            L.append(f"![rewiring loss]({figures['rewiring_loss']})\n")
    elif cfg.views:
        L.append("No rewiring loss.csv found.\n")
    emb = rewiring["embedding"]
    if emb:
        any_e = next(iter(emb.values()))
        L.append(f"Alignment and uniformity (Wang and Isola, 2020; lower is better for both) of pooled embeddings "
                 f"({any_e['pooling']}) of {any_e['n_clips']} held-out clips "
                 f"(`{shown_path(cfg.work / 'data' / 'isotropy.csv', cfg.out)}`); positive pairs: "
                 f"{any_e['positive_pairs']}; with their IsoScore (1: isotropic) and average cosine. The "
                 "`base+centre` / `base+whiten` rows are the base's embeddings centred / whitened "
                 "(rewire_lib.analysis.whitening, fit on pooled embeddings of training clips of the rewiring manifest).\n")
        L.append("| encoder | alignment | uniformity | IsoScore | average cosine |")
        L.append("|---|---|---|---|---|")
        for name, info in emb.items():
            L.append(f"| {name} | {fmt(info['alignment'], 4)} | {fmt(info['uniformity'], 3)} | "
                     f"{fmt(info['isoscore'], 3)} | {fmt(info['avg_cosine'], 3)} |")
        L.append("")

    L.append("### Isotropy per layer\n")
    summ = isotropy_summary(iso_rows)
    if rewiring.get("measured_by"):
        L.append(rewiring["measured_by"] + "\n")
    if not summ:
        L.append("No isotropy measurement.\n")
    else:
        n_vec = {(r["encoder"], r["level"]): r["n_vectors"] for r in iso_rows}
        L.append(f"On the same held-out clips; per layer, every hidden state (0 = CNN/projection output); I(W) of raw "
                 "rows (uncentred, not normalised; drawn on a log scale) and of centred rows; average cosine of "
                 "random pairs from different utterances (near 1: anisotropic); IsoScore (1: isotropic). Each cell: "
                 "mean over layers / last layer. The centre/whiten controls act at the head's input, not in the "
                 "encoder, so they have no row here.\n")
        L.append("| encoder | level | vectors | " + " | ".join(t for _, t in ISO_MEASURES) + " |")
        L.append("|---|---|---|" + "---|" * len(ISO_MEASURES))
        for (enc, level), d in summ.items():
            vals = " | ".join(f"{fmt_small(d[m]['mean'])} / {fmt_small(d[m]['last'])}" for m, _ in ISO_MEASURES)
            L.append(f"| {enc} | {level} | {n_vec[(enc, level)]} | {vals} |")
        L.append("")
        if figures.get("isotropy"):
            L.append(f"![isotropy per layer]({figures['isotropy']})")
        L.append("")

    L.append("## Stages: settings, wall time and memory\n")
    L.append("Wall time of the latest invocation (small when its work was found done and skipped) and the work time "
             "summed over every invocation; peak memory of all the study's processes together during the "
             f"stage (PSS, sampled every {SAMPLE_EVERY_S:g} s), and of the main process alone.\n")
    L.append("| stage | status | wall time (s) | work time, all runs (s) | runs / skipped / failed | peak all processes MiB | main process MiB | settings |")
    L.append("|---|---|---|---|---|---|---|---|")
    for name, st in this_invocation(stages).items():
        units = f"{st.get('units_run', '—')} / {st.get('units_skipped', '—')} / {st.get('units_failed', '—')}"
        settings = json.dumps(st.get("settings", {}), default=str)
        L.append(f"| {name} | {st['status']} | {fmt(st['wall_time_s'], 1)} | {fmt(st['work_time_s'], 1)} | {units} | "
                 f"{fmt(st.get('peak_tree_pss_mib'), 0)} | {fmt(st['peak_rss_mib']['self'], 0)} | `{settings}` |")
    earlier = [n for n in stages.get("stages", {}) if n not in this_invocation(stages)]
    if earlier:
        L.append(f"\nNot run by this invocation, left out: {', '.join(earlier)} (stages.json keeps what an earlier "
                 "invocation recorded for them, maybe on other data).")
    if cfg.views:
        L.append("")
        L.append("## Continue by hand\n")
        L.append("The rewired encoders are complete model folders; a downstream recipe runs on them from the "
                 "repository root with (`OUT`: this report's folder, when it lies outside the checkout):\n")
        L.append("```")
        L += [line.strip() for line in continue_by_hand(cfg, in_report=True).splitlines()[1:]]
        L.append("```")
    failed = [f for st in stages.get("stages", {}).values() for f in st.get("failed", [])]
    if failed:
        L.append("")
        L.append(f"**{len(failed)} run(s) failed** (their cells lack those seeds):")
        for f in failed:
            L.append(f"- `{f['unit']}`: {f['error']}")
    L.append("")
    atomic_write_text(path, "\n".join(L) + "\n")


def write_report(cfg: StudyConfig, stages: Optional[dict] = None) -> dict:
    """Write summary.md, summary.csv and figures/*.png; returns what was computed."""
    out = cfg.out
    if stages is None:
        p = out / "stages.json"
        stages = json.loads(p.read_text()) if p.is_file() else {}
    runs = collect_runs(cfg)
    cells = compute(cfg, runs)
    iso = isotropy_rows(cfg)
    rewiring = rewiring_info(cfg)
    rewiring["measured_by"] = isotropy_provenance(cfg, stages) if iso or rewiring["embedding"] else ""
    if rewiring["measured_by"].startswith("Left out"):
        iso, rewiring["embedding"] = [], {}
    figures = {}
    (out / "figures").mkdir(parents=True, exist_ok=True)
    for (task, setting), cell in cells.items():
        name = f"figures/convergence_{task}_{setting}.png"
        plot_convergence(out / name, task, setting, cell, runs, cfg.seeds_of(task),
                         over="speaker folds" if cfg.folds.get(task) else "seeds")
        figures[f"{task}|{setting}"] = name
    if rewiring["loss"]:
        plot_rewiring_loss(out / "figures" / "rewiring_loss.png", rewiring["loss"])
        figures["rewiring_loss"] = "figures/rewiring_loss.png"
    if iso:
        plot_isotropy(out / "figures" / "isotropy_per_layer.png", iso)
        figures["isotropy"] = "figures/isotropy_per_layer.png"
    write_csv(out / "summary.csv", cfg, cells, iso, stages, rewiring)
    write_audit_csv(out / "audit.csv", read_audit(cfg))
    write_markdown(out / "summary.md", cfg, cells, iso, stages, figures, rewiring)
    return {"cells": cells, "runs": runs, "figures": figures, "isotropy": iso, "rewiring": rewiring}


def rewrite_tables(cfg: StudyConfig, computed: dict, stages: dict) -> None:
    """summary.md and summary.csv again (figures kept), e.g. once the report stage's own time is known."""
    write_csv(cfg.out / "summary.csv", cfg, computed["cells"], computed["isotropy"], stages, computed["rewiring"])
    write_markdown(cfg.out / "summary.md", cfg, computed["cells"], computed["isotropy"], stages, computed["figures"],
                   computed["rewiring"])
