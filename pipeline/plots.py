"""The Pareto plots: size and latency against accuracy, one PNG each, from report.json alone.

    images = plot_pareto(report)    # {"size_vs_accuracy.png": b"\\x89PNG...", ...}

Exports that failed their parity validation are drawn as crosses and never on a frontier
(see `slimpipe.pipeline.pareto`). Plots are drawn with matplotlib's Agg renderer on a `Figure`
of their own (no pyplot, no display, no global state) and saved without a timestamp or version
in the PNG metadata, so the same report gives the same bytes.
"""
from __future__ import annotations

import io
import math
from typing import Any, Mapping

from slimpipe.pipeline.pareto import pareto_table
from slimpipe.pipeline.rows import parity_failed

# The plots, by file name, with what each shows (alt text and caption).
PLOT_ALT = {
    "size_vs_accuracy.png": "Gzip size (KB, log scale) against accuracy for every artifact, "
                            "with the size Pareto frontier",
    "latency_vs_accuracy.png": "p50 latency (ms, 1 thread, batch 1) against accuracy for every "
                               "artifact, with the latency Pareto frontier",
}
_COLORS = {"keras": "#7f7f7f", "tflite": "#1f77b4", "onnx": "#d62728"}
_OFFSETS = [(4, 4), (4, -11), (4, 13), (4, -20), (4, 22), (4, -29)]


def _label_offsets(rows, cost_key: str, log_x: bool) -> list[tuple[int, int]]:
    """Label offsets (points) that stagger the names of points close to each other."""
    xs = [math.log10(r[cost_key]) if log_x else r[cost_key] for r in rows]
    ys = [r["accuracy"] for r in rows]
    span_x = (max(xs) - min(xs)) or 1.0
    span_y = (max(ys) - min(ys)) or 1.0
    levels: list[int] = []
    for i in range(len(rows)):
        taken = {levels[j] for j in range(i) if abs(xs[i] - xs[j]) / span_x < 0.25
                 and abs(ys[i] - ys[j]) / span_y < 0.08}
        levels.append(next(k for k in range(len(rows) + 1) if k not in taken))
    return [_OFFSETS[k % len(_OFFSETS)] for k in levels]


def _plot(rows, cost_key: str, front_key: str, xlabel: str, title: str, log_x: bool,
          scale: float = 1.0) -> bytes:
    from matplotlib.figure import Figure  # Agg canvas; no pyplot, no display needed

    fig = Figure(figsize=(7.5, 4.8), dpi=100)
    ax = fig.add_subplot()
    for fmt in sorted({r["format"] for r in rows}):
        mine = [r for r in rows if r["format"] == fmt]
        ok = [r for r in mine if not r["failed"]]
        bad = [r for r in mine if r["failed"]]
        color = _COLORS.get(fmt, "#2ca02c")
        if ok:
            ax.scatter([r[cost_key] / scale for r in ok], [r["accuracy"] * 100 for r in ok],
                       color=color, s=30, zorder=3, label=fmt)
        if bad:
            ax.scatter([r[cost_key] / scale for r in bad], [r["accuracy"] * 100 for r in bad],
                       color=color, marker="x", s=40, zorder=3, label=f"{fmt} (parity failed)")
    for r, offset in zip(rows, _label_offsets(rows, cost_key, log_x)):
        ax.annotate(r["name"], (r[cost_key] / scale, r["accuracy"] * 100), fontsize=7,
                    xytext=offset, textcoords="offset points")
    front = sorted((r for r in rows if r[front_key]), key=lambda r: (r[cost_key], -r["accuracy"]))
    if front:
        xs, ys = [r[cost_key] / scale for r in front], [r["accuracy"] * 100 for r in front]
        ax.step(xs, ys, where="post", color="#ff7f0e", lw=1.5, zorder=2, label="Pareto frontier")
        ax.scatter(xs, ys, s=110, facecolors="none", edgecolors="#ff7f0e", lw=1.5, zorder=4)
    if log_x:
        from matplotlib.ticker import LogLocator, NullFormatter, StrMethodFormatter

        ax.set_xscale("log")
        # Plain numbers at 1, 2, 5 x 10^k: matplotlib's default labels every minor tick of a
        # short log axis in 10^k notation, and the labels run into each other.
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(StrMethodFormatter("{x:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.margins(x=0.15, y=0.15)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def plot_search(report):
    from slimpipe.pipeline.search.section import plot_search as plot

    return plot(report)


def plot_pareto(report: Mapping[str, Any]) -> dict[str, bytes]:
    """PNG bytes by file name: size_vs_accuracy.png and latency_vs_accuracy.png.

    A plot is left out when no artifact has the data for it.
    """
    table = pareto_table(report)
    failed = {r["name"] for r in report["artifacts"] if parity_failed(r)}
    for row in table:
        row["failed"] = row["name"] in failed
    out: dict[str, bytes] = {}
    sized = [r for r in table if r["gzip_bytes"] and r["gzip_bytes"] > 0]
    if sized:
        out["size_vs_accuracy.png"] = _plot(
            sized, "gzip_bytes", "on_size_front", "gzip size (KB, log scale)",
            f"Size vs accuracy: {report.get('model')} on {report.get('dataset')}",
            log_x=True, scale=1000.0)
    timed = [r for r in table if r["p50_ms"] is not None]
    if timed:
        out["latency_vs_accuracy.png"] = _plot(
            timed, "p50_ms", "on_latency_front", "p50 latency (ms, 1 thread, batch 1)",
            f"Latency vs accuracy: {report.get('model')} on {report.get('dataset')}",
            log_x=False)
    out.update(plot_search(report))
    return out
