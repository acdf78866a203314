"""A trial's answer, read from its report: the best deployable file within the accuracy budget.

>>> s = score(report, objective="size", max_drop=0.5)
>>> s.file, s.cost, s.drop, s.feasible
('clustered.pcqat.per-tensor.sparse.tflite', 0.041, 0.32, True)

`cost` is lower-is-better against the dense float TFLite file of the same run: gzip bytes over
its gzip bytes (size), p50 latency at 1 thread and batch 1 over its p50 (latency; both timed in
the same interleaved passes), or the geometric mean of the two (balanced). Only the files the
compression made are candidates (not the baseline's own exports). With no candidate within the
budget, the answer is the candidate that lost the least accuracy, marked infeasible.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping

from slimpipe.pipeline.rows import EPS, baseline_row, deployable, p50_ms, reference_for


@dataclass(frozen=True)
class Score:
    file: str | None
    cost: float | None  # lower is better; None when nothing could be measured
    drop: float | None  # points below the baseline on the split the report was scored on
    feasible: bool
    accuracy: float | None
    baseline_accuracy: float | None
    bytes: int | None
    gzip_bytes: int | None
    size_ratio: float | None  # file gzip / dense float TFLite gzip
    latency_ratio: float | None  # file p50 / dense float TFLite p50
    points: tuple[tuple[str, float, float], ...] = ()  # every candidate: (file, cost, accuracy)

    def record(self) -> dict[str, Any]:
        out = asdict(self)
        out["points"] = [list(p) for p in self.points]
        return out


def cost_of(row: Mapping[str, Any], ref: Mapping[str, Any], objective: str) -> tuple[float | None, float | None, float | None]:
    """(cost, size ratio, latency ratio) of one row against the dense float file."""
    size = row["gzip_bytes"] / ref["gzip_bytes"] if row.get("gzip_bytes") and ref.get("gzip_bytes") else None
    mine, theirs = p50_ms(row), p50_ms(ref)
    latency = mine / theirs if mine and theirs else None
    if objective == "size":
        return size, size, latency
    if objective == "latency":
        return latency, size, latency
    cost = math.sqrt(size * latency) if size and latency else None
    return cost, size, latency


def score(report: Mapping[str, Any], *, objective: str, max_drop: float, fmt: str = "tflite") -> Score:
    """The report's best `fmt` file for `objective` within `max_drop` points of its baseline."""
    rows = report["artifacts"]
    base = baseline_row(report)
    ref = reference_for({"format": fmt}, rows, report.get("baseline"))
    base_acc = base.get("accuracy") if base else None
    empty = Score(None, None, None, False, None, base_acc, None, None, None, None)
    if base_acc is None or ref is None:
        return empty
    points, scored = [], []
    for row in rows:
        if (row["format"] != fmt or not deployable(row) or row["parent"] == report.get("baseline")
                or row.get("accuracy") is None):
            continue
        cost, size, latency = cost_of(row, ref, objective)
        if cost is None:
            continue
        drop = (base_acc - row["accuracy"]) * 100
        scored.append((row, cost, drop, size, latency))
        points.append((row["name"], round(cost, 6), row["accuracy"]))
    if not scored:
        return empty
    within = [s for s in scored if s[2] <= max_drop + EPS * 100]
    row, cost, drop, size, latency = (min(within, key=lambda s: (s[1], s[2])) if within
                                      else min(scored, key=lambda s: (s[2], s[1])))
    return Score(row["name"], cost, round(drop, 4), bool(within), row["accuracy"], base_acc, row.get("bytes"),
                 row.get("gzip_bytes"), size, latency, tuple(points))
