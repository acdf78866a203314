"""Pareto frontiers (size and latency against accuracy) and the smallest deployable artifact
within N points of the baseline, from report.json alone.

A point is on a frontier when no other artifact is at least as small (or fast) and at least as
accurate while strictly better in one of the two. Exports that failed their parity validation
are never on a frontier: they are not something to ship.

>>> smallest_sentence(report)
'Smallest deployable artifact within 0.5 points of the baseline's accuracy: ...'
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from slimpipe.pipeline.rows import (EPS, baseline_row, deployable, p50_ms, parity_failed,
                                    ratio_of, reference_for)


def pareto_front(points: Sequence[tuple[str, float, float]]) -> list[str]:
    """Names of the (name, cost, accuracy) points that no other point dominates, by cost.

    q dominates p when q.cost <= p.cost and q.accuracy >= p.accuracy, strictly better in one.
    Identical points do not dominate each other: both stay. Points with a None are ignored.
    """
    pts = [p for p in points if p[1] is not None and p[2] is not None]
    front = [p for p in pts if not any(
        q[1] <= p[1] and q[2] >= p[2] and (q[1] < p[1] or q[2] > p[2]) for q in pts)]
    return [p[0] for p in sorted(front, key=lambda p: (p[1], -p[2], p[0]))]


def pareto_table(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per artifact with accuracy and gzip size, and whether it is on each frontier."""
    rows = [r for r in report["artifacts"]
            if r.get("accuracy") is not None and r.get("gzip_bytes") is not None]
    eligible = [r for r in rows if not parity_failed(r)]
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


def smallest_within(report: Mapping[str, Any], points: float = 0.5) -> dict[str, Any] | None:
    """The smallest deployable artifact (by gzip size) at most `points` below the baseline."""
    base = baseline_row(report)
    if base is None or base.get("accuracy") is None:
        return None
    floor = base["accuracy"] - points / 100
    pool = [r for r in report["artifacts"] if deployable(r) and r.get("gzip_bytes") is not None
            and r.get("accuracy") is not None and r["accuracy"] >= floor - EPS]
    if not pool:
        return None
    best = min(pool, key=lambda r: (r["gzip_bytes"], -r["accuracy"], r["name"]))
    ref = _dense_tflite(report)
    return {"name": best["name"], "gzip_bytes": best["gzip_bytes"], "bytes": best.get("bytes"),
            "accuracy": best["accuracy"], "reference": ref["name"] if ref else None,
            "x_smaller_gzip": ratio_of(ref and ref.get("gzip_bytes"), best["gzip_bytes"]),
            "x_smaller_raw": ratio_of(ref and ref.get("bytes"), best.get("bytes"))}


def smallest_sentence(report: Mapping[str, Any], points: float = 0.5) -> str:
    """One sentence: the smallest deployable artifact within `points` of the baseline."""
    base = baseline_row(report)
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
