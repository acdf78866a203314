"""The report: a lineage table of every artifact, built from artifact records and measurements.

    report = build_report(ctx, recipe="default", environment=environment())
    images = write_plots(report, out)          # the Pareto plots, listed in report["plots"]
    write_report(report, out)                  # report.json and report.md
    write_html(report, out, images)            # report.html (slimpipe.pipeline.html_report)

`build_report` returns plain data with stable field names (CI scripts and `slimpipe gate` read
`report.json`); `markdown_report` and `html_report` render the same sections from it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from slimpipe.pipeline import __version__
from slimpipe.pipeline.atomic import write_bytes_atomic, write_text_atomic
from slimpipe.pipeline.context import RunContext
from slimpipe.pipeline.markdown_report import render_markdown
from slimpipe.pipeline.plots import plot_pareto
from slimpipe.pipeline.speed import int8_vs_float, sparse_kernels, sparsity_and_speed


def build_report(ctx: RunContext, *, recipe: str, environment: dict[str, Any],
                 run: dict[str, Any] | None = None) -> dict[str, Any]:
    """`run`: when the run finished, its command line and commit (`provenance.run_record`)."""
    artifacts = [_artifact_row(a, ctx) for a in ctx.artifacts
                 if a in ctx.measurable() or a.name == ctx.baseline]
    report = {
        "slimpipe_version": __version__,
        "model": ctx.model_name,
        "dataset": ctx.data.name,
        "data": ctx.data.record(),
        "recipe": recipe,
        "baseline": ctx.baseline,
        "environment": environment,
        "run": run,
        "stages": [dict(t) for t in ctx.stage_timings],
        "artifacts": artifacts,
        "notes": list(ctx.notes),
    }
    inherit_complexity(artifacts)
    report["int8_vs_float"] = int8_vs_float(report)
    report["sparsity_and_speed"] = sparsity_and_speed(report)
    report["sparse_kernels"] = sparse_kernels(report)
    return report


def _artifact_row(art, ctx: RunContext) -> dict[str, Any]:
    m = ctx.measurements.get(art.name, {})
    # A file converted from a rewrite of its parent (space_to_depth_stem) records its own count.
    complexity = m.get("complexity") or art.meta.get("complexity") or {}
    return {
        "name": art.name,
        "format": art.format,
        "kind": art.kind,
        "stage": art.stage,
        "parent": art.parent,
        "id": art.id,
        "path": os.path.relpath(art.path, ctx.out_dir),
        "sha256": art.sha256,
        "bytes": m.get("bytes"),
        "gzip_bytes": m.get("gzip_bytes"),
        "sparsity": m.get("sparsity"),
        "accuracy": m.get("accuracy"),
        "top1_agreement": m.get("top1_agreement"),
        "size_floor_bytes": m.get("size_floor_bytes"),
        "params": complexity.get("params"),
        "macs": complexity.get("macs"),
        "from_scratch": bool(art.meta.get("from_scratch", False)),
        "factorization": art.meta.get("factorization"),
        "latency": m.get("latency", []),
        "layers": m.get("layers", []),
        "eligibility": m.get("eligibility"),
        "sparse_kernel": m.get("sparse_kernel"),
        "validation": art.meta.get("validation"),
        "mode": art.meta.get("mode"),
        "sparse_storage": art.meta.get("sparse_storage", False),
        "config": dict(art.config),
    }


def inherit_complexity(rows: list[dict[str, Any]]) -> None:
    """Exported files have the parameters and MACs of the Keras model they were made from,
    unless they record their own (a rewritten stem); a Keras model whose layers could not be
    counted (tfmot's pruning or QAT wrappers, which keep every shape) has those of its parent."""
    by_name = {r["name"]: r for r in rows}
    for row in rows:  # parents come before their children
        parent = by_name.get(row["parent"])
        if not parent:
            continue
        if row.get("macs") is None:
            row["params"], row["macs"] = parent.get("params"), parent.get("macs")



def write_plots(report: dict[str, Any], out_dir: Path) -> dict[str, bytes]:
    """Draw the Pareto plots, write them as PNG files next to the report (atomically) and list
    them in `report["plots"]`. Returns the PNG bytes by file name, for the HTML report."""
    images = plot_pareto(report)
    for name, data in images.items():
        write_bytes_atomic(Path(out_dir) / name, data)
    report["plots"] = sorted(images)
    return images


def write_report(report: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """Write report.json and report.md atomically (temporary file, then rename)."""
    return (write_text_atomic(Path(out_dir) / "report.json",
                              json.dumps(report, indent=2, sort_keys=False)),
            write_text_atomic(Path(out_dir) / "report.md", render_markdown(report)))
