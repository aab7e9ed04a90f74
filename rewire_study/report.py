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
from typing import Dict, List, Optional

from rewire_lib.atomic import atomic_write_bytes, atomic_write_text
from rewire_study.config import BASE, StudyConfig
from rewire_study.convergence import aggregate, convergence_per_seed, mean_std
from rewire_study.stages import continue_by_hand, downstream_units, encoder_paths
from rewire_study.units import shown_path

CSV_FIELDS = ["section", "task", "fraction", "encoder", "seed", "level", "layer", "quantity", "value"]
ISO_MEASURES = [("iw", "I(W)"), ("iw_centred", "I(W) centred"), ("avg_cosine", "avg cosine"), ("isoscore", "IsoScore")]
NOT_REACHED = "not reached"


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
    """{(task, encoder, fraction, seed): {"result": ..., "curve": [(step, dev)], "folder": ...}} for finished
    runs: a run counts only when its unit is done with the current spec (same settings, manifests'
    content and encoder files), so a stale folder left by other data or another encoder is never reported."""
    runs = {}
    for task, name, frac, seed, unit in downstream_units(cfg):
        res_path = unit.folder / "result.json"
        if not unit.is_done() or not res_path.is_file():
            continue
        result = json.loads(res_path.read_text())
        curve_path = unit.folder / "curve.csv"
        curve = read_curve(curve_path, result["metric"]) if curve_path.is_file() else []
        runs[(task, name, frac, seed)] = {"result": result, "curve": curve, "folder": unit.folder}
    return runs


# ---------------------------------------------------------------------- computing
def compute(cfg: StudyConfig, runs: Dict[tuple, dict]) -> dict:
    """Per task and fraction: metric info, per-encoder test stats and convergence (per seed and aggregated)."""
    encoders = list(encoder_paths(cfg))
    cells = {}
    for task in cfg.tasks:
        for frac in cfg.fractions:
            present = {k: v for k, v in runs.items() if k[0] == task and k[2] == frac}
            if not present:
                continue
            any_res = next(iter(present.values()))["result"]
            metric, hib = any_res["metric"], bool(any_res["higher_is_better"])
            cell = {"metric": metric, "higher_is_better": hib, "encoders": {}}
            for enc in encoders:
                per_seed = {s: present[(task, enc, frac, s)] for s in cfg.seeds if (task, enc, frac, s) in present}
                tests = {s: r["result"].get(f"test_{metric}") for s, r in per_seed.items()}
                m, sd = mean_std(list(tests.values()))
                conv = {}
                for s, r in per_seed.items():
                    base = present.get((task, BASE, frac, s))
                    if base is None:
                        continue
                    conv[s] = convergence_per_seed(base["curve"], {enc: r["curve"]}, hib)[enc]
                cell["encoders"][enc] = {
                    "tests": tests, "mean": m, "std": sd, "n": len([v for v in tests.values() if v is not None]),
                    "num_train": sorted({r["result"].get("num_train") for r in per_seed.values()}, key=str),
                    "steps_run": sorted({r["result"].get("steps") for r in per_seed.values()}, key=str),
                    "conv_seeds": conv, "conv": aggregate(conv.values()) if conv else None,
                }
            base = cell["encoders"].get(BASE)
            for enc, e in cell["encoders"].items():
                e["delta"] = None if (base is None or base["mean"] is None or e["mean"] is None) else e["mean"] - base["mean"]
                if enc == BASE or e["delta"] is None:
                    e["beats_base"] = None
                else:
                    e["beats_base"] = e["delta"] > 0 if hib else e["delta"] < 0
            cells[(task, frac)] = cell
    return cells


def isotropy_rows(cfg: StudyConfig) -> List[dict]:
    path = cfg.work / "isotropy" / "isotropy.json"
    if not path.is_file():
        return []
    return json.loads(path.read_text())["rows"]


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


def _conv_text(e: dict) -> tuple:
    c = e.get("conv")
    if not c:
        return "n/a", "n/a"
    if c["n_reached"] == 0:
        return f"{NOT_REACHED} (0/{c['n_seeds']})", NOT_REACHED
    steps = f"{fmt(c['steps_mean'], 1)} ({c['n_reached']}/{c['n_seeds']})"
    up = f"{fmt(c['speedup_mean'])}x" if c["speedup_mean"] is not None else "n/a"
    return steps, up


def _verdict(e: dict, enc: str) -> str:
    if enc == BASE:
        return "baseline"
    if e["beats_base"] is None:
        return "n/a"
    return "yes" if e["beats_base"] else ("no (equal)" if e["delta"] == 0 else "no")


# ---------------------------------------------------------------------- writing
def write_csv(path: Path, cfg: StudyConfig, cells: dict, iso_rows: List[dict], stages: dict) -> None:
    rows = []
    add = lambda **kw: rows.append({f: kw.get(f, "") for f in CSV_FIELDS})  # noqa: E731
    for (task, frac), cell in cells.items():
        q = f"test_{cell['metric']}"
        for enc, e in cell["encoders"].items():
            for s, v in e["tests"].items():
                add(section="test", task=task, fraction=frac, encoder=enc, seed=s, quantity=q, value=v)
            add(section="test", task=task, fraction=frac, encoder=enc, seed="mean", quantity=q, value=e["mean"])
            add(section="test", task=task, fraction=frac, encoder=enc, seed="std", quantity=q, value=e["std"])
            add(section="test", task=task, fraction=frac, encoder=enc, seed="n", quantity=q, value=e["n"])
            for s, c in e["conv_seeds"].items():
                add(section="convergence", task=task, fraction=frac, encoder=enc, seed=s,
                    quantity="baseline_best_dev", value=c["target"])
                add(section="convergence", task=task, fraction=frac, encoder=enc, seed=s,
                    quantity="steps_to_baseline_best", value=NOT_REACHED if c["steps"] is None else c["steps"])
                add(section="convergence", task=task, fraction=frac, encoder=enc, seed=s,
                    quantity="speedup", value=NOT_REACHED if c["speedup"] is None else c["speedup"])
            c = e.get("conv")
            if c:
                add(section="convergence", task=task, fraction=frac, encoder=enc, seed="mean",
                    quantity="steps_to_baseline_best", value=NOT_REACHED if c["steps_mean"] is None else c["steps_mean"])
                add(section="convergence", task=task, fraction=frac, encoder=enc, seed="mean",
                    quantity="speedup", value=NOT_REACHED if c["speedup_mean"] is None else c["speedup_mean"])
                add(section="convergence", task=task, fraction=frac, encoder=enc, seed="n_reached",
                    quantity="steps_to_baseline_best", value=c["n_reached"])
    for r in iso_rows:
        for m, _ in ISO_MEASURES:
            add(section="isotropy", encoder=r["encoder"], level=r["level"], layer=r["layer"], quantity=m, value=r[m])
    for (enc, level), d in isotropy_summary(iso_rows).items():
        for m, _ in ISO_MEASURES:
            add(section="isotropy", encoder=enc, level=level, layer="mean", quantity=m, value=d[m]["mean"])
    for name, st in stages.get("stages", {}).items():
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


def plot_convergence(path: Path, task: str, frac: float, cell: dict, runs: dict, seeds: List[int]) -> None:
    """One line per encoder (mean dev metric over seeds at each logged step) with a min-max band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, enc in enumerate(cell["encoders"]):
        by_step = defaultdict(list)
        for s in seeds:
            run = runs.get((task, enc, frac, s))
            if run:
                for step, v in run["curve"]:
                    by_step[step].append(v)
        if not by_step:
            continue
        steps = sorted(by_step)
        mean = [sum(by_step[s]) / len(by_step[s]) for s in steps]
        ax.plot(steps, mean, color=f"C{i}", lw=1.6, label=f"{enc} (n={max(len(v) for v in by_step.values())})")
        ax.fill_between(steps, [min(by_step[s]) for s in steps], [max(by_step[s]) for s in steps],
                        color=f"C{i}", alpha=0.18, lw=0)
    targets = [c["target"] for c in cell["encoders"].get(BASE, {}).get("conv_seeds", {}).values()
               if c["target"] is not None]
    if targets:
        ax.axhline(sum(targets) / len(targets), color="k", ls=":", lw=1, label="baseline's best dev (mean)")
    ax.set_xlabel("training step")
    ax.set_ylabel(f"dev {cell['metric']} (%)" + (" - higher is better" if cell["higher_is_better"] else
                                                  " - lower is better"))
    ax.set_title(f"{task.upper()}, training fraction {frac:g}: dev metric vs steps (band: min-max over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _steps(n) -> str:
    return "the recipe's epochs" if n is None else str(n)


def what_ran(cfg: StudyConfig) -> List[str]:
    """The data sizes actually used per task (from the data stage's sizes.json), with their preset and caps."""
    path = cfg.work / "data" / "sizes.json"
    sizes = json.loads(path.read_text()) if path.is_file() else {}
    L = ["## What ran\n",
         "Utterances used per task (of those available) and where the sizes come from: the embedded data's "
         "preset caps them for 2 CPU cores; a real corpus or the user's own folder is used whole "
         "(`real-corpus`) unless an option set a cap.\n",
         "| task | preset | source | train | dev | test | cap train / eval | steps per run |",
         "|---|---|---|---|---|---|---|---|"]
    used = lambda info, k: (f"{info[k]} of {info[k + '_available']}" if f"{k}_available" in info  # noqa: E731
                            else str(info.get(k, "n/a")))
    for task in cfg.tasks:
        info = sizes.get(task, {})
        if "folds_dir" in info:
            L.append(f"| {task} | {info.get('preset', cfg.presets.get(task))} | {info['folds_dir']} | folds | folds | "
                     f"folds | all | {_steps(cfg.max_steps[task])} |")
            continue
        caps = f"{cfg.train_cap[task] or 'all'} / {cfg.eval_cap[task] or 'all'}"
        L.append(f"| {task} | {info.get('preset', cfg.presets.get(task))} | {info.get('source', 'n/a')} | "
                 f"{used(info, 'train')} | {used(info, 'dev')} | {used(info, 'test')} | {caps} | "
                 f"{_steps(cfg.max_steps[task])} |")
    if "rewire" in sizes:
        r = sizes["rewire"]
        L.append(f"| rewiring | {r.get('preset')} | {r.get('source')} | {r.get('train')} of "
                 f"{r.get('train_available', 'n/a')} | — | — | {r.get('cap') or 'all'} | "
                 + ", ".join(f"{v} {cfg.rewire_epochs.get(v, 1)} epoch(s)" for v in cfg.views) + " |")
    L.append("")
    return L


def write_markdown(path: Path, cfg: StudyConfig, cells: dict, iso_rows: List[dict], stages: dict,
                   figures: Dict[str, str]) -> None:
    encs = encoder_paths(cfg)
    L = []
    L.append("# Study: rewired encoders against their base encoder\n")
    L.append(f"Generated by `run_all.sh` ({cfg.mode} preset, {cfg.launcher} launcher) from the files under "
             "`study/`; every number below is read from those files. Paths are relative to this report's folder.\n")
    L.append("**Encoders**: " + ", ".join(f"`{n}` = `{shown_path(p, cfg.out)}`" for n, p in encs.items()) + "  ")
    L.append(f"**Tasks**: {', '.join(cfg.tasks)}; **training fractions**: {', '.join(f'{f:g}' for f in cfg.fractions)}; "
             f"**seeds**: {', '.join(map(str, cfg.seeds))}; **steps per run**: "
             + ", ".join(f"{t} {_steps(cfg.max_steps[t])}" for t in cfg.tasks) + f"; **dev every** {cfg.eval_every} steps.  ")
    L.append(f"Low-resource subsets keep >= {cfg.min_train} utterances.\n")
    L += what_ran(cfg)

    # verdict
    L.append("## Verdict: does a rewired encoder beat the baseline?\n")
    L.append("A rewired encoder *beats* the baseline in a cell when its mean test metric over seeds is better "
             "(no significance test; see the standard deviations below).\n")
    for enc in encs:
        if enc == BASE:
            continue
        wins, losses, na = [], [], []
        for (task, frac), cell in cells.items():
            e = cell["encoders"].get(enc)
            label = f"{task} @ {frac:g}"
            if e is None or e["beats_base"] is None:
                na.append(label)
            elif e["beats_base"]:
                wins.append(label)
            else:
                losses.append(label)
        total = len(wins) + len(losses)
        line = f"- **{enc}** beats `{BASE}` in {len(wins)} of {total} task/fraction cells"
        line += (f": {', '.join(wins)}" if wins else "") + "."
        if losses:
            line += f" It does **not** beat it in: {', '.join(losses)}."
        if na:
            line += f" No result for: {', '.join(na)}."
        L.append(line)
    L.append("")

    # per task tables
    L.append("## Downstream results (test metric of the best-dev checkpoint) and convergence\n")
    L.append("Test metric: mean ± standard deviation over seeds (n = seeds with a result). Convergence: training "
             f"steps until the encoder's dev metric first reaches the best dev metric the `{BASE}` encoder reaches "
             "in its whole run (same seed), mean over the seeds that reach it (reached/seeds); speed-up = baseline "
             f"steps / encoder steps, mean over those seeds; \"{NOT_REACHED}\" when no seed reaches it.\n")
    for task in cfg.tasks:
        task_cells = [(frac, cells[(task, frac)]) for frac in cfg.fractions if (task, frac) in cells]
        if not task_cells:
            L.append(f"### {task.upper()}\n\nNo finished run.\n")
            continue
        c0 = task_cells[0][1]
        arrow = "higher is better" if c0["higher_is_better"] else "lower is better"
        L.append(f"### {task.upper()} — {c0['metric']} (%), {arrow}\n")
        L.append("| fraction | encoder | train utts | test " + c0["metric"] + " | Δ vs base | beats base? | "
                 "steps to base's best dev | speed-up |")
        L.append("|---|---|---|---|---|---|---|---|")
        for frac, cell in task_cells:
            for enc, e in cell["encoders"].items():
                if e["n"] == 0 and not e["conv_seeds"]:
                    L.append(f"| {frac:g} | {enc} | n/a | no result | n/a | n/a | n/a | n/a |")
                    continue
                steps, up = _conv_text(e)
                test = f"{fmt(e['mean'])} ± {fmt(e['std'])} (n={e['n']})"
                delta = "—" if enc == BASE else (("+" if (e["delta"] or 0) >= 0 else "") + fmt(e["delta"]))
                ntr = "/".join(str(x) for x in e["num_train"])
                L.append(f"| {frac:g} | {enc} | {ntr} | {test} | {delta} | {_verdict(e, enc)} | {steps} | {up} |")
        L.append("")
        for frac, _ in task_cells:
            fig = figures.get(f"{task}|{frac:g}")
            if fig:
                L.append(f"![{task} fraction {frac:g}]({fig})")
        L.append("")

    # isotropy
    L.append("## Isotropy before and after rewiring\n")
    summ = isotropy_summary(iso_rows)
    if not summ:
        L.append("No isotropy measurement.\n")
    else:
        n_vec = {(r["encoder"], r["level"]): r["n_vectors"] for r in iso_rows}
        L.append(f"On `{shown_path(cfg.work / 'data' / 'isotropy.csv', cfg.out)}`; per layer, every hidden state (0 = CNN/projection output); "
                 "I(W) of raw rows (uncentred, not normalised) and of centred rows; average cosine of random pairs "
                 "from different utterances (near 1: anisotropic); IsoScore (1: isotropic). "
                 "Each cell: mean over layers / last layer.\n")
        L.append("| encoder | level | vectors | " + " | ".join(t for _, t in ISO_MEASURES) + " |")
        L.append("|---|---|---|" + "---|" * len(ISO_MEASURES))
        for (enc, level), d in summ.items():
            vals = " | ".join(f"{fmt_small(d[m]['mean'])} / {fmt_small(d[m]['last'])}" for m, _ in ISO_MEASURES)
            L.append(f"| {enc} | {level} | {n_vec[(enc, level)]} | {vals} |")
        L.append("")
        base = {k[1]: v for k, v in summ.items() if k[0] == BASE}
        for (enc, level), d in summ.items():
            if enc == BASE or level not in base:
                continue
            b = base[level]
            more_iso = d["isoscore"]["mean"] > b["isoscore"]["mean"]
            L.append(f"- {enc}, {level} level: IsoScore {fmt(b['isoscore']['mean'], 3)} -> {fmt(d['isoscore']['mean'], 3)}, "
                     f"average cosine {fmt(b['avg_cosine']['mean'], 3)} -> {fmt(d['avg_cosine']['mean'], 3)} "
                     f"(mean over layers): {'more' if more_iso else 'not more'} isotropic than `{BASE}` by IsoScore.")
        if figures.get("isotropy"):
            L.append("")
            L.append(f"![isotropy per layer]({figures['isotropy']})")
        L.append("")

    # stages
    L.append("## Stages: settings, wall time and memory\n")
    L.append("Wall time of the latest invocation (small when its work was found done and skipped) and the work time "
             "summed over every invocation; peak resident memory of all the study's processes together during the "
             "stage (sampled every 0.5 s), and of the main process alone.\n")
    L.append("| stage | status | wall time (s) | work time, all runs (s) | runs / skipped / failed | peak RSS all processes MiB | main process MiB | settings |")
    L.append("|---|---|---|---|---|---|---|---|")
    for name, st in stages.get("stages", {}).items():
        units = f"{st.get('units_run', '—')} / {st.get('units_skipped', '—')} / {st.get('units_failed', '—')}"
        settings = json.dumps(st.get("settings", {}), default=str)
        L.append(f"| {name} | {st['status']} | {fmt(st['wall_time_s'], 1)} | {fmt(st['work_time_s'], 1)} | {units} | "
                 f"{fmt(st.get('peak_tree_pss_mib'), 0)} | {fmt(st['peak_rss_mib']['self'], 0)} | `{settings}` |")
    if stages.get("stages"):
        L.append("")
        L.append(f"Total wall time of the latest invocation: {fmt(stages.get('total_wall_time_s'), 1)} s; "
                 f"work time over all invocations: {fmt(stages.get('total_work_time_s'), 1)} s; "
                 f"peak memory (PSS, shared pages counted once) of all study processes together: {fmt(stages.get('peak_tree_pss_mib'), 0)} MiB.")
    if cfg.views:
        L.append("")
        L.append("## Continue by hand\n")
        L.append("The rewired encoders are complete model folders; a downstream recipe runs on them from the "
                 "repository root with:\n")
        L.append("```")
        L += [line.strip() for line in continue_by_hand(cfg).splitlines()[1:]]
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
    from rewire_lib import isotropy_cli

    out = cfg.out
    if stages is None:
        p = out / "stages.json"
        stages = json.loads(p.read_text()) if p.is_file() else {}
    runs = collect_runs(cfg)
    cells = compute(cfg, runs)
    iso = isotropy_rows(cfg)
    figures = {}
    for (task, frac), cell in cells.items():
        name = f"figures/convergence_{task}_frac{frac:g}.png"
        plot_convergence(out / name, task, frac, cell, runs, cfg.seeds)
        figures[f"{task}|{frac:g}"] = name
    if iso:
        settings = json.loads((cfg.work / "isotropy" / "isotropy.json").read_text())["settings"]
        (out / "figures").mkdir(parents=True, exist_ok=True)
        isotropy_cli.plot(out / "figures" / "isotropy_per_layer.png", iso, settings)
        figures["isotropy"] = "figures/isotropy_per_layer.png"
    write_csv(out / "summary.csv", cfg, cells, iso, stages)
    write_markdown(out / "summary.md", cfg, cells, iso, stages, figures)
    return {"cells": cells, "runs": runs, "figures": figures, "isotropy": iso}


def rewrite_tables(cfg: StudyConfig, computed: dict, stages: dict) -> None:
    """summary.md and summary.csv again (figures kept), e.g. once the report stage's own time is known."""
    write_csv(cfg.out / "summary.csv", cfg, computed["cells"], computed["isotropy"], stages)
    write_markdown(cfg.out / "summary.md", cfg, computed["cells"], computed["isotropy"], stages, computed["figures"])
