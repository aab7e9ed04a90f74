"""Command line of `rewire_lib.analysis.isotropy`: measure the isotropy of one or more encoders, per layer, and draw it.

    python -m rewire_lib.analysis.isotropy --encoder BASE --encoder REWIRED --manifest data/fsdd/test.csv \\
        --level frame --out results/isotropy [--max-vectors 20000] [--seed 0] [--layers 0,4-6]

Writes DIR/isotropy.json (settings + one row per encoder/level/layer), DIR/isotropy.csv (the same rows) and
DIR/isotropy.png (one panel per measure vs layer, one line per encoder), each atomically.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import sys
from pathlib import Path
from typing import List, Optional, Sequence

from rewire_lib.files.atomic import atomic_write_bytes
from rewire_lib.analysis.isotropy import (DEFAULT_MAX_VECTORS, DEFAULT_PAIRS, DEFAULT_TOP_K, IsotropyError, _check_levels,
                                 measure_encoder)

logger = logging.getLogger(__name__)

CSV_COLUMNS = ["encoder", "layer", "level", "n_vectors", "n_seen", "dim", "iw", "iw_centred", "avg_cosine",
               "isoscore", "isoscore_dims_used", "top_pc_share", "top_k", "centred", "normalised",
               "max_vectors", "seed", "n_utterances", "n_skipped"]
PLOT_MEASURES = [("iw", "I(W)"), ("avg_cosine", "average cosine"), ("isoscore", "IsoScore"),
                 ("top_pc_share", "top-PC variance share")]


def parse_layers(text: Optional[str]) -> Optional[List[int]]:
    """'0,3,5-7' -> [0, 3, 5, 6, 7]; None -> None (all layers)."""
    if text is None:
        return None
    out: List[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part[1:]:
                lo, hi = part.split("-", 1) if not part.startswith("-") else (part, "")
                out.extend(range(int(lo), int(hi) + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise IsotropyError(f"--layers: cannot read {part!r}; expected indices like '0,3,5-7'") from None
    if not out:
        raise IsotropyError("--layers: no layer index given")
    return out


def write_json(path: Path, settings: dict, rows: Sequence[dict]) -> None:
    atomic_write_bytes(path, (json.dumps({"settings": settings, "rows": list(rows)}, indent=2) + "\n").encode())


def write_csv(path: Path, rows: Sequence[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_bytes(path, buf.getvalue().encode())


def _short_names(encoders: Sequence[str]) -> dict:
    """Legend labels: folder basenames, unless two encoders share one (then the full string)."""
    short = {e: (Path(e).name or e) for e in encoders}
    if len(set(short.values())) < len(short):
        return {e: e for e in encoders}
    return short


def plot(path: Path, rows: Sequence[dict], settings: dict) -> None:
    """One panel per measure vs layer index; one colour per encoder, one line style per level."""
    from rewire_lib.files.logs import pyplot

    plt = pyplot()

    encoders = list(dict.fromkeys(r["encoder"] for r in rows))
    levels = list(dict.fromkeys(r["level"] for r in rows))
    labels = _short_names(encoders)
    styles = {"frame": ("-", "o"), "utterance": ("--", "s")}
    fig, axes = plt.subplots(1, len(PLOT_MEASURES), figsize=(4.2 * len(PLOT_MEASURES), 3.8), squeeze=False)
    for ax, (key, title) in zip(axes[0], PLOT_MEASURES):
        for i, enc in enumerate(encoders):
            for lvl in levels:
                pts = sorted((r["layer"], r[key]) for r in rows if r["encoder"] == enc and r["level"] == lvl)
                if not pts:
                    continue
                ls, marker = styles.get(lvl, ("-", "o"))
                label = labels[enc] + (f" ({lvl})" if len(levels) > 1 else "")
                ax.plot([p[0] for p in pts], [p[1] for p in pts], ls, marker=marker, color=f"C{i}", label=label)
        if key == "top_pc_share":
            title = f"top-{settings['top_k']} PC variance share"
        if key == "iw":
            title += " (centred)" if settings["centred"] else " (uncentred)"
        ax.set_title(title)
        ax.set_xlabel("layer")
        ax.grid(alpha=0.3)
        if key in ("iw", "isoscore", "top_pc_share"):
            ax.set_ylim(-0.02, 1.02)
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"Isotropy per layer - level: {settings['level']}, I(W) centred: {settings['centred']}, "
                 f"rows L2-normalised: {settings['normalised']}, up to {settings['max_vectors']} vectors/layer "
                 f"(seed {settings['seed']})", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m rewire_lib.analysis.isotropy",
        description="Isotropy (I(W), average cosine, IsoScore, top-PC share) of encoders, per layer.")
    p.add_argument("--encoder", action="append", required=True,
                   help="hub id or local folder; repeat to compare a base and its rewired versions")
    p.add_argument("--manifest", required=True, help="SpeechBrain CSV (ID,duration,wav)")
    p.add_argument("--level", choices=["frame", "utterance", "both"], default="frame",
                   help="frame: every valid frame; utterance: mean-pooled; both: one pass, both levels")
    p.add_argument("--out", required=True, help="output folder (isotropy.json, .csv, .png)")
    p.add_argument("--max-vectors", type=int, default=DEFAULT_MAX_VECTORS,
                   help="per layer and level, a seeded uniform reservoir sample of at most this many vectors "
                        "(default %(default)s; memory ~ N x layers x dim x 4 bytes)")
    p.add_argument("--seed", type=int, default=0, help="seed of the reservoir and of the cosine pairs")
    p.add_argument("--layers", default=None, help="hidden-state indices, e.g. '0,3,5-7' (default: all)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--center", action="store_true",
                   help="centre W for the headline I(W) (default: uncentred, as in the paper); "
                        "the centred I(W) is always reported too (iw_centred)")
    p.add_argument("--normalize", action="store_true",
                   help="L2-normalise rows before I(W), IsoScore and top-PC share (default: raw rows)")
    p.add_argument("--pairs", type=int, default=DEFAULT_PAIRS, help="random pairs for the average cosine")
    p.add_argument("--top-k", type=int, default=DEFAULT_TOP_K, help="top-k principal components (default 1)")
    p.add_argument("--data-root", default=None, help="replaces $data_root in the manifest's wav column")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from rewire_lib.files.outputs import check_writable, output_error
    from rewire_lib.models.encoder import EncoderLoadError

    try:
        _check_levels(args.level)
        layers = parse_layers(args.layers)
        if args.max_vectors < 2:
            raise IsotropyError(f"--max-vectors must be >= 2, got {args.max_vectors}")
        out = check_writable(args.out, "--out")  # before measuring, not after
        rows: List[dict] = []
        for enc in args.encoder:
            logger.info("measuring %s (%s level)", enc, args.level)
            rows += measure_encoder(enc, args.manifest, level=args.level, max_vectors=args.max_vectors,
                                    seed=args.seed, layers=layers, batch_size=args.batch_size, center=args.center,
                                    normalize=args.normalize, pairs=args.pairs, top_k=args.top_k,
                                    device=args.device, data_root=args.data_root, encoder_name=enc,
                                    progress=not args.no_progress)
    except (IsotropyError, EncoderLoadError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    settings = {
        "encoders": list(args.encoder), "manifest": str(args.manifest), "level": args.level,
        "layers": layers, "centred": args.center, "normalised": args.normalize, "max_vectors": args.max_vectors,
        "seed": args.seed, "pairs": args.pairs, "top_k": args.top_k, "batch_size": args.batch_size,
        "n_vectors": {f"{r['encoder']}|{r['level']}": r["n_vectors"] for r in rows},
        "notes": {
            "iw": "I(W) (Mu & Viswanath 2018) with the centred/normalised flags above",
            "iw_centred": "I(W) of the centred rows (same normalisation), always reported",
            "avg_cosine": "mean cosine of random pairs of vectors from different utterances (raw rows)",
            "isoscore": "IsoScore (Rudman et al. 2022); PCA-based, so translation-invariant",
            "top_pc_share": "share of variance in the top-k principal components (k = top_k)",
        },
    }
    try:
        write_json(out / "isotropy.json", settings, rows)
        write_csv(out / "isotropy.csv", rows)
        plot(out / "isotropy.png", rows, settings)
    except OSError as e:  # e.g. the disk filled up while measuring
        print(f"error: {output_error(e, out, '--out')}", file=sys.stderr)
        return 2
    for r in rows:
        logger.info("%s %s layer %d: I(W)=%.3g (centred %.3g) cos=%.3f IsoScore=%.3f top%d=%.3f", r["encoder"],
                    r["level"], r["layer"], r["iw"], r["iw_centred"], r["avg_cosine"], r["isoscore"], r["top_k"],
                    r["top_pc_share"])
    print(f"wrote {out / 'isotropy.json'}, {out / 'isotropy.csv'}, {out / 'isotropy.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
