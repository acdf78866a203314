"""The rows of report.json and the comparisons between them, shared by the report, its
renderers, the plots and the release gate.

A row is one artifact as report.json records it (`name`, `format`, `parent`, `mode`,
`sparse_storage`, `bytes`, `gzip_bytes`, `accuracy`, `latency` [...], `validation`, ...). Every
ratio in the report is taken against the row's *reference*: the dense baseline in the same
format (and, for speed, the same precision where the run has one).

>>> ref = reference_for(row, report["artifacts"], report["baseline"])
>>> speedup(row, ref, point_1x1(row))            # ref p50 / row p50 at 1 thread, batch 1
>>> [r["name"] for r in report["artifacts"] if deployable(r)]
"""
from __future__ import annotations

from typing import Any, Mapping

from slimpipe.benchmarks.sparsity import SPARSE_MIN

EPS = 1e-9  # float slack, so that 0.9 - 0.895 counts as 0.5 points and not 0.50000001
SAME_SPEED = 0.10  # speed ratios within 10% of 1.0 count as "no speedup"
LATENCY_RUNTIMES = ("litert", "onnxruntime")  # exported runtimes, in the order p50_ms tries them
EXPORT_FORMATS = ("tflite", "onnx")

Row = Mapping[str, Any]


# -- lookups ---------------------------------------------------------------------------------
def baseline_row(report: Mapping[str, Any]) -> Row | None:
    """The row of the report's baseline, or None."""
    return next((r for r in report["artifacts"] if r.get("name") == report.get("baseline")), None)


def latency_at(row: Row, runtime: str, threads: int, batch: int, device: str = "cpu",
               resolver: str = "default") -> dict | None:
    """A latency row; LiteRT rows also match on `resolver` ("builtin": the builtin kernels
    without the default XNNPACK delegate; rows without the field are "default")."""
    return next((l for l in row.get("latency") or [] if l["runtime"] == runtime and
                 l["threads"] == threads and l["batch"] == batch and l["device"] == device
                 and l.get("resolver", "default") == resolver), None)


def point_1x1(row: Row) -> dict | None:
    """The 1-thread, batch-1 CPU latency on the runtime's default engine (the main table's)."""
    return next((l for l in row.get("latency") or [] if l.get("threads") == 1
                 and l.get("batch") == 1 and l.get("device") == "cpu"
                 and l.get("resolver", "default") == "default"), None)


def p50_ms(row: Row) -> float | None:
    """p50 latency on the CPU at 1 thread, batch 1, in LiteRT or ONNX Runtime, if measured."""
    for runtime in LATENCY_RUNTIMES:
        lat = latency_at(row, runtime, 1, 1)
        if lat and lat.get("p50_ms") is not None:
            return lat["p50_ms"]
    return None


def precision(row: Row) -> str:
    """An artifact's numeric mode: "float32" for plain exports and Keras models."""
    return row.get("mode") or "float32"


def is_sparse(row: Row) -> bool:
    """At least SPARSE_MIN of its weights are zeros: worth comparing with its dense twin."""
    return (row.get("sparsity") or 0) >= SPARSE_MIN


def parity_failed(row: Row) -> bool:
    """An export whose parity validation against Keras ran and did not pass."""
    val = row.get("validation")
    return bool(val) and val.get("passed") is not True


def deployable(row: Row) -> bool:
    """A TFLite or ONNX export whose parity validation passed or was not run."""
    return row.get("format") in EXPORT_FORMATS and not parity_failed(row)


# -- references and ratios -------------------------------------------------------------------
def reference_for(row: Row, rows: list[Row], baseline: str | None) -> Row | None:
    """The dense baseline in the same format: the row a size or speed ratio is taken against."""
    if baseline is None:
        return None
    if row["format"] == "keras":
        return next((r for r in rows if r["name"] == baseline), None)
    return next((r for r in rows if r["parent"] == baseline and r["format"] == row["format"]
                 and not r["sparse_storage"] and r["mode"] in (None, "float32")), None)


def speed_reference_for(row: Row, rows: list[Row], baseline: str | None) -> tuple[Row | None, bool]:
    """(reference, same_precision): the dense baseline's file in the same format and, where the
    run has one, the same precision (pruned.dynamic.onnx against trained.dynamic.onnx), so that
    a speed ratio shows what the zeros did and not what int8 did. Otherwise the float dense
    baseline, flagged: the ratio then mixes precision and sparsity."""
    if baseline is not None and row["format"] != "keras":
        same = next((r for r in rows if r["parent"] == baseline and r["format"] == row["format"]
                     and not r["sparse_storage"] and precision(r) == precision(row)), None)
        if same is not None:
            return same, True
    ref = reference_for(row, rows, baseline)
    return ref, ref is not None and precision(ref) == precision(row)


def ratio_of(a, b) -> float | None:
    """a / b, or None when either is missing or zero."""
    return a / b if a and b else None


def _same_point(row: Row, ref: Row, point: Mapping[str, Any]) -> tuple[dict | None, dict | None]:
    """row's and ref's latency rows at point's runtime, threads, batch, device and resolver."""
    where = (point["runtime"], point["threads"], point["batch"], point["device"],
             point.get("resolver", "default"))
    return latency_at(row, *where), latency_at(ref, *where)


def speedup(row: Row, ref: Row, point: Mapping[str, Any]) -> float | None:
    """ref p50 / row p50 at the same runtime, device, threads and batch."""
    mine, theirs = _same_point(row, ref, point)
    if not mine or not theirs or not mine["p50_ms"]:
        return None
    return theirs["p50_ms"] / mine["p50_ms"]


def speedup_range(row: Row, ref: Row, point: Mapping[str, Any]) -> tuple[float, float] | None:
    """The lowest and highest of ref's p50 / row's p50 pass by pass. Interleaved passes put each
    pair close in time, so a pair saw the same machine; the spread shows how much the ratio moved
    with the machine's speed. None without per-pass figures for both, or for a row against
    itself."""
    if row is ref:
        return None
    mine, theirs = _same_point(row, ref, point)
    a, b = (theirs or {}).get("pass_p50_ms"), (mine or {}).get("pass_p50_ms")
    if not a or not b or len(a) != len(b) or len(a) < 2 or not all(b):
        return None
    ratios = [x / y for x, y in zip(a, b)]
    return min(ratios), max(ratios)


# -- number formats --------------------------------------------------------------------------
DASH = "–"  # what a missing value shows as


def fmt_bytes(n) -> str:
    """1,234,567 (or a dash)."""
    return DASH if n is None else f"{n:,}"


def fmt_x(v) -> str:
    """A ratio as 3.25x (or a dash)."""
    return DASH if v is None else f"{v:.2f}x"


def fmt_num(value, spec: str = "") -> str:
    """`format(value, spec)` (or a dash)."""
    return DASH if value is None else format(value, spec)
