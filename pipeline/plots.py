"""Pareto frontiers (size and latency against accuracy) and their plots, from report.json alone.

A point is on a frontier when no other artifact is at least as small (or fast) and at least as
accurate while strictly better in one of the two. Exports that failed their parity validation
are plotted (as crosses) but never on a frontier: they are not something to ship.

Plots are drawn with matplotlib's Agg renderer on a `Figure` of their own (no pyplot, no
display, no global state) and saved without a timestamp or version in the PNG metadata, so the
same report gives the same bytes.
"""
from __future__ import annotations

import io
import math
from typing import Any, Mapping, Sequence

from slimpipe.pipeline.report import _latency, reference_for

_EPS = 1e-9
LATENCY_RUNTIMES = ("litert", "onnxruntime")  # exported runtimes; p50 at 1 thread, batch 1


def pareto_front(points: Sequence[tuple[str, float, float]]) -> list[str]:
    """Names of the (name, cost, accuracy) points that no other point dominates, by cost.

    q dominates p when q.cost <= p.cost and q.accuracy >= p.accuracy, strictly better in one.
    Identical points do not dominate each other: both stay. Points with a None are ignored.
    """
    pts = [p for p in points if p[1] is not None and p[2] is not None]
    front = [p for p in pts if not any(
        q[1] <= p[1] and q[2] >= p[2] and (q[1] < p[1] or q[2] > p[2]) for q in pts)]
    return [p[0] for p in sorted(front, key=lambda p: (p[1], -p[2], p[0]))]


def _parity_failed(row: Mapping[str, Any]) -> bool:
    val = row.get("validation")
    return bool(val) and val.get("passed") is not True


def deployable(row: Mapping[str, Any]) -> bool:
    """A TFLite or ONNX export whose parity validation passed or was not run."""
    return row.get("format") in ("tflite", "onnx") and not _parity_failed(row)


def p50_ms(row: Mapping[str, Any]) -> float | None:
    """p50 latency on the CPU at 1 thread, batch 1, in LiteRT or ONNX Runtime, if measured."""
    for runtime in LATENCY_RUNTIMES:
        lat = _latency(row, runtime, 1, 1)
        if lat and lat.get("p50_ms") is not None:
            return lat["p50_ms"]
    return None


def pareto_table(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per artifact with accuracy and gzip size, and whether it is on each frontier."""
    rows = [r for r in report["artifacts"]
            if r.get("accuracy") is not None and r.get("gzip_bytes") is not None]
    eligible = [r for r in rows if not _parity_failed(r)]
    size_front = set(pareto_front([(r["name"], r["gzip_bytes"], r["accuracy"]) for r in eligible]))
    lat_front = set(pareto_front([(r["name"], p50_ms(r), r["accuracy"]) for r in eligible]))
    return [{"name": r["name"], "format": r.get("format"), "mode": r.get("mode"),
             "bytes": r.get("bytes"), "gzip_bytes": r["gzip_bytes"], "accuracy": r["accuracy"],
             "p50_ms": p50_ms(r), "size_floor_bytes": r.get("size_floor_bytes"),
             "top1_agreement": r.get("top1_agreement"), "on_size_front": r["name"] in size_front,
             "on_latency_front": r["name"] in lat_front} for r in rows]


def _dense_tflite(report: Mapping[str, Any]):
    """The dense float32 TFLite export of the baseline: what 'x smaller' is measured against."""
    return reference_for({"format": "tflite"}, report["artifacts"], report.get("baseline"))


def _ratio(a, b):
    return a / b if a and b else None


def smallest_within(report: Mapping[str, Any], points: float = 0.5) -> dict[str, Any] | None:
    """The smallest deployable artifact (by gzip size) at most `points` below the baseline."""
    rows = report["artifacts"]
    base = next((r for r in rows if r.get("name") == report.get("baseline")), None)
    if base is None or base.get("accuracy") is None:
        return None
    floor = base["accuracy"] - points / 100
    pool = [r for r in rows if deployable(r) and r.get("gzip_bytes") is not None
            and r.get("accuracy") is not None and r["accuracy"] >= floor - _EPS]
    if not pool:
        return None
    best = min(pool, key=lambda r: (r["gzip_bytes"], -r["accuracy"], r["name"]))
    ref = _dense_tflite(report)
    return {"name": best["name"], "gzip_bytes": best["gzip_bytes"], "bytes": best.get("bytes"),
            "accuracy": best["accuracy"], "reference": ref["name"] if ref else None,
            "x_smaller_gzip": _ratio(ref and ref.get("gzip_bytes"), best["gzip_bytes"]),
            "x_smaller_raw": _ratio(ref and ref.get("bytes"), best.get("bytes"))}


def smallest_sentence(report: Mapping[str, Any], points: float = 0.5) -> str:
    """One sentence: the smallest deployable artifact within `points` of the baseline."""
    rows = report["artifacts"]
    base = next((r for r in rows if r.get("name") == report.get("baseline")), None)
    if base is None:
        return "This report names no baseline, so no artifact can be compared against it."
    if base.get("accuracy") is None:
        return (f"The baseline {report.get('baseline')}'s accuracy was not measured, so no "
                f"artifact can be compared against it.")
    best = smallest_within(report, points)
    if best is None:
        return (f"No deployable artifact is within {points:g} points of the baseline's accuracy "
                f"({base['accuracy']:.2%}).")
    delta = (best["accuracy"] - base["accuracy"]) * 100
    sizes = f"{best['gzip_bytes']:,} bytes gzipped"
    if best["x_smaller_gzip"]:
        sizes += f" ({best['x_smaller_gzip']:.2f}x smaller than {best['reference']}"
        sizes += (f"; {best['x_smaller_raw']:.2f}x smaller on disk)" if best["x_smaller_raw"]
                  else ")")
    return (f"Smallest deployable artifact within {points:g} points of the baseline's accuracy: "
            f"{best['name']}, {sizes}, at {best['accuracy']:.2%} accuracy ({delta:+.2f} points).")


# -- plots -----------------------------------------------------------------------------------
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


def plot_pareto(report: Mapping[str, Any]) -> dict[str, bytes]:
    """PNG bytes by file name: size_vs_accuracy.png and latency_vs_accuracy.png.

    A plot is left out when no artifact has the data for it.
    """
    table = pareto_table(report)
    failed = {r["name"] for r in report["artifacts"] if _parity_failed(r)}
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
    return out
