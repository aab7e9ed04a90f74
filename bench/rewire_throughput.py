#!/usr/bin/env python3
"""Rewiring throughput (utterance pairs per second): the authors' loop, our RewireBrain, and the bound.

    python bench/rewire_throughput.py                       # FSDD (mixed lengths) + Speech Commands (1 s), twin + neutral
    python bench/rewire_throughput.py --quick               # fewer pairs and repetitions
    python bench/rewire_throughput.py --device cuda --encoder base-random --data synth-mixed synth-equal --views twin

Three loops, on one machine, encoder, manifest and number of pairs per optimiser step (4 by default),
interleaved repetition by repetition (so a burst of load from other processes hits all three), after one untimed
warm-up pass of each (the first time a process meets an input shape costs extra), medians quoted, in wall time and
in CPU time (this process and its children, e.g. text2wave):

- authors: a re-creation of the authors' training loop (written here, not in the library): for each utterance
  load the audio, make the positive on the step (twin: zero a random 20 % span; neutral: run the TTS backend,
  Festival's text2wave by default, with no cache), encode the anchor then the positive in two forward passes of
  batch size 1, pool (softmax-weighted layer sum, mean over time), and every 4 pairs compute NT-Xent over the
  4 pairs, backward, AdamW step. Gradients are zeroed after each step (the authors' code never zeroes them;
  that changes the numbers it learns, not its speed: `--no-zero-grad` reproduces it).
- ours: `recipes/rewire/train.py`'s `main` (RewireBrain, BucketBatchSampler, joint padded forward of the 2N
  views, TTS cache filled beforehand as in any epoch after the first), one epoch per repetition, timed from the
  start of the training stage to the end of its last batch (start-up, checkpoint and plots excluded).
- bound: the encoder's forward (plus pooling) and backward passes alone on exactly the padded batches `ours`
  trains on (same sampler, seed and epoch), built beforehand: no data loading, TTS, loss or optimiser.
"""
from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path


from bench import common
from rewire_lib.data.manifest import read_manifest
from rewire_study.recipes import load_recipe_module

SCRIPT = "rewire_throughput"


# ------------------------------------------------------------------------------------------- the authors' loop
def authors_loop(encoder_dir: str, rows: list[dict], view: str, tts, pairs_per_step: int, seed: int,
                 device: str, lr: float = 1e-6, zero_grad: bool = True, warm_cache=None) -> dict:
    """One pass over `rows` the way the authors' code trains. Returns {"pairs", "seconds"} (model loading
    excluded). `tts` is a rewire_lib.views.tts backend (synthesised on every step, never cached). `warm_cache`
    (a TTSCache) replaces the synthesis, only for the untimed warm-up pass (same audio, same shapes)."""
    import torch

    from rewire_lib.data.audio import load_audio
    from rewire_lib.models.encoder import SpeechEncoder
    from rewire_lib.models.featurizer import WeightedLayerSum, masked_mean
    from rewire_lib.rewiring.losses import nt_xent

    encoder = SpeechEncoder.from_pretrained(encoder_dir).to(device)
    featurizer = WeightedLayerSum(encoder.num_layers).to(device)
    encoder.train()
    featurizer.train()
    params = list(encoder.parameters()) + list(featurizer.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(seed)
    order = [rows[i] for i in torch.randperm(len(rows), generator=gen).tolist()]

    def embed(wav):  # batch size 1: no padding, no mask needed
        out = encoder(wav.to(device)[None, :])
        return masked_mean(featurizer(out.hidden_states), out.frame_mask)

    anchors, positives, pairs, skipped, tts_seconds = [], [], 0, 0, 0.0
    with common.Clock(device) as clock:
        for row in order:
            wav = load_audio(row["wav"])
            if view == "neutral":
                t_tts = time.perf_counter()
                if warm_cache is not None:
                    positive = warm_cache.get(row["wrd"])
                else:
                    positive = torch.from_numpy(tts.synthesize(row["wrd"]))
                tts_seconds += time.perf_counter() - t_tts
                if positive.numel() < encoder.min_samples():
                    skipped += 1
                    continue
            else:  # twin: one contiguous span of 20 % zeroed, its start uniform in the first 80 %
                positive = wav.clone()
                span = int(0.2 * wav.numel())
                start = int(torch.randint(0, wav.numel() - span + 1, (1,), generator=gen))
                positive[start:start + span] = 0.0
            anchors.append(embed(wav))
            positives.append(embed(positive))
            if len(anchors) == pairs_per_step:
                loss = nt_xent(torch.cat(anchors), torch.cat(positives), 0.04)
                loss.backward()
                optimizer.step()
                if zero_grad:
                    optimizer.zero_grad(set_to_none=True)
                pairs += len(anchors)
                anchors, positives = [], []
    return {"pairs": pairs, "seconds": clock.seconds, "cpu_seconds": clock.cpu_seconds, "skipped": skipped,
            "tts_seconds": tts_seconds}


# ------------------------------------------------------------------------------------------- ours (the recipe)
_RECIPE = None
EPOCH_TIMES: list[dict] = []


def _recipe():
    """recipes/rewire/train.py as a module, and a RewireBrain subclass that only reads the clock."""
    global _RECIPE
    if _RECIPE is None:
        import speechbrain as sb

        from rewire_lib.rewiring.brain import RewireBrain

        module = load_recipe_module("rewire")

        class TimedRewireBrain(RewireBrain):
            def on_stage_start(self, stage, epoch=None):
                super().on_stage_start(stage, epoch)
                if stage == sb.Stage.TRAIN:
                    self._bench_pairs, self._bench_clock = 0, None
                    self._bench_start = common.Clock(str(self.device)).__enter__()

            def on_fit_batch_end(self, batch, outputs, loss, should_step):
                super().on_fit_batch_end(batch, outputs, loss, should_step)
                self._bench_pairs += len(batch.view_a)
                self._bench_clock = self._bench_start.stop()  # the clock as of the last batch's end

            def on_stage_end(self, stage, stage_loss, epoch=None):
                if stage == sb.Stage.TRAIN and self._bench_clock is not None:
                    EPOCH_TIMES.append({"pairs": self._bench_pairs, "seconds": self._bench_clock.seconds,
                                        "cpu_seconds": self._bench_clock.cpu_seconds})
                super().on_stage_end(stage, stage_loss, epoch)

        _RECIPE = (module, TimedRewireBrain)
    return _RECIPE


def recipe_argv(encoder_dir, manifest, view, out_folder, args, epochs: int = 1) -> list[str]:
    hparams = common.REPO / "recipes" / "rewire" / "hparams" / f"{view}.yaml"
    argv = [str(hparams), "--encoder", encoder_dir, "--train_csv", str(manifest), "--output_folder", str(out_folder),
            "--number_of_epochs", str(epochs), "--batch_size", str(args.pairs_per_step), "--seed", str(args.seed),
            "--lr", "0.000001", "--device", args.device, "--noprogressbar"]
    if view != "twin":
        argv += ["--tts_backend", args.tts, "--tts_cache_dir", str(args.tts_cache_dir)]
    if getattr(args, "precision", "fp32") != "fp32":
        argv += ["--precision", args.precision]  # SpeechBrain's mixed-precision run option
    return argv


def ours_loop(encoder_dir, manifest, view, args, epochs: int = 1) -> list[dict]:
    """One run of the recipe's `main` (a fresh output folder): the timed epochs."""
    module, brain_class = _recipe()
    EPOCH_TIMES.clear()
    with tempfile.TemporaryDirectory(prefix="ours-", dir=common.WORK_DIR) as out:
        module.main(recipe_argv(encoder_dir, manifest, view, out, args, epochs), brain_class=brain_class)
    logging.disable(logging.WARNING)  # the recipe's logging set-up re-enables INFO output
    return list(EPOCH_TIMES)


# ------------------------------------------------------------------------------------------- the bound
def padded_batches(manifest, view, args, out_folder) -> list:
    """The padded [2N, S] batches, and their relative lengths, that `ours` trains on in epoch 1."""
    import torch

    from rewire_lib.rewiring.brain import build_rewire_dataset, make_train_loader_kwargs, pad_views
    from rewire_lib.views.pairs import make_pair_builder

    builder = make_pair_builder(view, seed=args.seed, tts_backend=args.tts, tts_cache_dir=args.tts_cache_dir)
    dataset = build_rewire_dataset(manifest, builder, out_folder, sorting="bucket")
    hp = {"sorting": "bucket", "batch_size": args.pairs_per_step, "seed": args.seed, "num_workers": 0}
    kwargs = make_train_loader_kwargs(dataset, hp)
    builder.set_epoch(1)
    hp["sampler"].set_epoch(1)
    return [pad_views(b.view_a, b.view_b) for b in torch.utils.data.DataLoader(dataset, **kwargs)]


def autocast(device, precision: str = "fp32"):
    """torch.autocast for "bf16"/"fp16" (as SpeechBrain's --precision does), a no-op for "fp32"."""
    import torch

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(device_type=str(device).split(":")[0], dtype=dtype, enabled=dtype is not None)


def bound_loop(encoder_dir, batches, device, precision: str = "fp32") -> dict:
    """Forward + backward alone, with the recipe's default LayerDrop (off) so it bounds what `ours` runs."""
    import torch

    from rewire_lib.models.encoder import SpeechEncoder
    from rewire_lib.models.featurizer import WeightedLayerSum, masked_mean

    encoder = SpeechEncoder.from_pretrained(encoder_dir, layerdrop=0.0).to(device).train()
    featurizer = WeightedLayerSum(encoder.num_layers).to(device)
    params = list(encoder.parameters()) + list(featurizer.parameters())
    batches = [(w.to(device), l.to(device)) for w, l in batches]
    pairs = 0
    with common.Clock(device) as clock:
        for wavs, lens in batches:
            with autocast(device, precision):
                out = encoder(wavs, lens)
                pooled = masked_mean(featurizer(out.hidden_states), out.frame_mask)
            pooled.float().square().mean().backward()
            for p in params:
                p.grad = None
            pairs += wavs.shape[0] // 2
    return {"pairs": pairs, "seconds": clock.seconds, "cpu_seconds": clock.cpu_seconds}


# ------------------------------------------------------------------------------------------- driver
def prefill_tts(manifest, args):
    """Fill the TTS cache `ours` reads (untimed: a run after its first epoch finds it full)."""
    from rewire_lib.views.tts import TTSCache, make_backend, read_manifest_texts

    cache = TTSCache(args.tts_cache_dir, make_backend(args.tts))
    return cache, cache.synthesize_missing(read_manifest_texts(manifest), num_workers=2).as_dict()


def bench_one(encoder_dir, dataset, view, args) -> dict:
    from rewire_lib.views.tts import make_backend

    manifest = common.bench_manifest(dataset, args.pairs, seed=args.seed)
    rows = read_manifest(manifest)
    tts = make_backend(args.tts) if view == "neutral" else None
    tts_cache, tts_stats = prefill_tts(manifest, args) if view == "neutral" else (None, None)
    with tempfile.TemporaryDirectory(prefix="bound-", dir=common.WORK_DIR) as out:
        batches = padded_batches(manifest, view, args, out)
    pad = [1 - float(l.mean()) for _, l in batches]  # share of padded samples per batch
    # One untimed pass of each loop first: the first time a process meets an input shape (and the first
    # recipe run in a process) costs extra (oneDNN kernel set-up, lazy imports); timed runs all start warm.
    t_warm = time.perf_counter()
    bound_loop(encoder_dir, batches, args.device)
    ours_loop(encoder_dir, manifest, view, args)
    authors_loop(encoder_dir, rows, view, tts, args.pairs_per_step, args.seed, args.device, warm_cache=tts_cache)
    print(f"  [{dataset}/{view}] warm-up passes: {time.perf_counter() - t_warm:.1f} s", flush=True)
    runs = {"authors": [], "ours": [], "bound": []}
    loops = {
        "authors": lambda: authors_loop(encoder_dir, rows, view, tts, args.pairs_per_step, args.seed, args.device,
                                        zero_grad=not args.no_zero_grad),
        "ours": lambda: ours_loop(encoder_dir, manifest, view, args)[0],
        "bound": lambda: bound_loop(encoder_dir, batches, args.device),
    }
    names = list(loops)
    for rep in range(args.reps):
        for name in names[rep % 3:] + names[: rep % 3]:  # rotate the order from one repetition to the next
            r = loops[name]()
            r["pairs_per_s"] = r["pairs"] / r["seconds"]
            r["pairs_per_cpu_s"] = r["pairs"] / r["cpu_seconds"]
            r["load_avg"] = common.load_average()
            runs[name].append(r)
            print(f"  [{dataset}/{view}] rep {rep + 1}/{args.reps} {name:7s}: {r['pairs']} pairs in "
                  f"{r['seconds']:.2f} s = {r['pairs_per_s']:.2f} pairs/s ({r['pairs_per_cpu_s']:.2f} per CPU-s)", flush=True)
    med = {k: common.median(r["pairs_per_s"] for r in v) for k, v in runs.items()}
    med_cpu = {k: common.median(r["pairs_per_cpu_s"] for r in v) for k, v in runs.items()}
    return {
        "dataset": dataset, "view": view, "manifest": str(manifest), "utterances": len(rows),
        "mean_seconds": sum(float(r["duration"]) for r in rows) / len(rows),
        "batches": len(batches), "mean_padding_share": sum(pad) / len(pad),
        "tts_prefill": tts_stats, "runs": runs,
        "median_pairs_per_s": med,
        "authors_tts_share": f"{100 * common.median(x['tts_seconds'] / x['seconds'] for x in runs['authors']):.0f}%",
        "speedup_vs_authors": med["ours"] / med["authors"],
        "share_of_bound": med["ours"] / med["bound"],
        "median_pairs_per_cpu_s": med_cpu,
        "cpu_speedup_vs_authors": med_cpu["ours"] / med_cpu["authors"],
        "cpu_share_of_bound": med_cpu["ours"] / med_cpu["bound"],
    }


GOALS = {"neutral": ("speedup_vs_authors", 5.0), "twin": ("speedup_vs_authors", 1.0)}


def print_tables(result: dict) -> str:
    rows = []
    for r in result["results"]:
        m = r["median_pairs_per_s"]
        rows.append([r["dataset"], r["view"], r["utterances"], f"{r['mean_seconds']:.2f}",
                     f"{100 * r['mean_padding_share']:.0f}%",
                     m["authors"], r["authors_tts_share"], m["ours"], m["bound"], f"{r['speedup_vs_authors']:.2f}x",
                     f"{100 * r['share_of_bound']:.0f}%"])
    text = common.table(
        f"Rewiring throughput, pairs/s (median of {result['settings']['reps']} runs; encoder "
        f"{result['encoder']['name']}, {result['encoder']['params_M']} M params, {result['settings']['device']}, "
        f"{result['settings']['pairs_per_step']} pairs/step, TTS {result['settings']['tts']}, "
        f"{result['settings']['torch_threads']} torch thread(s))",
        ["data", "view", "pairs", "mean s", "padding", "authors", "authors' TTS time", "ours", "bound",
         "ours/authors", "ours/bound"],
        rows)
    cpu_rows = []
    for r in result["results"]:
        m = r["median_pairs_per_cpu_s"]
        cpu_rows.append([r["dataset"], r["view"], m["authors"], m["ours"], m["bound"],
                         f"{r['cpu_speedup_vs_authors']:.2f}x", f"{100 * r['cpu_share_of_bound']:.0f}%"])
    text += common.table("The same runs in pairs per CPU-second (process + its children, e.g. text2wave): "
                         "waiting for a busy core left out", ["data", "view", "authors", "ours", "bound",
                                                               "ours/authors", "ours/bound"], cpu_rows)
    spreads = [[r["dataset"], r["view"]] + [common.spread([x["pairs_per_s"] for x in r["runs"][k]])
                                             for k in ("authors", "ours", "bound")] for r in result["results"]]
    text += common.table("Spread of the runs (min-max pairs/s)", ["data", "view", "authors", "ours", "bound"], spreads)
    print(text, flush=True)
    return text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--encoder", default=None,
                   help="folder / hub id, or a preset: " + ", ".join(common.PRESETS) +
                        " (default: pretrained/tiny-hubert if committed, else tiny-hubert-random)")
    p.add_argument("--data", nargs="+", default=["fsdd", "sc"], choices=sorted(common.DATASETS))
    p.add_argument("--views", nargs="+", default=["twin", "neutral"], choices=["twin", "neutral"])
    p.add_argument("--pairs", type=int, default=32, help="utterances (pairs) per run; a multiple of --pairs-per-step")
    p.add_argument("--reps", type=int, default=3, help="runs of each loop (medians are quoted)")
    p.add_argument("--pairs-per-step", type=int, default=4)
    p.add_argument("--tts", default="festival", choices=["festival", "espeak"])
    p.add_argument("--tts-cache-dir", type=Path, default=None, help="default: <repo>/cache/tts")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", default="auto", help="torch threads: a number, or auto (see bench/README.md)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-zero-grad", action="store_true", help="authors' loop: never zero gradients (as they did)")
    p.add_argument("--quick", action="store_true", help="16 pairs, 2 runs each")
    p.add_argument("--out", type=Path, default=None, help="JSON folder (default bench/results)")
    p.add_argument("--name", default=None, help="JSON file name (default rewire_throughput[_cuda])")
    return p


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.pairs, args.reps = min(args.pairs, 16), min(args.reps, 2)
    if args.pairs % args.pairs_per_step:
        raise SystemExit("--pairs must be a multiple of --pairs-per-step (every loop drops an incomplete last step)")
    common.quiet_logs()
    logging.disable(logging.WARNING)
    threads = common.set_threads(args.threads)
    common.WORK_DIR.mkdir(parents=True, exist_ok=True)
    if args.tts_cache_dir is None:
        from rewire_lib.files.paths import cache_dir

        args.tts_cache_dir = cache_dir() / "tts"
    encoder_dir, name = common.resolve_encoder(args.encoder)
    encoder = dict(common.describe_encoder(encoder_dir), name=name, path=encoder_dir)
    print(f"Rewiring throughput: encoder {name} ({encoder['params_M']} M params), device {args.device}, "
          f"{args.pairs} pairs x {args.reps} runs per loop, torch threads {threads}, "
          f"load average {common.load_average()}", flush=True)
    results = []
    for dataset in args.data:
        for view in args.views:
            results.append(bench_one(encoder_dir, dataset, view, args))
    result = {"script": SCRIPT, "machine": common.machine(), "encoder": encoder,
              "settings": dict({k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                           torch_threads=threads),
              "results": results}
    name = args.name or (SCRIPT if args.device == "cpu" else f"{SCRIPT}_{args.device.split(':')[0]}")
    return common.finish(name, result, print_tables, args.out)


if __name__ == "__main__":
    main()
