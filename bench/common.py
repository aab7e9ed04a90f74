"""Shared pieces of the benchmark scripts: encoders, bench manifests, timing, tables, JSON, memory.

Nothing here is used by the library or the recipes; the benchmarks only *drive* them.
"""
from __future__ import annotations

import csv
import json
import math
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence

from rewire_lib.files.atomic import atomic_path, atomic_write_json
from rewire_lib.files.paths import REPO_ROOT as REPO
from rewire_lib.files.paths import cache_dir

BENCH_DIR = REPO / "bench"
RESULTS_DIR = BENCH_DIR / "results"
WORK_DIR = Path(os.environ.get("REWIRE_BENCH_WORK", cache_dir() / "bench"))  # git-ignored (<repo>/cache or $REWIRE_CACHE)

DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
SC_WORDS = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]
MIN_SECONDS = 0.25  # clips shorter than this are left out (see bench/README.md: HF time masking needs >= 10 frames)

# --------------------------------------------------------------------------------------- encoders
# The shape of the project's default encoder (recipes/pretrain/hparams/tiny_hubert.yaml, HubertConfig from
# rewire_lib/pretrain/model.py): used, with random weights, until pretrained/tiny-hubert is committed.
TINY_HUBERT_SHAPE = dict(
    hidden_size=256, num_hidden_layers=6, num_attention_heads=4, intermediate_size=1024, conv_dim=(128,) * 7,
    conv_stride=(5, 2, 2, 2, 2, 2, 2), conv_kernel=(10, 3, 3, 3, 3, 2, 2), conv_bias=True,
    feat_extract_norm="layer", do_stable_layer_norm=True, feat_proj_layer_norm=True,
    num_conv_pos_embeddings=64, num_conv_pos_embedding_groups=16,
    hidden_dropout=0.1, attention_dropout=0.1, activation_dropout=0.0, feat_proj_dropout=0.0, layerdrop=0.0,
    apply_spec_augment=True, mask_time_prob=0.05, mask_time_length=10, mask_feature_prob=0.0,
)
# wav2vec 2.0 Base sized (95 M parameters), random weights: the "larger encoder" of the GPU run.
BASE_SHAPE = dict(
    hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, conv_dim=(512,) * 7,
    conv_stride=(5, 2, 2, 2, 2, 2, 2), conv_kernel=(10, 3, 3, 3, 3, 2, 2), conv_bias=True,
    feat_extract_norm="layer", do_stable_layer_norm=True, num_conv_pos_embeddings=128,
    num_conv_pos_embedding_groups=16, hidden_dropout=0.1, attention_dropout=0.1, layerdrop=0.0,
    apply_spec_augment=True, mask_time_prob=0.05, mask_time_length=10,
)
# wav2vec 2.0 Large sized (315 M parameters), random weights: the paper's encoder shape.
LARGE_SHAPE = dict(BASE_SHAPE, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                   intermediate_size=4096)
PRESETS = {
    # name: (family, settings); "smoke" is the library's tiny test encoder (seconds on a CPU)
    "smoke": ("hubert", {}),
    "tiny-hubert-random": ("hubert", TINY_HUBERT_SHAPE),
    "base-random": ("wav2vec2", BASE_SHAPE),
    "large-random": ("wav2vec2", LARGE_SHAPE),
    # the library's stock configs (rewire_lib.models.tiny.make_stock_encoder, LayerDrop and masking as shipped):
    # full-size wav2vec2-base (group-norm CNN, no attention mask) and wav2vec2-large-lv60 (the paper's shape)
    "base-stock": ("stock:wav2vec2-base", {"size": "base"}),
    "large-stock": ("stock:wav2vec2-large-lv60", {"size": "large"}),
    # the same two shrunk to a few hundred thousand parameters (CPU smoke runs, bench/gpu.py --tiny)
    "tiny-base-stock": ("stock:wav2vec2-base", {}),
    "tiny-large-stock": ("stock:wav2vec2-large-lv60", {}),
}


def default_encoder_spec() -> str:
    """The committed pretrained/tiny-hubert when it is there, else its random stand-in."""
    from rewire_lib.files.paths import default_encoder_dir

    return str(default_encoder_dir()) if (default_encoder_dir() / "config.json").is_file() else "tiny-hubert-random"


def resolve_encoder(spec: Optional[str]) -> tuple[str, str]:
    """(folder or hub id, description) for a preset name, a folder, or None (the default)."""
    spec = spec or default_encoder_spec()
    if spec in PRESETS:
        family, settings = PRESETS[spec]
        folder = WORK_DIR / "encoders" / spec
        if not (folder / "config.json").is_file():
            from rewire_lib.models.tiny import make_stock_encoder, make_tiny_encoder

            tmp = folder.with_name(f".{spec}.{os.getpid()}.tmp")  # a folder: swapped in whole below
            if family.startswith("stock:"):
                make_stock_encoder(tmp, family.split(":", 1)[1], seed=0, layerdrop=None, **settings)
            else:
                make_tiny_encoder(tmp, family, seed=0, **settings)
            folder.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.replace(tmp, folder)
            except OSError:  # another process made it meanwhile
                import shutil

                shutil.rmtree(tmp, ignore_errors=True)
        return str(folder), f"{spec} (random weights, {family})"
    return spec, spec


def describe_encoder(folder: str) -> dict:
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(folder)
    import torch
    from transformers import AutoModel

    with torch.device("meta"):
        model = AutoModel.from_config(cfg)
    params = sum(p.numel() for p in model.parameters())
    return {"model_type": cfg.model_type, "hidden_size": cfg.hidden_size, "layers": cfg.num_hidden_layers,
            "params_M": round(params / 1e6, 2), "spec_augment": bool(getattr(cfg, "apply_spec_augment", False)
                                                                     and getattr(cfg, "mask_time_prob", 0) > 0)}


# --------------------------------------------------------------------------------------- data
def _write_manifest(path: Path, rows: List[dict]) -> Path:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["ID", "duration", "wav", "wrd"])
        w.writeheader()
        w.writerows(rows)
    return path


def _rows_from(files: Sequence[tuple[Path, str]], n: int, seed: int, min_seconds: float) -> List[dict]:
    import soundfile as sf

    rng = random.Random(seed)
    files = list(files)
    rng.shuffle(files)
    rows = []
    for wav, word in files:
        info = sf.info(str(wav))
        dur = info.frames / info.samplerate
        if dur < min_seconds:
            continue
        rows.append({"ID": f"{word}_{wav.stem}", "duration": f"{dur:.4f}", "wav": str(wav), "wrd": word})
        if len(rows) == n:
            break
    return rows


def synthetic_audio(folder: Path, n: int, seed: int, lengths: str) -> List[dict]:
    """Speech-like noise (amplitude-modulated, low-passed) for machines without the shared data.

    lengths: "mixed" (0.3-3 s, uniform) or "equal" (1 s each). Transcripts are digit words."""
    import numpy as np
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        dur = 1.0 if lengths == "equal" else float(rng.uniform(0.3, 3.0))
        samples = int(dur * 16000)
        noise = rng.standard_normal(samples).astype("float32")
        kernel = np.hanning(9).astype("float32")
        voice = np.convolve(noise, kernel / kernel.sum(), mode="same")
        envelope = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(2, 6) * np.arange(samples) / 16000)
        wav = (0.3 * voice * envelope).astype("float32")
        path = folder / f"syn_{lengths}_{i:04d}.wav"
        if not path.exists():
            sf.write(str(path), wav, 16000, subtype="PCM_16")
        rows.append({"ID": path.stem, "duration": f"{samples / 16000:.4f}", "wav": str(path),
                     "wrd": " ".join(DIGITS[int(d)] for d in str(i))})
    return rows


DATASETS = {
    "fsdd": "FSDD digits, 8 kHz, mixed lengths (0.25-2.3 s)",
    "sc": "Speech Commands v0.02 test keywords, 1 s each",
    "synth-mixed": "generated speech-like noise, 0.3-3 s (no shared data needed)",
    "synth-equal": "generated speech-like noise, 1 s each (no shared data needed)",
}


def bench_manifest(dataset: str, n: int, seed: int = 0, min_seconds: float = MIN_SECONDS) -> Path:
    """A manifest (ID,duration,wav,wrd) of `n` utterances of `dataset` (see DATASETS), written under WORK_DIR."""
    from rewire_lib.files.paths import shared_data_dir

    out = WORK_DIR / "manifests" / f"{dataset}_n{n}_s{seed}.csv"
    if dataset == "fsdd":
        folder = shared_data_dir() / "fsdd" / "recordings"
        files = [(p, DIGITS[int(p.name.split("_")[0])]) for p in sorted(folder.glob("*.wav"))]
        rows = _rows_from(files, n, seed, min_seconds)
    elif dataset == "sc":
        root = shared_data_dir() / "speech_commands_v0.02_test"
        files = [(p, w) for w in SC_WORDS for p in sorted((root / w).glob("*.wav"))]
        rows = [r for r in _rows_from(files, 10 * n, seed, min_seconds) if r["duration"] == "1.0000"][:n]
    elif dataset in ("synth-mixed", "synth-equal"):
        rows = synthetic_audio(WORK_DIR / "audio" / dataset, n, seed, dataset.split("-")[1])
    else:
        raise SystemExit(f"unknown dataset {dataset!r}; choose from {sorted(DATASETS)}")
    if len(rows) < n:
        raise SystemExit(f"{dataset}: only {len(rows)} usable utterances found (wanted {n}); "
                         f"is the shared data at {shared_data_dir()}? Use synth-mixed / synth-equal otherwise.")
    return _write_manifest(out, rows)


# --------------------------------------------------------------------------------------- timing
def median(values: Iterable[float]) -> float:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(values) if values else math.nan


def spread(values: Sequence[float]) -> str:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "-"
    return f"{min(values):.3g}-{max(values):.3g}"


def sync(device: str) -> None:
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def cpu_seconds() -> float:
    """CPU time used so far by this process (all threads) and its finished children (e.g. text2wave).

    On a machine shared with other jobs, wall time includes the time spent waiting for a core; CPU time
    does not, so pairs per CPU-second vary far less from run to run (see bench/README.md)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


class Clock:
    """Wall time (`seconds`) and CPU time (`cpu_seconds`) of a block."""

    def __init__(self, device: str = "cpu"):
        self.device = device

    def __enter__(self):
        sync(self.device)
        self.t0, self.c0 = time.perf_counter(), cpu_seconds()
        return self

    def stop(self) -> "Clock":
        sync(self.device)
        self.seconds = time.perf_counter() - self.t0
        self.cpu_seconds = cpu_seconds() - self.c0
        return self

    def __exit__(self, *exc):
        self.stop()


def load_average() -> Optional[float]:
    try:
        return os.getloadavg()[0]
    except OSError:  # pragma: no cover
        return None


def machine() -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "load_avg_1min": load_average(),
            "host": platform.node()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:  # pragma: no cover
        pass
    return info


# --------------------------------------------------------------------------------------- memory
def rss_mb() -> float:
    """Current resident set size of this process (MB), from /proc (Linux)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # pragma: no cover
        return math.nan


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (MB; ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(args: List[str], timeout: float = 900) -> dict:
    """Run `python <args>` in a fresh process; its last stdout line is a JSON object, returned."""
    proc = subprocess.run([sys.executable] + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          timeout=timeout, cwd=str(REPO))
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"child {' '.join(args)} failed (status {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


# --------------------------------------------------------------------------------------- output
def fmt(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if abs(value) >= 100:
            return f"{value:.0f}"
        return f"{value:.{digits}g}"
    return str(value)


def table(title: str, headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A Markdown table (readable in a terminal, pasteable into bench/README.md)."""
    cells = [[fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = lambda items: "| " + " | ".join(s.ljust(w) for s, w in zip(items, widths)) + " |"  # noqa: E731
    out = [f"\n### {title}\n", line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in cells]
    return "\n".join(out)


def save_json(name: str, obj: dict, folder: Optional[Path] = None) -> Path:
    return atomic_write_json(Path(folder or RESULTS_DIR) / f"{name}.json", obj, indent=1)


def finish(name: str, result: dict, print_tables: Callable[[dict], str], folder: Optional[Path] = None) -> dict:
    """A benchmark's last step: its tables printed and kept in the result, which is saved as <name>.json."""
    result["table"] = print_tables(result)
    path = save_json(name, result, folder)
    print(f"\nJSON: {path}")
    return result


def quiet_logs() -> None:
    """Keep the benchmark's own tables readable (SpeechBrain/HF log at INFO/WARNING a lot)."""
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    for name in ("speechbrain", "rewire_lib", "transformers", "matplotlib", "hyperpyyaml"):
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("TQDM_DISABLE", "1")


def set_threads(threads="auto") -> int:
    """Torch intra-op threads: a number, None (torch's choice), or "auto": all cores when the machine is
    otherwise idle, else 1. On a shared machine, 2 OpenMP threads per process on 2 busy cores spin-wait on
    each other and run 2-4x *slower* than 1 thread (measured: bench/README.md), which would drown every figure."""
    import torch

    if threads == "auto":
        load = load_average()
        cpus = os.cpu_count() or 1
        threads = cpus if load is None or load < 0.5 * cpus else 1
    if threads not in (None, "", "default"):
        torch.set_num_threads(int(threads))
    return torch.get_num_threads()


def timed(fn: Callable[[], object], device: str = "cpu") -> float:
    with Clock(device) as c:
        fn()
    return c.seconds
