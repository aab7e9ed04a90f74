"""Curves people read: CSV logs appended row by row, and their PNG pictures.

matplotlib is imported by the plotting functions only, so that the CSV helpers stay light enough for
the manifest writer and the preparers' worker processes.
"""
from __future__ import annotations

import csv
import io
import logging
import os
from pathlib import Path
from typing import Iterable, Sequence

from rewire_lib.files.atomic import atomic_path, atomic_write_text


def pyplot():
    """matplotlib.pyplot drawing to files only (Agg, never a window). SpeechBrain's run log takes DEBUG
    records, and matplotlib's font search writes ~200 of them per run (more than half of a run's
    log.txt), so matplotlib's own logger is kept at INFO."""
    import matplotlib

    matplotlib.use("Agg")
    logging.getLogger("matplotlib").setLevel(logging.INFO)
    import matplotlib.pyplot as plt

    return plt


class CSVLog:
    """Append-only CSV with a fixed header. Rows are flushed at once so a killed run keeps its log."""

    def __init__(self, path: str | os.PathLike, fields: list[str]):
        self.path = Path(path)
        self.fields = list(fields)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists() or self.path.stat().st_size == 0:
            with open(self.path, "w", newline="") as f:
                csv.writer(f).writerow(self.fields)

    def append(self, **row) -> None:
        unknown = set(row) - set(self.fields)
        if unknown:
            raise KeyError(f"{self.path}: unknown columns {sorted(unknown)}; expected {self.fields}")
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.fields).writerow(row)
            f.flush()

    def truncate_after(self, column: str, last_value: float) -> None:
        """Drop rows written after `last_value` of `column` (a resumed run rewrites them)."""
        rows = read_csv(self.path)
        keep = [r for r in rows if float(r[column]) <= last_value]
        atomic_write_csv(self.path, self.fields, keep)


def read_csv(path: str | os.PathLike) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def csv_text(fields: Sequence[str], rows: Iterable[dict], extrasaction: str = "ignore") -> str:
    """CSV text with a header (`\\n` line ends, None written as an empty field). `extrasaction="raise"`
    refuses rows with keys outside `fields` instead of dropping them."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fields), lineterminator="\n", extrasaction=extrasaction)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return buf.getvalue()


def atomic_write_csv(path: str | os.PathLike, fields: Sequence[str], rows: Iterable[dict],
                     extrasaction: str = "ignore") -> Path:
    """Write rows as CSV crash-safe (rewire_lib.files.atomic): a killed run leaves the old file or the new one."""
    return atomic_write_text(path, csv_text(fields, rows, extrasaction))


def plot_columns(csv_path, png_path, x: str, ys: list[str], title: str = "", smooth: int = 1) -> None:
    """One subplot per column in `ys` against `x`; `smooth` > 1 adds a running mean line."""
    rows = read_csv(csv_path)
    plt = pyplot()
    fig, axes = plt.subplots(len(ys), 1, figsize=(7, 2.6 * len(ys)), squeeze=False)
    for ax, y in zip(axes[:, 0], ys):
        pts = [(float(r[x]), float(r[y])) for r in rows if r.get(y) not in (None, "")]
        if pts:
            xs, vs = zip(*pts)
            ax.plot(xs, vs, lw=0.8, alpha=0.6 if smooth > 1 else 1.0, label=y)
            if smooth > 1 and len(vs) >= smooth:
                kernel = [sum(vs[max(0, i - smooth + 1): i + 1]) / len(vs[max(0, i - smooth + 1): i + 1])
                          for i in range(len(vs))]
                ax.plot(xs, kernel, lw=1.6, label=f"{y} (running mean {smooth})")
            ax.legend(loc="best", fontsize=8)
        ax.set_xlabel(x)
        ax.set_ylabel(y)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, png_path)


def plot_layer_weights(weights, png_path, title: str = "Learned layer weights") -> None:
    fig, ax = pyplot().subplots(figsize=(6, 3))
    ax.bar(range(len(weights)), [float(w) for w in weights])
    ax.axhline(1.0 / len(weights), color="gray", ls="--", lw=0.8, label="equal weights")
    ax.set_xlabel("hidden state (0 = CNN/projection output)")
    ax.set_ylabel("softmax weight")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, png_path)


def save_figure(fig, png_path) -> None:
    """Save `fig` as PNG crash-safe and close it."""
    try:
        with atomic_path(png_path) as tmp:
            fig.savefig(tmp, dpi=110)
    finally:
        pyplot().close(fig)
