"""`slimpipe gate`: its options and what it prints and writes.

    slimpipe gate --report OUT/report.json --recipe default --junit gate.xml --summary gate.md

Exit codes: 0 every check passed, 1 a check failed, 2 usage error (a `ConfigError`, which the
CLI prints as one line).
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from slimpipe.pipeline.atomic import write_text_atomic
from slimpipe.pipeline.gate import evaluate, load_report, recipe_gate, select_artifact
from slimpipe.pipeline.gate_formats import junit_xml, markdown_summary, text_table
from slimpipe.pipeline.thresholds import GATE_KEYS, check_thresholds

METAVARS = {"max_bytes": "N", "max_gzip_bytes": "N", "min_accuracy": "A",
            "max_accuracy_drop": "POINTS", "max_p90_ms": "MS", "latency_runtime": "RUNTIME",
            "latency_threads": "N", "latency_batch": "N", "artifact": "NAME|best|chosen",
            "min_bytes_ratio": "X", "min_gzip_ratio": "X", "min_speedup": "X", "max_minutes": "M"}


def add_gate_parser(subparsers) -> argparse.ArgumentParser:
    g = subparsers.add_parser(
        "gate", help="pass or fail a run against release thresholds (exit 0 pass, 1 fail)",
        description="Check a run's report.json against release thresholds. Thresholds come "
                    "from the options or the recipe's [gate] table; options win. Exit code 0: "
                    "every check passed; 1: a check failed; 2: usage error.")
    g.add_argument("--report", required=True, metavar="FILE",
                   help="the report.json of a run (or its OUT folder)")
    for key, (kind, text) in GATE_KEYS.items():
        opt = "--" + key.replace("_", "-")
        if kind is bool:
            g.add_argument(opt, dest=key, action=argparse.BooleanOptionalAction, default=None,
                           help=text)
        else:
            g.add_argument(opt, dest=key, type=kind, default=None, metavar=METAVARS[key],
                           help=text)
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
        write_text_atomic(Path(args.junit), junit_xml(results))
    summary = markdown_summary(results, note=f"Gated artifact: {why}.")
    if args.summary:
        write_text_atomic(Path(args.summary), summary)
    step_summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if step_summary:
        with open(step_summary, "a", encoding="utf-8") as fh:
            fh.write(summary + "\n")
    return 0 if all(r.passed for r in results) else 1
