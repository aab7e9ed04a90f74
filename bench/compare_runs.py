"""Do two trees of downstream runs hold the same results? Run for run, every number of result.json.

A speed-up of the downstream run must not change what it computes. `bench/sweep.py` run twice, once from a
checkout before the change and once after (each with its own REWIRE_BENCH_WORK), leaves two trees of run
folders made by the same study units; this script pairs their result.json files by relative path and prints,
per task, how many runs were compared and the largest difference of any number in them (the test metric, the
best dev metric and step, the steps run and why they stopped, the layer weights), leaving out timings and paths.

    python bench/compare_runs.py BEFORE/study-out/study/runs AFTER/study-out/study/runs

Exit status 1 when a run is missing on one side or a number differs by more than --tolerance.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Dict, Iterator, Tuple

# timings, and locations: two checkouts hold the same encoder and data under other paths (the encoder fingerprint
# hashes the model config, whose `_name_or_path` is the folder the encoder was loaded from)
IGNORED = {"wall_time_s", "epoch_times_s", "feature_cache", "train_csv_used", "settings", "encoder",
           "encoder_fingerprint"}


def numbers(value, prefix: str = "") -> Iterator[Tuple[str, object]]:
    """(dotted key, leaf) pairs of a JSON value."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from numbers(item, f"{prefix}{key}.")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from numbers(item, f"{prefix}{i}.")
    else:
        yield prefix.rstrip("."), value


def difference(a, b) -> float:
    """0 for equal leaves, the absolute difference of two numbers, inf for anything else that differs."""
    if a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)):
        return 0.0
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return abs(float(a) - float(b))
    return math.inf


def compare(before: Path, after: Path) -> Dict[str, dict]:
    """Per task: runs compared, runs missing on either side, the largest difference and where it is."""
    found = {p.relative_to(before): p for p in before.rglob("result.json")}
    made = {p.relative_to(after): p for p in after.rglob("result.json")}
    out: Dict[str, dict] = {}
    for rel in sorted(set(found) | set(made)):
        row = out.setdefault(rel.parts[0], {"runs": 0, "missing": [], "max_diff": 0.0, "where": ""})
        if rel not in found or rel not in made:
            row["missing"].append(str(rel))
            continue
        a = dict(numbers({k: v for k, v in json.loads(found[rel].read_text()).items() if k not in IGNORED}))
        b = dict(numbers({k: v for k, v in json.loads(made[rel].read_text()).items() if k not in IGNORED}))
        row["runs"] += 1
        for key in sorted(set(a) | set(b)):
            diff = difference(a.get(key), b.get(key))
            if diff > row["max_diff"]:
                row["max_diff"], row["where"] = diff, f"{rel.parent}: {key} {a.get(key)!r} -> {b.get(key)!r}"
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--tolerance", type=float, default=0.0, help="largest difference still counted as equal")
    args = parser.parse_args(argv)
    table = compare(args.before, args.after)
    print("| task | runs compared | missing | largest difference | where |\n|---|---|---|---|---|")
    ok = bool(table)
    for task, row in table.items():
        print(f"| {task} | {row['runs']} | {len(row['missing'])} | {row['max_diff']:.3g} | {row['where'] or '-'} |")
        ok = ok and not row["missing"] and row["max_diff"] <= args.tolerance
    print("same results" if ok else "DIFFERENT results (or runs missing)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
