"""Result tables for people (docs/benchmarks.md), regenerated from runs' report.json files.

    slimpipe results runs/cnn-fashion_mnist runs/speed --out docs/benchmarks.md
    make results RUNS="runs/cnn-fashion_mnist runs/speed"

One section per run: a stamp (when the run finished, the slimpipe commit, the exact command,
the CPU and its ISA flags, the tool versions) and a table of the files that matter: the dense
baseline, the smallest deployable file within `within` points of the baseline's accuracy, the
fastest deployable file within `fast_within` points, and any file named with `--artifact`
(or, with `--all`, every deployable file). The figures are the report's own (the same ratios
as report.md's main table), so a published table is exactly what was measured and can be
regenerated at any time. The output depends only on the reports and the options: no clock.

>>> text = render_results([load_run("runs/cnn-fashion_mnist")])
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from slimpipe.pipeline.errors import ConfigError
from slimpipe.pipeline.pareto import smallest_within
from slimpipe.pipeline.atomic import write_text_atomic
from slimpipe.pipeline.rows import (baseline_row, deployable, fmt_num, fmt_x, point_1x1, precision, ratio_of,
                                    reference_for, speedup, speedup_range)

SMALLEST_WITHIN = 0.5  # points below the baseline's accuracy
FASTEST_WITHIN = 1.0
HEAD = ["artifact", "role", "mode", "bytes", "x smaller", "gzip bytes", "x smaller (gzip)",
        "sparsity", "accuracy", "Δ pts", "p50 ms (engine)", "x faster"]
ALIGN = ["---", "---", "---", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---", "---:"]
COLUMNS = (
    "x smaller and x faster are against the dense float32 file of the baseline in the same "
    "format (LiteRT or ONNX Runtime); Δ pts is the accuracy difference from the dense baseline "
    "in points, each file's accuracy measured by its own runtime on the test set; p50 is at 1 "
    "thread, batch 1, and the range in brackets after x faster is the lowest and highest ratio "
    "of single interleaved passes (how much the machine's speed moved it).")


@dataclass(frozen=True)
class Run:
    """A run's report and where it was read from."""
    source: str  # the RUN argument as given
    report: Mapping[str, Any]


def load_run(spec: str | Path) -> Run:
    """A run from its OUT folder or its report.json."""
    path = Path(spec)
    if path.is_dir():
        path = path / "report.json"
    if not path.is_file():
        raise ConfigError(f"slimpipe results: expected a run folder with a report.json or a "
                          f"report.json file. Received: {str(spec)!r}; fix: give the --out "
                          f"folder of a finished 'slimpipe compress' run")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"slimpipe results: {path} is not valid JSON ({exc}); fix: run "
                          f"'slimpipe compress' again to rewrite it") from None
    if not isinstance(report, dict) or not isinstance(report.get("artifacts"), list):
        raise ConfigError(f"slimpipe results: {path} is not a slimpipe report (no 'artifacts' "
                          f"list); fix: give the report.json that 'slimpipe compress' wrote")
    return Run(source=str(spec), report=report)


def fastest_within(report: Mapping[str, Any], points: float) -> dict[str, Any] | None:
    """The deployable file with the lowest p50 (1 thread, batch 1) at most `points` below the
    baseline's accuracy."""
    base = baseline_row(report)
    if base is None or base.get("accuracy") is None:
        return None
    floor = base["accuracy"] - points / 100 - 1e-9
    pool = [r for r in report["artifacts"] if deployable(r) and r.get("accuracy") is not None
            and r["accuracy"] >= floor and (point_1x1(r) or {}).get("p50_ms")]
    return min(pool, key=lambda r: (point_1x1(r)["p50_ms"], r["name"]), default=None)


def select(report: Mapping[str, Any], *, within: float = SMALLEST_WITHIN,
           fast_within: float = FASTEST_WITHIN, names: Sequence[str] = (),
           every: bool = False) -> list[tuple[dict[str, Any], list[str]]]:
    """(row, roles) for the rows of a run's table, in the report's order."""
    rows = report["artifacts"]
    roles: dict[str, list[str]] = {}
    dense = reference_for({"format": "tflite"}, rows, report.get("baseline")) or baseline_row(report)
    if dense is not None:
        roles.setdefault(dense["name"], []).append("dense baseline")
    smallest = smallest_within(report, within)
    if smallest is not None:
        roles.setdefault(smallest["name"], []).append(f"smallest within {_points(within)}")
    fastest = fastest_within(report, fast_within)
    if fastest is not None:
        roles.setdefault(fastest["name"], []).append(f"fastest within {_points(fast_within)}")
    known = {r["name"] for r in rows}
    for name in names:
        if name in known:
            roles.setdefault(name, [])
    for row in rows if every else ():
        if deployable(row):
            roles.setdefault(row["name"], [])
    return [(r, roles[r["name"]]) for r in rows if r["name"] in roles]


def _points(v: float) -> str:
    return f"{v:g} point" + ("" if v == 1 else "s")


def row_cells(row: Mapping[str, Any], roles: Sequence[str], report: Mapping[str, Any]) -> list[str]:
    """A table row's cells, in HEAD order."""
    rows = report["artifacts"]
    ref = reference_for(row, rows, report.get("baseline"))
    base = baseline_row(report) or {}
    acc, base_acc = row.get("accuracy"), base.get("accuracy")
    delta = (acc - base_acc) * 100 if acc is not None and base_acc is not None else None
    lat = point_1x1(row)
    fast = speedup(row, ref, lat) if lat and ref else None
    spread = speedup_range(row, ref, lat) if fast is not None else None
    p50 = "–" if not lat or lat.get("p50_ms") is None else (
        f"{lat['p50_ms']:.4f} ({' '.join(str(v) for v in (lat.get('runtime'), lat.get('engine')) if v)})")
    return [f"`{row['name']}`", ", ".join(roles), precision(row), fmt_num(row.get("bytes"), ","),
            fmt_x(ratio_of(ref and ref.get("bytes"), row.get("bytes"))), fmt_num(row.get("gzip_bytes"), ","),
            fmt_x(ratio_of(ref and ref.get("gzip_bytes"), row.get("gzip_bytes"))),
            fmt_num(row.get("sparsity"), ".1%"), fmt_num(acc, ".2%"), fmt_num(delta, "+.2f"), p50,
            fmt_x(fast) + (f" ({spread[0]:.2f}-{spread[1]:.2f})" if spread else "")]


def stamp_lines(run: Run) -> list[str]:
    """Where a table came from: date, command, commit, CPU and ISA flags, tool versions."""
    report = run.report
    rec = report.get("run") or {}
    env = report.get("environment") or {}
    missing = "not recorded"
    command = f"`{rec['command']}`" if rec.get("command") else missing
    if rec.get("make"):
        command += " (under make, with " + " ".join(
            f"`{k}={shlex.quote(v)}`" for k, v in sorted(rec["make"].items())) + ")"
    git = rec.get("git")
    commit = missing if not git else (f"`{git['commit'][:12]}`"
                                      + (", with uncommitted changes" if git.get("dirty") else ""))
    stages = report.get("stages") or []
    reused = sum(1 for s in stages if s.get("reused"))
    seconds = sum(s.get("seconds") or 0 for s in stages)
    versions = {"python": env.get("python"), **(env.get("versions") or {})}
    return [f"- Finished: {rec.get('finished_utc') or missing}; stages took {seconds:.0f} s"
            + (f" ({reused} of {len(stages)} stages taken from the cache)" if reused else ""),
            f"- Command: {command}",
            f"- slimpipe {report.get('slimpipe_version') or '?'}, commit {commit}",
            f"- CPU: {env.get('cpu') or missing}, {env.get('cores') or '?'} cores; ISA flags: "
            f"{', '.join(env.get('isa') or []) or missing}; GPU: {', '.join(env.get('gpu') or []) or 'none'}",
            "- Tools: " + (", ".join(f"{k} {v}" for k, v in versions.items() if v) or missing),
            f"- Report: `{run.source}`", *search_lines(report)]


def search_lines(report: Mapping[str, Any]) -> list[str]:
    """For a budget search (`--recipe auto`): its settings, time per phase and verdict."""
    from slimpipe.pipeline.search.space import settings_text

    search = report.get("search")
    if not search:
        return []
    phases = search.get("phases_s") or {}
    chosen = search.get("chosen") or {}
    return [f"- Budget search: objective {search.get('objective')}, at most {search.get('max_drop')} points, "
            f"{len(search.get('trials') or [])} trials; chosen trial {chosen.get('number')} "
            f"({settings_text(chosen.get('params') or {})})",
            "- Seconds per phase: " + ", ".join(f"{k} {v:,.0f}" for k, v in phases.items()),
            f"- Verdict: {(search.get('verdict') or {}).get('text', 'none')}"]


def run_section(run: Run, **options) -> list[str]:
    report = run.report
    base = baseline_row(report) or {}
    title = (f"## {report.get('model')} on {report.get('dataset')}, recipe `{report.get('recipe')}`")
    lines = [title, "", *stamp_lines(run), "",
             f"Baseline `{report.get('baseline')}`: {fmt_num(base.get('accuracy'), '.2%')} accuracy.",
             "", "| " + " | ".join(HEAD) + " |", "| " + " | ".join(ALIGN) + " |"]
    lines += ["| " + " | ".join(row_cells(row, roles, report)) + " |"
              for row, roles in select(report, **options)]
    return lines


def render_results(runs: Sequence[Run], *, within: float = SMALLEST_WITHIN,
                   fast_within: float = FASTEST_WITHIN, names: Sequence[str] = (),
                   every: bool = False) -> str:
    """The Markdown of docs/benchmarks.md for these runs."""
    if not runs:
        raise ConfigError("slimpipe results: expected at least one run folder or report.json")
    known = {r["name"] for run in runs for r in run.report["artifacts"]}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"slimpipe results: --artifact {unknown[0]!r} is in none of the runs; "
                          f"expected one of {', '.join(sorted(known))}")
    command = shlex.join(["slimpipe", "results", *(r.source for r in runs)])
    lines = ["# Benchmarks", "",
             f"Generated from each run's report.json by `{command}` (or `make results`); do not "
             "edit by hand. Each table is stamped with the run that measured it.", "",
             COLUMNS, ""]
    for run in runs:
        lines += run_section(run, within=within, fast_within=fast_within, names=names,
                             every=every) + [""]
    return "\n".join(lines)


def add_results_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "results", help="result tables (Markdown) from runs' report.json files",
        description="Write the stamped result tables of docs/benchmarks.md from finished runs.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="a run's --out folder or its report.json")
    p.add_argument("--out", default=None, help="write the Markdown to this file (default: stdout)")
    p.add_argument("--within", type=float, default=SMALLEST_WITHIN,
                   help="the smallest file's accuracy budget, in points below the baseline")
    p.add_argument("--fast-within", type=float, default=FASTEST_WITHIN,
                   help="the fastest file's accuracy budget, in points below the baseline")
    p.add_argument("--artifact", action="append", default=[], metavar="NAME",
                   help="also show this file (repeatable)")
    p.add_argument("--all", action="store_true", dest="every", help="show every deployable file")
    return p


def run_results(args: argparse.Namespace) -> int:
    for flag, value in (("--within", args.within), ("--fast-within", args.fast_within)):
        if not value >= 0:
            raise ConfigError(f"slimpipe results: {flag} must be >= 0 points. Received: {value}")
    text = render_results([load_run(r) for r in args.runs], within=args.within,
                          fast_within=args.fast_within, names=args.artifact, every=args.every)
    if args.out is None:
        sys.stdout.write(text)
    else:
        print(f"[slimpipe] results: {write_text_atomic(Path(args.out), text)}")
    return 0
