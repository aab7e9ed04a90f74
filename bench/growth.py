#!/usr/bin/env python3
"""Growth with the data size: time and peak memory of rewiring, of the isotropy pass and of one downstream epoch.

    python bench/growth.py                 # sizes 1x and 4x
    python bench/growth.py --quick
    python bench/growth.py --base 64 --factors 1 4 8

Every measurement runs in a fresh Python process (so one measurement's memory never hides another's) and
reports its wall time and its peak resident set size (`ru_maxrss`), plus the resident size just before the
measured work (imports and model loaded), so the difference is what the work itself added.

- rewire: one epoch of `recipes/rewire/train.py` (RewireBrain, twin view, 4 pairs a step) on FSDD
  (mixed lengths); time from the start of the training stage to the end of its last batch.
- isotropy: `rewire_lib.analysis.isotropy.measure_encoder` at frame and utterance level on Speech Commands clips,
  with a reservoir of `--max-vectors` vectors per layer: its memory should not grow with the data.
- downstream: one KS training epoch of the recipe with its default in-memory feature cache (the first
  epoch: it runs the encoder and fills the cache; the cache's size grows with the data by design).

Expected: time grows linearly (the 4x/1x ratio near 4); the isotropy pass's memory stays flat.
"""
from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path


from bench import common

SCRIPT = "growth"
WHAT = ("rewire", "isotropy", "downstream")


# ------------------------------------------------------------------------------------------- children
def child_rewire(args) -> dict:
    from bench import rewire_throughput as rt

    manifest = common.bench_manifest(args.data_mixed, args.n, seed=args.seed)
    opts = rt.build_parser().parse_args(["--device", args.device, "--seed", str(args.seed)])
    rt._recipe()  # import the recipe before the baseline memory reading
    before = common.rss_mb()
    epochs = rt.ours_loop(args.encoder_dir, manifest, "twin", opts)
    return {"seconds": epochs[0]["seconds"], "cpu_seconds": epochs[0]["cpu_seconds"], "items": epochs[0]["pairs"],
            "rss_before_mb": before}


def child_isotropy(args) -> dict:
    from rewire_lib.analysis.isotropy import measure_encoder
    from rewire_lib.models.encoder import SpeechEncoder

    manifest = common.bench_manifest(args.data_equal, args.n, seed=args.seed)
    encoder = SpeechEncoder.from_pretrained(args.encoder_dir)
    before = common.rss_mb()
    with common.Clock(args.device) as clock:
        rows = measure_encoder(encoder, str(manifest), level="both", max_vectors=args.max_vectors, seed=args.seed,
                               batch_size=8, device=args.device, progress=False)
    frame = [r for r in rows if r["level"] == "frame"][0]
    return {"seconds": clock.seconds, "cpu_seconds": clock.cpu_seconds, "items": args.n, "rss_before_mb": before,
            "frames_seen": frame["n_seen"],
            "vectors_kept": frame["n_vectors"]}


def child_downstream(args) -> dict:
    from bench import downstream_cache as dc
    from rewire_lib.files.paths import data_dir

    with tempfile.TemporaryDirectory(prefix="growth-", dir=common.WORK_DIR) as work:
        csvs, n, _ = dc.subset_manifests("ks", args.n, 4, args.seed, Path(work), data_dir())
        import rewire_lib.downstream  # noqa: F401 - imports before the baseline memory reading

        before = common.rss_mb()
        opts = dc.build_parser().parse_args(["--device", args.device])
        epochs = dc.run_recipe("ks", args.encoder_dir, csvs, "memory", 1, opts, Path(work))
    return {"seconds": epochs[0]["seconds"], "cpu_seconds": epochs[0]["cpu_seconds"], "items": n,
            "rss_before_mb": before,
            "cache_entries": (epochs[0]["cache"] or {}).get("entries")}


def run_as_child(args) -> None:
    common.quiet_logs()
    logging.disable(logging.WARNING)
    common.set_threads(args.threads)
    common.WORK_DIR.mkdir(parents=True, exist_ok=True)
    out = {"child_rewire": child_rewire, "child_isotropy": child_isotropy,
           "child_downstream": child_downstream}[args.child](args)
    out["peak_rss_mb"] = common.peak_rss_mb()
    print(json.dumps(out), flush=True)


# ------------------------------------------------------------------------------------------- parent
def print_tables(result: dict) -> str:
    rows = []
    for r in result["results"]:
        m = r["measurements"]
        lo, hi = m[0], m[-1]
        k = hi["items"] / lo["items"]
        rows.append([r["what"]] + [f"{x['items']}: {x['seconds']:.2f} s" for x in m]
                    + [f"{hi['seconds'] / lo['seconds']:.2f} (x{k:g} data)",
                       f"{hi['cpu_seconds'] / lo['cpu_seconds']:.2f}"]
                    + [f"{x['peak_rss_mb']:.0f} MB (+{x['peak_rss_mb'] - x['rss_before_mb']:.0f})" for x in m])
    f = result["settings"]["factors"]
    headers = (["work"] + [f"time at {x}x" for x in f] + ["time ratio", "CPU-time ratio"]
               + [f"peak RSS at {x}x (+work)" for x in f])
    text = common.table(f"Growth (encoder {result['encoder']['name']}, {result['settings']['device']}, "
                        f"{result['settings']['torch_threads']} torch thread(s); one fresh process each)",
                        headers, rows)
    print(text, flush=True)
    return text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--encoder", default=None, help="folder, hub id or preset (see rewire_throughput.py --help)")
    p.add_argument("--what", nargs="+", default=list(WHAT), choices=WHAT)
    p.add_argument("--base", type=int, default=32, help="utterances at 1x (a multiple of 4)")
    p.add_argument("--factors", type=int, nargs="+", default=[1, 4])
    p.add_argument("--data-mixed", default="fsdd", choices=sorted(common.DATASETS), help="rewiring data")
    p.add_argument("--data-equal", default="sc", choices=sorted(common.DATASETS), help="isotropy data")
    p.add_argument("--max-vectors", type=int, default=1000, help="isotropy reservoir size per layer and level")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="base 16")
    p.add_argument("--out", type=Path, default=None, help="JSON folder (default bench/results)")
    # internal: one measurement in this (fresh) process
    p.add_argument("--child", choices=[f"child_{w}" for w in WHAT], help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--encoder-dir", help=argparse.SUPPRESS)
    return p


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    if args.child:
        return run_as_child(args)
    if args.quick:
        args.base = min(args.base, 16)
    threads = common.set_threads(args.threads)  # decided once here, passed to every child
    encoder_dir, name = common.resolve_encoder(args.encoder)
    encoder = dict(common.describe_encoder(encoder_dir), name=name, path=encoder_dir)
    print(f"Growth: encoder {name}, sizes {[args.base * f for f in args.factors]} utterances, torch threads "
          f"{threads}, load average {common.load_average()}", flush=True)
    results = []
    for what in args.what:
        measurements = []
        for factor in args.factors:
            n = args.base * factor
            child = [str(Path(__file__).resolve()), "--child", f"child_{what}", "--n", str(n), "--encoder-dir",
                     encoder_dir, "--device", args.device, "--threads", str(threads), "--seed", str(args.seed),
                     "--max-vectors", str(args.max_vectors),
                     "--data-mixed", args.data_mixed, "--data-equal", args.data_equal]
            m = common.run_child(child)
            m.update(factor=factor, n=n, load_avg=common.load_average())
            measurements.append(m)
            print(f"  [{what}] {n} utterances: {m['seconds']:.2f} s (CPU {m['cpu_seconds']:.2f} s), peak RSS {m['peak_rss_mb']:.0f} MB "
                  f"(before the work {m['rss_before_mb']:.0f} MB)", flush=True)
        results.append({"what": what, "measurements": measurements})
    result = {"script": SCRIPT, "machine": common.machine(), "encoder": encoder,
              "settings": dict(vars(args), out=str(args.out), torch_threads=threads), "results": results}
    return common.finish(SCRIPT, result, print_tables, args.out)


if __name__ == "__main__":
    main()
