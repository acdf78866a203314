"""Release gates: pass or fail a run on its report.json alone (no TensorFlow needed).

    slimpipe gate --report runs/cnn-fashion_mnist/report.json --max-gzip-bytes 200000 \\
        --max-accuracy-drop 0.5 --max-p90-ms 2 --require-parity --junit gate.xml
    slimpipe gate --report runs/cnn-auto-size --artifact chosen --min-gzip-ratio 25 \\
        --max-accuracy-drop 0.5 --max-minutes 30

    report = load_report("runs/cnn-fashion_mnist")
    results = evaluate(report, {"max_gzip_bytes": 200_000, "require_parity": True})

Thresholds come from the command line or from a recipe's ``[gate]`` table (the command line
wins); `slimpipe.pipeline.thresholds` lists the keys. This module runs the checks;
`gate_formats` writes their results as a text table, Markdown and JUnit XML, and `gate_cli`
is the `slimpipe gate` command.

Exit codes: 0 every check passed, 1 a check failed, 2 usage error (a `ConfigError`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from slimpipe.benchmarks.runtimes import RUNTIME_OF
from slimpipe.pipeline.errors import ConfigError
from slimpipe.pipeline.recipe import read_recipe_file
from slimpipe.pipeline.rows import (EPS, baseline_row, deployable, fmt_bytes, latency_at, ratio_of,
                                    reference_for, speedup)
from slimpipe.pipeline.thresholds import CHECK_KEYS, check_thresholds


@dataclass(frozen=True)
class CheckResult:
    name: str  # the [gate] key, e.g. "max_gzip_bytes"
    artifact: str | None
    measured: Any  # None when the value was not measured
    threshold: Any
    passed: bool
    detail: str  # one sentence: what was compared, or why it failed


# -- inputs ----------------------------------------------------------------------------------
def recipe_gate(spec: str | Path) -> dict[str, Any]:
    """The [gate] table of a recipe (a .toml path or a shipped recipe name), validated."""
    path, data = read_recipe_file(spec)
    gate = data.get("gate", {})
    if not isinstance(gate, dict):
        raise ConfigError(f"recipe {str(path)!r}: 'gate' must be a table ([gate]). Received: "
                          f"{type(gate).__name__}")
    return check_thresholds(gate, f"recipe {str(path)!r} [gate]")


def load_report(path: str | Path) -> dict[str, Any]:
    """Read report.json (or OUT/report.json when given the run folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / "report.json"
    if not path.is_file():
        raise ConfigError(f"report {str(path)!r} does not exist: give the report.json a "
                          "'slimpipe compress' run wrote (OUT/report.json)")
    try:
        report = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"report {str(path)!r} is not readable JSON ({exc}): re-run "
                          "'slimpipe compress' to write it again") from None
    if not isinstance(report, dict) or not isinstance(report.get("artifacts"), list):
        raise ConfigError(f"report {str(path)!r} has no 'artifacts' list: expected the "
                          "report.json written by 'slimpipe compress'")
    return report


# -- selection -------------------------------------------------------------------------------
def _baseline_accuracy(report) -> float | None:
    base = baseline_row(report)
    return base.get("accuracy") if base else None


def _drop_points(acc, base_acc) -> float | None:
    return None if acc is None or base_acc is None else (base_acc - acc) * 100


def _by_size(r):
    return (r.get("gzip_bytes") is None, r.get("gzip_bytes") or 0, r.get("name", ""))


def select_artifact(report: Mapping[str, Any], thresholds: Mapping[str, Any]):
    """(row or None, sentence saying what was picked and why)."""
    rows = report["artifacts"]
    wanted = thresholds.get("artifact") or "best"
    if wanted == "chosen":
        verdict = (report.get("search") or {}).get("verdict") or {}
        if not verdict.get("file"):
            raise ConfigError("--artifact chosen needs the report of a budget search (--recipe auto) "
                              "whose verdict names a file: gate a named artifact or 'best' instead")
        row = next((r for r in rows if r.get("name") == verdict["file"]), None)
        if row is None:
            raise ConfigError(f"the search's verdict names {verdict['file']!r}, which the report's "
                              "artifacts do not list: re-run 'slimpipe compress' to write the report again")
        return row, f"chosen: {row['name']}, the file the budget search's verdict names"
    if wanted != "best":
        row = next((r for r in rows if r.get("name") == wanted), None)
        if row is None:
            names = ", ".join(r.get("name", "?") for r in rows)
            raise ConfigError(f"unknown artifact {wanted!r}: expected 'best' or one of {names}")
        return row, f"artifact {wanted} (named)"
    pool = [r for r in rows if deployable(r)]
    if not pool:
        return None, ("no deployable artifact: no TFLite or ONNX export passed its parity "
                      "validation")
    drop = thresholds.get("max_accuracy_drop")
    if drop is None:
        row = min(pool, key=_by_size)
        return row, f"best: {row['name']}, the smallest deployable artifact by gzip size"
    base_acc = _baseline_accuracy(report)
    within = [r for r in pool if (d := _drop_points(r.get("accuracy"), base_acc)) is not None
              and d <= drop + EPS]
    if within:
        row = min(within, key=_by_size)
        return row, (f"best: {row['name']}, the smallest deployable artifact by gzip size "
                     f"within {drop:g} points of the baseline's accuracy")
    row = min(pool, key=_by_size)
    return row, (f"best: {row['name']}, the smallest deployable artifact by gzip size (none "
                 f"is within {drop:g} points of the baseline's accuracy)")


# -- checks ----------------------------------------------------------------------------------
def _max_check(name, art, measured, limit, what, fmt) -> CheckResult:
    if measured is None:
        return CheckResult(name, art, None, limit, False, f"{what} of {art} was not measured")
    ok = measured <= limit + EPS
    return CheckResult(name, art, measured, limit, ok,
                       f"{what} {fmt(measured)} {'<=' if ok else '>'} {fmt(limit)}")


def _check_max_bytes(report, row, t) -> CheckResult:
    return _max_check("max_bytes", row.get("name"), row.get("bytes"), t["max_bytes"], "size",
                      lambda v: f"{fmt_bytes(v)} bytes")


def _check_max_gzip_bytes(report, row, t) -> CheckResult:
    return _max_check("max_gzip_bytes", row.get("name"), row.get("gzip_bytes"),
                      t["max_gzip_bytes"], "gzip size", lambda v: f"{fmt_bytes(v)} bytes")


def _check_min_accuracy(report, row, t) -> CheckResult:
    name, acc, lim = row.get("name"), row.get("accuracy"), t["min_accuracy"]
    if acc is None:
        return CheckResult("min_accuracy", name, None, lim, False,
                           f"accuracy of {name} was not measured")
    ok = acc >= lim - EPS
    return CheckResult("min_accuracy", name, acc, lim, ok,
                       f"accuracy {acc:.2%} {'>=' if ok else '<'} {lim:.2%}")


def _check_max_accuracy_drop(report, row, t) -> CheckResult:
    name, lim = row.get("name"), t["max_accuracy_drop"]
    base_acc = _baseline_accuracy(report)
    drop = _drop_points(row.get("accuracy"), base_acc)
    if drop is None:
        missing = f"baseline {report.get('baseline')}" if base_acc is None else name
        return CheckResult("max_accuracy_drop", name, None, lim, False,
                           f"accuracy of {missing} was not measured")
    ok = drop <= lim + EPS
    return CheckResult("max_accuracy_drop", name, round(drop, 6), lim, ok,
                       f"{drop:.2f} points below baseline {report.get('baseline')} "
                       f"({base_acc:.2%} -> {row['accuracy']:.2%}) {'<=' if ok else '>'} {lim:g}")


def _latency_point(row, t) -> tuple[str, int, int, str]:
    """(runtime, threads, batch, the three in words) of the latency measurement the gate checks:
    on the CPU, on the runtime's default engine (`rows.latency_at`), as the report's tables."""
    runtime = t.get("latency_runtime") or RUNTIME_OF.get(row.get("format"), "litert")
    threads, batch = t.get("latency_threads", 1), t.get("latency_batch", 1)
    return runtime, threads, batch, f"{runtime}, {threads} thread{'s' if threads != 1 else ''}, batch {batch}"


def _check_max_p90_ms(report, row, t) -> CheckResult:
    name, lim = row.get("name"), t["max_p90_ms"]
    runtime, threads, batch, where = _latency_point(row, t)
    lat = latency_at(row, runtime, threads, batch)
    p90 = lat.get("p90_ms") if lat else None
    if p90 is None:
        have = ", ".join(f"{l.get('runtime')}/{l.get('threads')} threads/batch "
                         f"{l.get('batch')}" for l in row.get("latency") or []) or "none"
        return CheckResult("max_p90_ms", name, None, lim, False,
                           f"no p90 latency of {name} measured at {where} (measured: {have})")
    ok = p90 <= lim + EPS
    return CheckResult("max_p90_ms", name, p90, lim, ok,
                       f"p90 {p90:.3f} ms {'<=' if ok else '>'} {lim:.3f} ms at {where}")


def _min_check(name, art, measured: float, limit, what) -> CheckResult:
    ok = measured >= limit - EPS
    return CheckResult(name, art, round(measured, 4), limit, ok,
                       f"{what} {measured:.2f}x {'>=' if ok else '<'} {limit:g}x")


def _reference(report, row, name, lim) -> tuple[Mapping[str, Any] | None, CheckResult | None]:
    ref = reference_for(row, report["artifacts"], report.get("baseline"))
    if ref is None:
        return None, CheckResult(name, row.get("name"), None, lim, False,
                                 f"the report has no dense float32 {row.get('format')} file of "
                                 f"baseline {report.get('baseline')} to compare {row.get('name')} with")
    return ref, None


def _ratio_check(name, field, what, report, row, t) -> CheckResult:
    art, lim = row.get("name"), t[name]
    ref, missing = _reference(report, row, name, lim)
    if missing:
        return missing
    ratio = ratio_of(ref.get(field), row.get(field))
    if ratio is None:
        return CheckResult(name, art, None, lim, False,
                           f"{what} of {art} or {ref['name']} was not measured")
    return _min_check(name, art, ratio, lim,
                      f"{fmt_bytes(ref[field])} bytes ({ref['name']}) / "
                      f"{fmt_bytes(row[field])} bytes {what} =")


def _check_min_bytes_ratio(report, row, t) -> CheckResult:
    return _ratio_check("min_bytes_ratio", "bytes", "on disk", report, row, t)


def _check_min_gzip_ratio(report, row, t) -> CheckResult:
    return _ratio_check("min_gzip_ratio", "gzip_bytes", "by gzip", report, row, t)


def _check_min_speedup(report, row, t) -> CheckResult:
    name, lim = row.get("name"), t["min_speedup"]
    runtime, threads, batch, where = _latency_point(row, t)
    ref, missing = _reference(report, row, "min_speedup", lim)
    if missing:
        return missing
    mine = latency_at(row, runtime, threads, batch)
    ratio = speedup(row, ref, mine) if mine else None
    if ratio is None:
        return CheckResult("min_speedup", name, None, lim, False,
                           f"no p50 latency of {name} and {ref['name']} measured at {where}")
    theirs = latency_at(ref, runtime, threads, batch)
    return _min_check("min_speedup", name, ratio, lim,
                      f"p50 {theirs['p50_ms']:.4f} ms ({ref['name']}) / {mine['p50_ms']:.4f} ms "
                      f"at {where} =")


def run_minutes(report: Mapping[str, Any]) -> tuple[float | None, str]:
    """(minutes, what they cover) of a run measured from scratch, or (None, why there is no such
    figure): a budget search's phases (baseline, sensitivity, trials, final run) or a plain run's
    stages. Reused trials or stages make the figure a re-run's, not the run's."""
    search = report.get("search")
    if search:
        stats, total = search.get("stats") or {}, (search.get("phases_s") or {}).get("total")
        if stats.get("reused_trials") or not stats.get("ran"):
            return None, (f"the search took {stats.get('reused_trials') or 0} trials from its study "
                          f"and ran {stats.get('ran') or 0}: its time is a re-run's, not the search's")
        return (None if total is None else total / 60), "the budget search's phases, baseline included"
    stages = report.get("stages") or []
    reused = [s.get("name") for s in stages if s.get("reused")]
    if reused:
        return None, (f"{len(reused)} of {len(stages)} stages were taken from the cache "
                      f"({', '.join(map(str, reused))}): the time is a re-run's")
    seconds = [s.get("seconds") for s in stages]
    if not stages or any(v is None for v in seconds):
        return None, "the report does not time every stage"
    return sum(seconds) / 60, "the run's stages"


def _check_max_minutes(report, t) -> CheckResult:
    lim = t["max_minutes"]
    minutes, what = run_minutes(report)
    if minutes is None:
        return CheckResult("max_minutes", "the run", None, lim, False, what)
    ok = minutes <= lim + EPS
    return CheckResult("max_minutes", "the run", round(minutes, 4), lim, ok,
                       f"{minutes:.1f} min ({what}) {'<=' if ok else '>'} {lim:g} min")


def _check_parity(report) -> CheckResult:
    exported = [r for r in report["artifacts"] if r.get("format") != "keras"]
    bad = []
    for r in exported:
        val = r.get("validation")
        if not val:
            bad.append(f"{r.get('name')} (not validated)")
        elif val.get("passed") is not True:
            diff, atol = val.get("max_abs_diff"), val.get("atol")
            bad.append(f"{r.get('name')} (max |diff| {'?' if diff is None else f'{diff:.1e}'}"
                       f"{'' if atol is None else f' > atol {atol:.0e}'})")
    ok = not bad and bool(exported)
    detail = (f"all {len(exported)} exported artifacts match Keras" if ok else
              "no exported artifacts in the report" if not exported else
              f"{len(bad)} of {len(exported)} exports failed parity: {', '.join(bad)}")
    return CheckResult("require_parity", "all exports", len(exported) - len(bad), len(exported),
                       ok, detail)


# The checks on the gated artifact, in CHECK_KEYS order.
ARTIFACT_CHECKS: dict[str, Callable[..., CheckResult]] = {
    "max_bytes": _check_max_bytes, "max_gzip_bytes": _check_max_gzip_bytes,
    "min_accuracy": _check_min_accuracy, "max_accuracy_drop": _check_max_accuracy_drop,
    "max_p90_ms": _check_max_p90_ms, "min_bytes_ratio": _check_min_bytes_ratio,
    "min_gzip_ratio": _check_min_gzip_ratio, "min_speedup": _check_min_speedup,
}


def evaluate(report: Mapping[str, Any], thresholds: Mapping[str, Any]) -> list[CheckResult]:
    """Run every check that has a threshold; one CheckResult per check, in a fixed order."""
    t = check_thresholds(thresholds, "gate thresholds")
    if not any(k in t for k in CHECK_KEYS):
        raise ConfigError("no gate thresholds: give at least one of --max-bytes, "
                          "--max-gzip-bytes, --min-accuracy, --max-accuracy-drop, --max-p90-ms, "
                          "--min-bytes-ratio, --min-gzip-ratio, --min-speedup, --max-minutes, "
                          "--require-parity, or a recipe with a [gate] table (--recipe)")
    row, why = select_artifact(report, t)
    keys = [k for k in ARTIFACT_CHECKS if k in t]
    if row is None:
        out = [CheckResult(k, None, None, t[k], False, why) for k in keys]
    else:
        out = [ARTIFACT_CHECKS[k](report, row, t) for k in keys]
    if "max_minutes" in t:  # the run's checks, whichever artifact is gated
        out.append(_check_max_minutes(report, t))
    if t.get("require_parity"):
        out.append(_check_parity(report))
    return out
