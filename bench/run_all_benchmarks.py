#!/usr/bin/env python3
"""Run every benchmark and print their tables; JSON per script and a Markdown summary in bench/results/.

    python bench/run_all_benchmarks.py [--quick] [--encoder PRESET_OR_FOLDER] [--device cpu] [--threads auto]
    python bench/run_all_benchmarks.py --only rewire downstream
    python bench/run_all_benchmarks.py --only sweep       # the study's downstream runs (not in the default set: ~30 min)

Each script runs in its own Python process (one's memory and thread pools never affect the next).
Extra options for one script: --rewire-args "...", --downstream-args "...", --growth-args "...".
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path


from bench import common

SCRIPTS = {"rewire": "rewire_throughput", "downstream": "downstream_cache", "growth": "growth", "sweep": "sweep"}
DEFAULT_SCRIPTS = ["rewire", "downstream", "growth"]  # sweep.py runs a study's groups: asked for by --only


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--encoder", default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", default="auto")
    p.add_argument("--only", nargs="+", choices=list(SCRIPTS), default=DEFAULT_SCRIPTS)
    p.add_argument("--out", type=Path, default=common.RESULTS_DIR)
    for key in SCRIPTS:
        p.add_argument(f"--{key}-args", default="", help=f"extra options for bench/{SCRIPTS[key]}.py")
    args = p.parse_args(argv)
    # decide the thread count once, before any benchmark adds load of its own
    threads = common.set_threads(args.threads)
    t_start = time.time()
    tables, failed = [], []
    for key in args.only:
        script = common.BENCH_DIR / f"{SCRIPTS[key]}.py"
        cmd = [sys.executable, str(script), "--device", args.device, "--threads", str(threads), "--out", str(args.out)]
        cmd += (["--quick"] if args.quick else []) + (["--encoder", args.encoder] if args.encoder else [])
        cmd += shlex.split(getattr(args, f"{key}_args"))
        print(f"\n===== {' '.join(cmd[1:])}", flush=True)
        t0 = time.time()
        rc = subprocess.call(cmd, cwd=str(common.REPO))
        print(f"===== {SCRIPTS[key]}: exit {rc}, {time.time() - t0:.0f} s", flush=True)
        if rc != 0:
            failed.append(key)
            continue
        name = SCRIPTS[key] if args.device == "cpu" or key != "rewire" else f"{SCRIPTS[key]}_{args.device.split(':')[0]}"
        result = json.loads((args.out / f"{name}.json").read_text())
        tables.append(result["table"])
    header = (f"# Benchmark results\n\n{time.strftime('%Y-%m-%d %H:%M')}, {json.dumps(common.machine())}, "
              f"torch threads {threads}, total {time.time() - t_start:.0f} s"
              + (" (--quick)" if args.quick else "") + "\n")
    summary = header + "\n".join(tables) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.md").write_text(summary)
    print("\n" + summary)
    print(f"Summary: {args.out / 'summary.md'}")
    if failed:
        print(f"FAILED: {failed}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
