"""Release gates: pass or fail a run on its report.json alone (no TensorFlow needed).

    slimpipe gate --report runs/cnn-fashion_mnist/report.json --max-gzip-bytes 200000 \\
        --max-accuracy-drop 0.5 --max-p90-ms 2 --require-parity --junit gate.xml

Thresholds come from the command line or from a recipe's ``[gate]`` table (the command line
wins)::

    [gate]
    artifact = "best"          # or an artifact name
    max_gzip_bytes = 200000
    max_accuracy_drop = 0.5    # percentage points below the baseline's accuracy
    max_p90_ms = 2.0
    latency_runtime = "litert" # default: the artifact's own runtime (litert, onnxruntime)
    latency_threads = 1
    latency_batch = 1
    require_parity = true

Exit codes: 0 every check passed, 1 a check failed, 2 usage error (a `ConfigError`).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from slimpipe.pipeline.errors import ConfigError
from slimpipe.pipeline.plots import deployable  # an export whose parity passed or was not run

# [gate] key -> (type, help). Order is the order checks run in.
GATE_KEYS: dict[str, tuple[type, str]] = {
    "artifact": (str, "the artifact to gate: a name from report.json, or 'best' (default): the "
                      "smallest deployable export by gzip size, within --max-accuracy-drop of "
                      "the baseline when that is set"),
    "max_bytes": (int, "fail if the artifact's file is larger than N bytes"),
    "max_gzip_bytes": (int, "fail if the artifact is larger than N bytes after gzip"),
    "min_accuracy": (float, "fail if the artifact's test accuracy is below A (a fraction, 0..1)"),
    "max_accuracy_drop": (float, "fail if the artifact's accuracy is more than POINTS "
                                 "percentage points below the baseline's"),
    "max_p90_ms": (float, "fail if the artifact's p90 latency is above MS milliseconds (or was "
                          "not measured) at --latency-runtime/--latency-threads/--latency-batch"),
    "latency_runtime": (str, "runtime of the latency measurement to check (litert, "
                             "onnxruntime, keras; default: the artifact's own runtime)"),
    "latency_threads": (int, "threads of the latency measurement to check (default 1)"),
    "latency_batch": (int, "batch size of the latency measurement to check (default 1)"),
    "require_parity": (bool, "fail if any exported artifact did not pass its parity "
                             "validation against the Keras model"),
}
CHECK_KEYS = ("max_bytes", "max_gzip_bytes", "min_accuracy", "max_accuracy_drop", "max_p90_ms",
              "require_parity")
RUNTIME_OF = {"keras": "keras", "tflite": "litert", "onnx": "onnxruntime"}
_EPS = 1e-9  # float slack so that 0.9 - 0.895 counts as 0.5 points, not 0.50000001


@dataclass(frozen=True)
class CheckResult:
    name: str  # the [gate] key, e.g. "max_gzip_bytes"
    artifact: str | None
    measured: Any  # None when the value was not measured
    threshold: Any
    passed: bool
    detail: str  # one sentence: what was compared, or why it failed


# -- thresholds ------------------------------------------------------------------------------
def check_thresholds(values: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Validate [gate] values (types and ranges); drop None. `source` names them in errors."""
    unknown = sorted(set(values) - set(GATE_KEYS))
    if unknown:
        raise ConfigError(f"{source} has unknown gate keys {unknown}: expected some of "
                          f"{', '.join(GATE_KEYS)}. Fix the spelling or remove them")
    out: dict[str, Any] = {}
    for key, value in values.items():
        if value is None:
            continue
        kind = GATE_KEYS[key][0]
        ok = (isinstance(value, bool) if kind is bool else
              isinstance(value, str) if kind is str else
              isinstance(value, int) and not isinstance(value, bool) if kind is int else
              isinstance(value, (int, float)) and not isinstance(value, bool)
              and math.isfinite(value))
        if not ok:
            what = {int: "an integer", float: "a number", bool: "true or false",
                    str: "a string"}[kind]
            raise ConfigError(f"{source}: {key} must be {what}. Received: "
                              f"{key} = {value!r} ({type(value).__name__})")
        if kind is float:
            value = float(value)
        if kind in (int, float) and value < 0:
            raise ConfigError(f"{source}: {key} must be >= 0. Received: {key} = {value!r}")
        if key in ("latency_threads", "latency_batch") and value < 1:
            raise ConfigError(f"{source}: {key} must be >= 1. Received: {key} = {value!r}")
        if key == "min_accuracy" and value > 1:
            raise ConfigError(f"{source}: min_accuracy is a fraction between 0 and 1. Received: "
                              f"{value!r}; for {value:g}% write {value / 100:g}")
        if kind is str and not value.strip():
            raise ConfigError(f"{source}: {key} must not be empty. Received: {key} = {value!r}")
        out[key] = value
    return out


def recipe_gate(spec: str | Path) -> dict[str, Any]:
    """The [gate] table of a recipe (a .toml path or a shipped recipe name), validated."""
    from slimpipe.pipeline.recipe import read_recipe_file

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
    base = next((r for r in report["artifacts"] if r.get("name") == report.get("baseline")), None)
    return base.get("accuracy") if base else None


def _drop_points(acc, base_acc) -> float | None:
    return None if acc is None or base_acc is None else (base_acc - acc) * 100


def select_artifact(report: Mapping[str, Any], thresholds: Mapping[str, Any]):
    """(row or None, sentence saying what was picked and why)."""
    rows = report["artifacts"]
    wanted = thresholds.get("artifact") or "best"
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

    def size(r):
        return (r.get("gzip_bytes") is None, r.get("gzip_bytes") or 0, r.get("name", ""))

    drop = thresholds.get("max_accuracy_drop")
    if drop is not None:
        base_acc = _baseline_accuracy(report)
        within = [r for r in pool if (d := _drop_points(r.get("accuracy"), base_acc)) is not None
                  and d <= drop + _EPS]
        if within:
            row = min(within, key=size)
            return row, (f"best: {row['name']}, the smallest deployable artifact by gzip size "
                         f"within {drop:g} points of the baseline's accuracy")
        row = min(pool, key=size)
        return row, (f"best: {row['name']}, the smallest deployable artifact by gzip size (none "
                     f"is within {drop:g} points of the baseline's accuracy)")
    row = min(pool, key=size)
    return row, f"best: {row['name']}, the smallest deployable artifact by gzip size"


# -- checks ----------------------------------------------------------------------------------
def _bytes(n) -> str:
    return "–" if n is None else f"{n:,}"


def _max_check(name, art, measured, limit, what, fmt) -> CheckResult:
    if measured is None:
        return CheckResult(name, art, None, limit, False, f"{what} of {art} was not measured")
    ok = measured <= limit + _EPS
    return CheckResult(name, art, measured, limit, ok,
                       f"{what} {fmt(measured)} {'<=' if ok else '>'} {fmt(limit)}")


def _latency_row(row, runtime, threads, batch):
    hits = [l for l in row.get("latency") or [] if l.get("runtime") == runtime
            and l.get("threads") == threads and l.get("batch") == batch]
    return next((l for l in hits if l.get("device") == "cpu"), hits[0] if hits else None)


def evaluate(report: Mapping[str, Any], thresholds: Mapping[str, Any]) -> list[CheckResult]:
    """Run every check that has a threshold; one CheckResult per check, in a fixed order."""
    t = check_thresholds(thresholds, "gate thresholds")
    if not any(k in t for k in CHECK_KEYS):
        raise ConfigError("no gate thresholds: give at least one of --max-bytes, "
                          "--max-gzip-bytes, --min-accuracy, --max-accuracy-drop, --max-p90-ms, "
                          "--require-parity, or a recipe with a [gate] table (--recipe)")
    row, why = select_artifact(report, t)
    out: list[CheckResult] = []
    per_artifact = [k for k in CHECK_KEYS if k in t and k != "require_parity"]
    if row is None:
        out += [CheckResult(k, None, None, t[k], False, why) for k in per_artifact]
    else:
        name = row.get("name")
        if "max_bytes" in t:
            out.append(_max_check("max_bytes", name, row.get("bytes"), t["max_bytes"],
                                  "size", lambda v: f"{_bytes(v)} bytes"))
        if "max_gzip_bytes" in t:
            out.append(_max_check("max_gzip_bytes", name, row.get("gzip_bytes"),
                                  t["max_gzip_bytes"], "gzip size", lambda v: f"{_bytes(v)} bytes"))
        if "min_accuracy" in t:
            acc, lim = row.get("accuracy"), t["min_accuracy"]
            if acc is None:
                out.append(CheckResult("min_accuracy", name, None, lim, False,
                                       f"accuracy of {name} was not measured"))
            else:
                ok = acc >= lim - _EPS
                out.append(CheckResult("min_accuracy", name, acc, lim, ok,
                                       f"accuracy {acc:.2%} {'>=' if ok else '<'} {lim:.2%}"))
        if "max_accuracy_drop" in t:
            base_acc, lim = _baseline_accuracy(report), t["max_accuracy_drop"]
            drop = _drop_points(row.get("accuracy"), base_acc)
            if drop is None:
                missing = (f"baseline {report.get('baseline')}" if base_acc is None else name)
                out.append(CheckResult("max_accuracy_drop", name, None, lim, False,
                                       f"accuracy of {missing} was not measured"))
            else:
                ok = drop <= lim + _EPS
                out.append(CheckResult(
                    "max_accuracy_drop", name, round(drop, 6), lim, ok,
                    f"{drop:.2f} points below baseline {report.get('baseline')} "
                    f"({base_acc:.2%} -> {row['accuracy']:.2%}) {'<=' if ok else '>'} {lim:g}"))
        if "max_p90_ms" in t:
            runtime = t.get("latency_runtime") or RUNTIME_OF.get(row.get("format"), "litert")
            threads, batch = t.get("latency_threads", 1), t.get("latency_batch", 1)
            where = f"{runtime}, {threads} thread{'s' if threads != 1 else ''}, batch {batch}"
            lat = _latency_row(row, runtime, threads, batch)
            p90 = lat.get("p90_ms") if lat else None
            if p90 is None:
                have = ", ".join(f"{l.get('runtime')}/{l.get('threads')} threads/batch "
                                 f"{l.get('batch')}" for l in row.get("latency") or []) or "none"
                out.append(CheckResult("max_p90_ms", name, None, t["max_p90_ms"], False,
                                       f"no p90 latency of {name} measured at {where} "
                                       f"(measured: {have})"))
            else:
                lim = t["max_p90_ms"]
                ok = p90 <= lim + _EPS
                out.append(CheckResult("max_p90_ms", name, p90, lim, ok,
                                       f"p90 {p90:.3f} ms {'<=' if ok else '>'} {lim:.3f} ms "
                                       f"at {where}"))
    if t.get("require_parity"):
        exported = [r for r in report["artifacts"] if r.get("format") != "keras"]
        bad = []
        for r in exported:
            val = r.get("validation")
            if not val:
                bad.append(f"{r.get('name')} (not validated)")
            elif val.get("passed") is not True:
                diff, atol = val.get("max_abs_diff"), val.get("atol")
                bad.append(f"{r.get('name')} (max |diff| "
                           f"{'?' if diff is None else f'{diff:.1e}'}"
                           f"{'' if atol is None else f' > atol {atol:.0e}'})")
        ok = not bad and bool(exported)
        detail = (f"all {len(exported)} exported artifacts match Keras" if ok else
                  "no exported artifacts in the report" if not exported else
                  f"{len(bad)} of {len(exported)} exports failed parity: {', '.join(bad)}")
        out.append(CheckResult("require_parity", "all exports", len(exported) - len(bad),
                               len(exported), ok, detail))
    return out


# -- output ----------------------------------------------------------------------------------
def _fmt(name: str, value) -> str:
    if value is None:
        return "–"
    if name in ("max_bytes", "max_gzip_bytes"):
        return f"{value:,} B"
    if name == "min_accuracy":
        return f"{value:.2%}"
    if name == "max_accuracy_drop":
        return f"{value:.2f} pts"
    if name == "max_p90_ms":
        return f"{value:.3f} ms"
    if name == "require_parity":
        return f"{value} ok"
    return str(value)


def _cells(r: CheckResult) -> list[str]:
    threshold = ("all pass" if r.name == "require_parity" else
                 ("<= " if r.name.startswith("max") else ">= ") + _fmt(r.name, r.threshold))
    return [r.name, r.artifact or "–", _fmt(r.name, r.measured), threshold,
            "PASS" if r.passed else "FAIL", r.detail]


def text_table(results: list[CheckResult]) -> str:
    head = ["check", "artifact", "measured", "threshold", "result", "detail"]
    rows = [head] + [_cells(r) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(head) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1] for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths) + "  " + "-" * len("detail"))
    failed = sum(not r.passed for r in results)
    lines.append(f"gate {'FAILED' if failed else 'PASSED'}: {len(results) - failed} of "
                 f"{len(results)} checks passed")
    return "\n".join(line.rstrip() for line in lines)


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_summary(results: list[CheckResult], note: str | None = None) -> str:
    """A Markdown heading and table; `note` (e.g. which artifact was picked) goes under it."""
    failed = [r for r in results if not r.passed]
    lines = [f"### slimpipe gate: {'❌ FAILED' if failed else '✅ PASSED'} "
             f"({len(results) - len(failed)} of {len(results)} checks passed)", ""]
    if note:
        lines += [_md(note), ""]
    lines += [
             "| check | artifact | measured | threshold | result | detail |",
             "|---|---|---:|---:|---|---|"]
    for r in results:
        c = _cells(r)
        c[4] = "✅ pass" if r.passed else "❌ **FAIL**"
        c[0], c[1] = f"`{c[0]}`", f"`{c[1]}`" if r.artifact else c[1]
        lines.append("| " + " | ".join(_md(x) for x in c) + " |")
    return "\n".join(lines) + "\n"


def junit_xml(results: list[CheckResult], suite: str = "slimpipe.gate") -> str:
    failures = sum(not r.passed for r in results)
    root = ET.Element("testsuites", name=suite, tests=str(len(results)),
                      failures=str(failures), errors="0")
    ts = ET.SubElement(root, "testsuite", name=suite, tests=str(len(results)),
                       failures=str(failures), errors="0", skipped="0")
    for r in results:
        case = ET.SubElement(ts, "testcase", classname=suite, name=r.name)
        c = _cells(r)
        props = ET.SubElement(case, "properties")
        for key, value in (("artifact", c[1]), ("measured", c[2]), ("threshold", c[3])):
            ET.SubElement(props, "property", name=key, value=value)
        if r.passed:
            ET.SubElement(case, "system-out").text = r.detail
        else:
            fail = ET.SubElement(case, "failure", type="GateFailure",
                                 message=f"{r.name} failed: {r.detail}")
            fail.text = (f"check {r.name} on {c[1]}: measured {c[2]}, threshold {c[3]}\n"
                         f"{r.detail}")
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# -- command line ----------------------------------------------------------------------------
def add_gate_parser(subparsers) -> argparse.ArgumentParser:
    g = subparsers.add_parser(
        "gate", help="pass or fail a run against release thresholds (exit 0 pass, 1 fail)",
        description="Check a run's report.json against release thresholds. Thresholds come "
                    "from the options or the recipe's [gate] table; options win. Exit code 0: "
                    "every check passed; 1: a check failed; 2: usage error.")
    g.add_argument("--report", required=True, metavar="FILE",
                   help="the report.json of a run (or its OUT folder)")
    flags = {"max_bytes": "N", "max_gzip_bytes": "N", "min_accuracy": "A",
             "max_accuracy_drop": "POINTS", "max_p90_ms": "MS", "latency_runtime": "RUNTIME",
             "latency_threads": "N", "latency_batch": "N", "artifact": "NAME|best"}
    for key, (kind, text) in GATE_KEYS.items():
        opt = "--" + key.replace("_", "-")
        if kind is bool:
            g.add_argument(opt, dest=key, action=argparse.BooleanOptionalAction, default=None,
                           help=text)
        else:
            g.add_argument(opt, dest=key, type=kind, default=None, metavar=flags[key], help=text)
    g.add_argument("--recipe", default=None, metavar="FILE",
                   help="read thresholds from this recipe's [gate] table (a .toml file or a "
                        "shipped recipe name)")
    g.add_argument("--junit", default=None, metavar="FILE",
                   help="write the results as JUnit XML (one test case per check)")
    g.add_argument("--summary", default=None, metavar="FILE",
                   help="write the results as a Markdown table (also appended to "
                        "$GITHUB_STEP_SUMMARY when that is set)")
    return g


def thresholds_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Recipe [gate] values overridden by the options that were given."""
    merged = recipe_gate(args.recipe) if getattr(args, "recipe", None) else {}
    given = {k: getattr(args, k, None) for k in GATE_KEYS}
    merged.update(check_thresholds({k: v for k, v in given.items() if v is not None},
                                   "command line"))
    return merged


def run_gate(args: argparse.Namespace) -> int:
    """Run the `gate` subcommand; 0 pass, 1 fail. Usage errors raise ConfigError (exit 2)."""
    thresholds = thresholds_from_args(args)
    report = load_report(args.report)
    results = evaluate(report, thresholds)
    _, why = select_artifact(report, check_thresholds(thresholds, "gate thresholds"))
    print(f"[slimpipe] gate {args.report}: {why}")
    print(text_table(results))
    if args.junit:
        _write_atomic(Path(args.junit), junit_xml(results))
    summary = markdown_summary(results, note=f"Gated artifact: {why}.")
    if args.summary:
        _write_atomic(Path(args.summary), summary)
    step_summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if step_summary:
        with open(step_summary, "a", encoding="utf-8") as fh:
            fh.write(summary + "\n")
    return 0 if all(r.passed for r in results) else 1
