#!/usr/bin/env python3
"""Rewiring and feature extraction on a GPU: pairs/s, peak memory, fp32 vs bf16 (one command, < 8 minutes).

    python bench/gpu.py                      # CUDA: wav2vec2-base and -large-lv60 sized random encoders
    python bench/gpu.py --tiny               # CPU smoke run in seconds (tiny encoders; what the tests run)
    python bench/gpu.py --encoders large-stock --precisions bf16 --pairs 128

For each encoder (random weights, the library's stock configs at full size: `base-stock`, `large-stock`,
see bench/common.py PRESETS) and each precision (fp32, bf16 autocast: SpeechBrain's `--precision` for
the recipe, `torch.autocast` for the other loops), on generated speech-like audio of 0.3-3 s (the device
machine has no shared data; `--data` changes it):

- ours / authors / bound: the three rewiring loops of bench/rewire_throughput.py (the recipe's RewireBrain;
  the authors' batch-size-1 loop; the encoder's forward + backward alone on ours's padded batches), twin view;
- peak GPU memory of each (torch.cuda.max_memory_allocated, reset before each run);
- frozen features: the encoder in eval mode under no_grad on the same padded batches (what the downstream
  feature cache does), utterances/s and seconds of audio per second.

Prints one table and writes bench/results/gpu[_tiny].json.
"""
from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

from bench import common
from bench import rewire_throughput as rt
from rewire_lib.data.manifest import read_manifest

SCRIPT = "gpu"


def peak_memory_reset(device) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak_memory_gb(device):
    import torch

    if not str(device).startswith("cuda"):
        return None
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**30


def feature_loop(encoder_dir, batches, device, precision: str) -> dict:
    """Frozen-feature extraction: eval mode, no_grad, every hidden state computed (as the feature cache does)."""
    import torch

    from rewire_lib.models.encoder import SpeechEncoder

    encoder = SpeechEncoder.from_pretrained(encoder_dir).to(device).eval()
    batches = [(w.to(device), l.to(device)) for w, l in batches]
    utterances, audio_seconds = 0, 0.0
    with torch.no_grad(), common.Clock(device) as clock:
        for wavs, lens in batches:
            with rt.autocast(device, precision):
                out = encoder(wavs, lens)
            out.hidden_states.sum().item()  # the result is used (and the device synchronised)
            utterances += wavs.shape[0]
            audio_seconds += float(lens.sum()) * wavs.shape[1] / 16000
    return {"utterances": utterances, "audio_seconds": audio_seconds, "seconds": clock.seconds}


def measure(fn, device) -> dict:
    peak_memory_reset(device)
    result = fn()
    result["peak_gb"] = peak_memory_gb(device)
    return result


def bench_case(encoder_dir: str, precision: str, manifest, batches, args) -> dict:
    """One encoder at one precision: every loop `args.reps` times (after one untimed warm-up unless --tiny)."""
    rows = read_manifest(manifest)
    args.precision = precision  # read by rewire_throughput.recipe_argv
    loops = {
        "ours": lambda: rt.ours_loop(encoder_dir, manifest, "twin", args)[0],
        "authors": lambda: _authors(encoder_dir, rows, args, precision),
        "bound": lambda: rt.bound_loop(encoder_dir, batches, args.device, precision),
        "features": lambda: feature_loop(encoder_dir, batches, args.device, precision),
    }
    if args.warmup:
        for fn in loops.values():
            fn()
    runs = {name: [] for name in loops}
    for rep in range(args.reps):
        for name, fn in loops.items():
            r = measure(fn, args.device)
            runs[name].append(r)
            rate = (f"{r['pairs'] / r['seconds']:.2f} pairs/s" if "pairs" in r
                    else f"{r['utterances'] / r['seconds']:.1f} utt/s")
            print(f"  [{Path(encoder_dir).name} {precision}] rep {rep + 1}/{args.reps} {name:8s}: {rate}"
                  + (f", peak {r['peak_gb']:.2f} GiB" if r["peak_gb"] is not None else ""), flush=True)
    med = {name: common.median(r["pairs"] / r["seconds"] for r in runs[name]) for name in ("ours", "authors", "bound")}
    feats = runs["features"]
    peak = {name: max((r["peak_gb"] for r in runs[name] if r["peak_gb"] is not None), default=None) for name in runs}
    return {"precision": precision, "runs": runs, "median_pairs_per_s": med,
            "share_of_bound": med["ours"] / med["bound"], "speedup_vs_authors": med["ours"] / med["authors"],
            "features_utt_per_s": common.median(r["utterances"] / r["seconds"] for r in feats),
            "features_audio_s_per_s": common.median(r["audio_seconds"] / r["seconds"] for r in feats),
            "peak_gb": peak}


def _authors(encoder_dir, rows, args, precision) -> dict:
    with rt.autocast(args.device, precision):
        return rt.authors_loop(encoder_dir, rows, "twin", None, args.pairs_per_step, args.seed, args.device)


def print_table(result: dict) -> str:
    rows = []
    for enc in result["encoders"]:
        for case in enc["cases"]:
            m, pk = case["median_pairs_per_s"], case["peak_gb"]
            rows.append([enc["name"], enc["params_M"], case["precision"], m["authors"], m["ours"], m["bound"],
                         f"{100 * case['share_of_bound']:.0f}%", f"{case['speedup_vs_authors']:.1f}x",
                         pk["authors"], pk["ours"], pk["bound"], case["features_utt_per_s"],
                         case["features_audio_s_per_s"], pk["features"]])
    s = result["settings"]
    text = common.table(
        f"Rewiring (twin) and frozen features on {s['device']} ({result['machine'].get('gpu', 'no GPU')}), "
        f"{s['pairs']} pairs of {s['data']} audio, {s['pairs_per_step']} pairs/step, median of {s['reps']} run(s)",
        ["encoder", "M params", "precision", "authors pairs/s", "ours pairs/s", "bound pairs/s", "ours/bound",
         "ours/authors", "authors GiB", "ours GiB", "bound GiB", "features utt/s", "features audio s/s",
         "features GiB"], rows)
    print(text, flush=True)
    return text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="CPU, tiny stock encoders, 4 one-second pairs, 1 run, no warm-up")
    p.add_argument("--encoders", nargs="+", default=None,
                   help="presets or folders (default base-stock large-stock; --tiny: tiny-base-stock tiny-large-stock)")
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "fp16"])
    p.add_argument("--data", default="synth-mixed", choices=sorted(common.DATASETS))
    p.add_argument("--pairs", type=int, default=64, help="pairs per run (a multiple of --pairs-per-step)")
    p.add_argument("--pairs-per-step", type=int, default=4, help="N pairs a step (the authors: 4)")
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--device", default="cuda")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="JSON folder (default bench/results)")
    return p


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    args.warmup = not args.tiny
    if args.tiny:
        args.device, args.pairs, args.reps, args.data = "cpu", args.pairs_per_step, 1, "synth-equal"
        args.encoders = args.encoders or ["tiny-base-stock", "tiny-large-stock"]
    args.encoders = args.encoders or ["base-stock", "large-stock"]
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("bench/gpu.py: no GPU is visible; run it on a GPU machine, or use --tiny on a CPU")
    if args.pairs % args.pairs_per_step:
        raise SystemExit("--pairs must be a multiple of --pairs-per-step")
    args.tts, args.tts_cache_dir = "espeak", None  # twin view only: no TTS is used
    common.quiet_logs()
    logging.disable(logging.WARNING)
    common.WORK_DIR.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    manifest = common.bench_manifest(args.data, args.pairs, seed=args.seed)
    with tempfile.TemporaryDirectory(prefix="gpu-", dir=common.WORK_DIR) as out:
        batches = rt.padded_batches(manifest, "twin", args, out)
    encoders = []
    for spec in args.encoders:
        encoder_dir, name = common.resolve_encoder(spec)
        info = dict(common.describe_encoder(encoder_dir), name=spec, description=name)
        print(f"{spec}: {info['params_M']} M parameters", flush=True)
        info["cases"] = [bench_case(encoder_dir, precision, manifest, batches, args) for precision in args.precisions]
        encoders.append(info)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    result = {"script": SCRIPT, "machine": common.machine(), "settings": settings, "encoders": encoders,
              "wall_seconds": time.perf_counter() - t0}
    result["table"] = print_table(result)
    path = common.save_json(SCRIPT + ("_tiny" if args.tiny else ""), result, args.out)
    print(f"\nJSON: {path} ({result['wall_seconds']:.0f} s)")
    return result


if __name__ == "__main__":
    main()
