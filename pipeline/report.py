"""The report: a lineage table of every artifact, built from artifact records and measurements.

`build_report` returns plain data with stable field names (CI scripts read `report.json`);
`render_markdown` turns that data into `report.md` for people.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from slimpipe.pipeline import __version__
from slimpipe.pipeline.context import RunContext

SPARSE = 0.3  # an artifact with at least this fraction of zero weights counts as sparse
SPREAD_NOTE = ("In brackets after x faster: the lowest and highest ratio of single interleaved "
               "passes (each pass times every file in turn), a measure of how much the machine's "
               "speed moved it.")
SAME_SPEED = 0.10  # ratios within 10% of 1.0 count as "no speedup"


def build_report(ctx: RunContext, *, recipe: str, environment: dict[str, Any]) -> dict[str, Any]:
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
        "latency": m.get("latency", []),
        "layers": m.get("layers", []),
        "eligibility": m.get("eligibility"),
        "sparse_kernel": m.get("sparse_kernel"),
        "validation": art.meta.get("validation"),
        "mode": art.meta.get("mode"),
        "sparse_storage": art.meta.get("sparse_storage", False),
        "config": dict(art.config),
    }


# -- comparisons ----------------------------------------------------------------------------
def reference_for(row: dict[str, Any], rows: list[dict[str, Any]], baseline: str | None):
    """The dense baseline in the same format: the row a size or speed ratio is taken against."""
    if baseline is None:
        return None
    if row["format"] == "keras":
        return next((r for r in rows if r["name"] == baseline), None)
    return next((r for r in rows if r["parent"] == baseline and r["format"] == row["format"]
                 and not r["sparse_storage"] and r["mode"] in (None, "float32")), None)


def _latency(row, runtime: str, threads: int, batch: int, device: str = "cpu",
             resolver: str = "default"):
    """A latency row; LiteRT rows also match on `resolver` ("builtin": the builtin kernels
    without the default XNNPACK delegate; rows without the field are "default")."""
    return next((l for l in row.get("latency", []) if l["runtime"] == runtime and
                 l["threads"] == threads and l["batch"] == batch and l["device"] == device
                 and l.get("resolver", "default") == resolver), None)


def _same_point(row, ref, point: dict[str, Any]) -> tuple[dict | None, dict | None]:
    """row's and ref's latency rows at point's runtime, threads, batch, device and resolver."""
    where = (point["runtime"], point["threads"], point["batch"], point["device"],
             point.get("resolver", "default"))
    return _latency(row, *where), _latency(ref, *where)


def speedup(row, ref, point: dict[str, Any]) -> float | None:
    """ref p50 / row p50 at the same runtime, device, threads and batch."""
    mine, theirs = _same_point(row, ref, point)
    if not mine or not theirs or not mine["p50_ms"]:
        return None
    return theirs["p50_ms"] / mine["p50_ms"]


def speedup_range(row, ref, point: dict[str, Any]) -> tuple[float, float] | None:
    """The lowest and highest of ref's p50 / row's p50 pass by pass. Interleaved passes put each
    pair close in time, so a pair saw the same machine; the spread shows how much the ratio moved
    with the machine's speed. None without per-pass figures for both, or for a row against itself."""
    if row is ref:
        return None
    mine, theirs = _same_point(row, ref, point)
    a, b = (theirs or {}).get("pass_p50_ms"), (mine or {}).get("pass_p50_ms")
    if not a or not b or len(a) != len(b) or len(a) < 2 or not all(b):
        return None
    ratios = [x / y for x, y in zip(a, b)]
    return min(ratios), max(ratios)


def _ratio(a, b):
    return a / b if a and b else None


def precision(row: dict[str, Any]) -> str:
    """An artifact's numeric mode: "float32" for plain exports and Keras models."""
    return row.get("mode") or "float32"


def speed_reference_for(row: dict[str, Any], rows: list[dict[str, Any]], baseline: str | None):
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


def sparsity_and_speed(report: dict[str, Any]) -> list[dict[str, Any]]:
    """For each sparse exported artifact: measured speed against its dense counterpart, at
    every latency point the two share."""
    rows, out = report["artifacts"], []
    for row in rows:
        ref, same = speed_reference_for(row, rows, report["baseline"])
        if row["format"] == "keras" or ref is None or ref is row or (row["sparsity"] or 0) < SPARSE:
            continue
        for point in row["latency"]:
            ratio = speedup(row, ref, point)
            if ratio is None:
                continue
            out.append({
                "artifact": row["name"], "reference": ref["name"], "sparsity": row["sparsity"],
                "sparse_storage": row["sparse_storage"], "runtime": point["runtime"],
                "engine": point.get("engine"), "resolver": point.get("resolver"),
                "device": point["device"], "same_precision": same,
                "threads": point["threads"], "batch": point["batch"], "speedup": ratio,
                "bytes_ratio": _ratio(ref["bytes"], row["bytes"]),
                "gzip_ratio": _ratio(ref["gzip_bytes"], row["gzip_bytes"]),
                "sentence": _sentence(row, ref, point, ratio, same),
            })
    return out


def _where(point) -> str:
    engine = point.get("engine") or "default"
    if point.get("resolver") == "builtin":
        engine = "builtin kernels, XNNPACK off"
    return (f"{point['runtime']} ({engine}, {point['threads']} "
            f"thread{'s' if point['threads'] != 1 else ''}, batch {point['batch']})")


def _sentence(row, ref, point, ratio, same_precision: bool = True) -> str:
    head = (f"{row['name']} has {row['sparsity']:.0%} zero weights and runs at {ratio:.2f}x the "
            f"speed of {ref['name']} on {_where(point)}")
    if not same_precision:
        verdict = (f"not a measure of the zeros: it is {precision(row)} and {ref['name']} is "
                   f"{precision(ref)}, and the run has no dense {precision(row)} file of the "
                   f"baseline, so precision and sparsity both changed the kernels")
    elif abs(ratio - 1.0) <= SAME_SPEED:
        verdict = "no speedup: these kernels multiply the zeros like any other weight"
    elif not _latency_eligible(row):
        verdict = (f"{'faster' if ratio > 1.0 else 'slower'}, yet no layer of it is "
                   "latency-eligible, so the same dense kernels ran on the same shapes: this is "
                   "run-to-run variation, not the zeros (the latency table gives each cv)")
    elif ratio > 1.0:
        verdict = "faster: this runtime skipped work for the zeros here"
    else:
        verdict = "slower: the sparse kernel costs more here than the zeros save"
    storage = ("its weights are stored sparse, so the file itself is smaller"
               if row["sparse_storage"] else "its weights are stored dense, so the zeros only "
               "pay off in size after compression (gzip)")
    return f"{head}: {verdict}; {storage}."


def _latency_eligible(row) -> bool:
    """Whether a layer of the file can run on a sparse kernel (where eligibility was analysed;
    without an analysis, assume it can, rather than call a measured difference noise)."""
    layers = (row.get("eligibility") or {}).get("layers")
    return layers is None or any(l.get("label") == "latency-eligible" for l in layers)


def speed_summary(entries: list[dict[str, Any]]) -> list[str]:
    """One line per artifact for people: the sentence at its first measured point (1 thread,
    batch 1 on the default engine comes first) and the ratios at its other points."""
    lines, by_artifact = [], {}
    for e in entries:
        by_artifact.setdefault(e.get("artifact"), []).append(e)
    for group in by_artifact.values():
        first = next((e for e in group if e.get("threads") == 1 and e.get("batch") == 1
                      and (e.get("resolver") or "default") == "default"), group[0])
        others = [f"{_where(e)} {e['speedup']:.2f}x" for e in group if e is not first
                  and {"runtime", "threads", "batch", "speedup"} <= e.keys()]
        lines.append(first["sentence"] + (f" Other points: {'; '.join(others)}." if others else ""))
    return lines


SOURCES = {"default": "the runtime's default engine", "builtin": "LiteRT's builtin kernels, "
           "BUILTIN_WITHOUT_DEFAULT_DELEGATES", "xnnpack": "LiteRT's XNNPACK sparse inference",
           "csr-reference": "a CSR reference kernel (scipy, 1 thread, batch 1) on the pruned "
           "Keras weights"}


def sparse_kernels(report: dict[str, Any]) -> list[dict[str, Any]]:
    """For each sparse exported artifact: its dense-kernel ratio, its sparse-kernel ratio (with
    what measured it) and its per-layer eligibility labels, plus one sentence built from them.

    All ratios are speeds against the dense baseline in the same format at 1 thread, batch 1.
    The sparse kernel is the one the labels say this file can use: the builtin resolver when a
    sparse FULLY_CONNECTED is latency-eligible (the dense-kernel ratio is then that of the same
    weights stored dense, the sibling export), XNNPACK when a 1x1 conv is (the builtin run is
    then the dense-kernel one); with no latency-eligible layer the runtime has no sparse path
    for the file, and the CSR reference on the parent Keras model's weights stands in.
    """
    rows, out = report["artifacts"], []
    by_name = {r["name"]: r for r in rows}
    for row in rows:
        ref, same = speed_reference_for(row, rows, report["baseline"])
        if row["format"] == "keras" or ref is None or ref is row or (row["sparsity"] or 0) < SPARSE:
            continue
        layers = (row.get("eligibility") or {}).get("layers") or []
        default, default_engine = _ratio_at(row, ref, "default")
        builtin, _ = _ratio_at(row, ref, "builtin")
        parent = (by_name.get(row["parent"]) or {}).get("sparse_kernel") or {}
        eligible = [l for l in layers if l["label"] == "latency-eligible"]
        dense_row = row
        if any(l["sparse_fc_block"] for l in eligible):
            # XNNPACK leaves sparse FC weights to the builtin kernel, so both engines run it
            # sparse on this file: the dense kernels ran on the same weights stored dense.
            sparse_src, sparse = "builtin", builtin
            dense_row = next((r for r in rows if r is not row and r["parent"] == row["parent"]
                              and r["format"] == row["format"] and not r["sparse_storage"]
                              and r["mode"] == row["mode"]), row)
            dense_src = "builtin" if _ratio_at(dense_row, ref, "builtin")[0] else "default"
            dense, engine = ((None, None) if dense_row is row
                             else _ratio_at(dense_row, ref, dense_src))
        elif eligible:
            sparse_src, sparse, dense_src = "xnnpack", default, "builtin"
            dense, engine = builtin, "builtin"
        else:
            sparse_src, sparse, dense_src = "csr-reference", parent.get("ratio"), "default"
            dense, engine = default, default_engine
        entry = {"artifact": row["name"], "reference": ref["name"], "sparsity": row["sparsity"],
                 "same_precision": same, "precision": precision(row),
                 "reference_precision": precision(ref),
                 "dense_kernel_ratio": dense, "dense_kernel_source": dense_src,
                 "dense_kernel_artifact": dense_row["name"], "dense_kernel_engine": engine,
                 "sparse_kernel_ratio": sparse, "sparse_kernel_source": sparse_src,
                 "default_ratio": default, "builtin_ratio": builtin,
                 "csr_reference_ratio": parent.get("ratio"), "csr_flop_ratio": parent.get("flop_ratio"),
                 "labels": {k: sum(l["label"] == k for l in layers)
                            for k in ("latency-eligible", "size-only", "dense")},
                 "layers": [{k: l[k] for k in ("name", "op", "weights_dtype", "sparsity",
                                               "sparse_storage", "densify", "label", "reason")}
                            for l in layers]}
        entry["sentence"] = _kernel_sentence(entry)
        out.append(entry)
    return out


def _ratio_at(row, ref, resolver: str) -> tuple[float | None, str | None]:
    """Speed against ref at 1 thread, batch 1 on the CPU with this LiteRT resolver (any other
    runtime: its only row), and the engine that ran it."""
    point = point_1x1(row) if resolver == "default" else _latency(row, "litert", 1, 1, resolver=resolver)
    return (speedup(row, ref, point), point.get("engine")) if point else (None, None)


def _kernel_sentence(e: dict[str, Any]) -> str:
    lab, n = e["labels"], sum(e["labels"].values())
    dense_where = (e["dense_kernel_engine"] or "the default engine"
                   if e["dense_kernel_source"] == "default" else SOURCES[e["dense_kernel_source"]])
    if e["dense_kernel_artifact"] != e["artifact"]:
        dense_where += f", on {e['dense_kernel_artifact']}: the same weights stored dense"
    head = (f"{e['artifact']} ({e['sparsity']:.0%} zeros): {lab['latency-eligible']} of {n} weight "
            f"layers latency-eligible, {lab['size-only']} size-only; with dense kernels "
            f"({dense_where}) it runs at {_x(e['dense_kernel_ratio'])} the speed of {e['reference']}")
    if not e.get("same_precision", True):
        head += (f" ({e['precision']} against {e['reference_precision']}: the ratios mix "
                 f"precision and sparsity, the run has no dense {e['precision']} baseline file)")
    sparse = e["sparse_kernel_ratio"]
    if e["sparse_kernel_source"] == "csr-reference":
        tail = ("; this runtime has no sparse kernel for any of its layers, so its zeros buy size "
                f"only; {SOURCES['csr-reference']} measured {_x(sparse)} on the weight products "
                f"(ideal, by multiply-adds: {_x(e['csr_flop_ratio'])})")
    else:
        tail = f", and with {SOURCES[e['sparse_kernel_source']]} at {_x(sparse)}"
        if e["csr_reference_ratio"] is not None:
            tail += f" ({SOURCES['csr-reference']}: {_x(e['csr_reference_ratio'])})"
    if sparse is None:
        verdict = "the sparse kernel was not measured"
    elif e["sparse_kernel_source"] == "xnnpack" and sparse <= 1 + SAME_SPEED:
        verdict = ("XNNPACK's sparse inference bought no speed: the file meets its rules, but this "
                   "LiteRT build or CPU may not take its sparse path")
    elif sparse > 1 + SAME_SPEED:
        verdict = "a sparse kernel pays off in speed here"
    elif sparse >= 1 - SAME_SPEED:
        verdict = "even a sparse kernel gains nothing at this size and sparsity"
    else:
        verdict = "the sparse kernel is slower than the dense one at this size and sparsity"
    return f"{head}{tail}: {verdict}."


# -- complexity, int8 against float, the from-scratch control ---------------------------------
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


VNNI = ("avx512_vnni", "avx512vnni", "avx_vnni")


def isa_summary(isa) -> str:
    """One line: the ISA extensions that decide how fast float and int8 kernels can be."""
    if isa is None:
        return "ISA: unknown"
    isa = set(isa)
    yes = lambda ok: "yes" if ok else "no"  # noqa: E731
    return (f"ISA for inference kernels: AVX2 {yes('avx2' in isa)}, AVX-512 {yes('avx512f' in isa)}, "
            f"VNNI (8-bit dot products) {yes(bool(isa & set(VNNI)))}, FMA {yes('fma' in isa)}"
            + (", NEON yes" if isa & {"neon", "asimd"} else ""))


def int8_vs_float(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Each int8 TFLite file against the float32 TFLite file of the same Keras model, measured
    on LiteRT at 1 thread, batch 1, with a sentence that says why when int8 was slower."""
    rows, out = report["artifacts"], []
    isa = set(report.get("environment", {}).get("isa") or [])
    for row in rows:
        if row["format"] != "tflite" or not str(row.get("mode") or "").startswith("int8"):
            continue
        ref = next((r for r in rows if r["parent"] == row["parent"] and r["format"] == "tflite"
                    and r["mode"] in (None, "float32") and not r["sparse_storage"]), None)
        mine, theirs = point_1x1(row), ref and point_1x1(ref)
        if not mine or not theirs or not mine.get("p50_ms"):
            continue
        ratio = theirs["p50_ms"] / mine["p50_ms"]
        head = (f"int8 `{row['name']}` ran at {ratio:.2f}x the speed of float32 `{ref['name']}` "
                f"({mine['p50_ms']:.3f} against {theirs['p50_ms']:.3f} ms p50, LiteRT "
                f"{mine.get('engine') or 'default'}, 1 thread, batch 1)")
        if ratio >= 1.0:
            why = "int8 paid off on this CPU"
        else:
            causes = []
            if mine.get("engine") == "builtin":
                causes.append("the int8 file ran on LiteRT's builtin kernels, not XNNPACK")
            if not isa & set(VNNI):
                causes.append("this CPU has no VNNI, so each 8-bit multiply-add takes several "
                              "instructions (widen to 16 bits, multiply, add pairs) where float "
                              "needs one FMA")
            if (row.get("config") or {}).get("io") == "int8":
                causes.append("its inputs and outputs are int8, so the caller converts them: the "
                              "timed call includes that conversion in numpy, as an application's "
                              "would, a fixed cost that a small model does not amortize")
            else:
                causes.append("the file quantizes its float input and dequantizes its output on "
                              "every call, a fixed cost that a small model does not amortize")
            why = ("int8 was slower than float on this CPU, as often on x86 desktops "
                   "(tfmot#599, #797): " + "; ".join(causes))
        out.append({"artifact": row["name"], "float_artifact": ref["name"],
                    "int8_p50_ms": mine["p50_ms"], "float_p50_ms": theirs["p50_ms"],
                    "speedup": ratio, "engine": mine.get("engine"), "sentence": f"{head}: {why}."})
    return out


def _complexity_markdown(report: dict[str, Any]) -> list[str]:
    """Parameters and MACs per artifact (exports take their Keras parent's), and each
    structured-pruned model beside its from-scratch control."""
    rows = report["artifacts"]
    base = next((r for r in rows if r["name"] == report["baseline"]), None)
    counted = [r for r in rows if r.get("macs") is not None]
    if not counted:
        return []
    lines = ["", "## Complexity", "", "Analytic counts per example (batch 1); MACs are "
             "multiply-accumulates of convolutions and dense layers, zero weights included.", "",
             "| artifact | format | params (count) | MACs (millions) | x fewer MACs | accuracy |",
             "|---|---|---:|---:|---:|---:|"]
    for r in counted:
        fewer = _ratio(base and base.get("macs"), r["macs"])
        lines.append(f"| `{r['name']}` | {r['format']} | {r['params']:,} | {r['macs'] / 1e6:.3f} "
                     f"| {_x(fewer)} | {_num(r.get('accuracy'), '.2%')} |")
    for scratch in (r for r in rows if r.get("from_scratch")):
        tuned = next((r for r in rows if r["parent"] == scratch["parent"] and r["stage"] == scratch["stage"]
                      and r["format"] == "keras" and not r.get("from_scratch")), None)
        if tuned is None or tuned.get("accuracy") is None or scratch.get("accuracy") is None:
            continue
        gap = (tuned["accuracy"] - scratch["accuracy"]) * 100
        lines += ["", f"- Pruned and fine-tuned `{tuned['name']}`: {tuned['accuracy']:.2%}; the same "
                  f"architecture trained from scratch, `{scratch['name']}` (the control of Liu et al., "
                  f"\"Rethinking the Value of Network Pruning\"): {scratch['accuracy']:.2%} "
                  f"({gap:+.2f} points for pruning and fine-tuning)."]
    return lines


# -- markdown ---------------------------------------------------------------------------------
def _fmt_bytes(n) -> str:
    return "–" if n is None else f"{n:,}"


def _x(v) -> str:
    return "–" if v is None else f"{v:.2f}x"


TABLE_HEAD = ["artifact", "format", "stage", "parent", "bytes", "x smaller", "gzip bytes",
              "x smaller (gzip)", "sparsity", "accuracy", "Δ acc (pts)", "p50 ms", "x faster",
              "parity"]


def _num(value, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def point_1x1(row) -> dict | None:
    """The 1-thread, batch-1 CPU latency the main table shows."""
    return next((l for l in row.get("latency") or [] if l.get("threads") == 1
                 and l.get("batch") == 1 and l.get("device") == "cpu"
                 and l.get("resolver", "default") == "default"), None)


def table_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The main table as text cells (`cells`, in TABLE_HEAD order) plus the parity verdict
    (`parity`: True, False or None), shared by the Markdown and HTML renderings."""
    rows, base_name = report["artifacts"], report["baseline"]
    base = next((r for r in rows if r["name"] == base_name), None)
    base_acc = base.get("accuracy") if base else None
    out = []
    for r in rows:
        ref = reference_for(r, rows, base_name)
        lat = point_1x1(r)
        fast = speedup(r, ref, lat) if lat and ref else None
        spread = speedup_range(r, ref, lat) if fast is not None else None
        acc = r.get("accuracy")
        delta = (acc - base_acc) * 100 if acc is not None and base_acc is not None else None
        val = r.get("validation")
        diff = val.get("max_abs_diff") if val else None
        parity = "–" if not val else (("ok" if val.get("passed") else "FAILED")
                                      + ("" if diff is None else f" ({diff:.1e})"))
        out.append({"parity": None if not val else bool(val.get("passed")), "cells": [
            r["name"], r["format"], r["stage"], r["parent"] or "–",
            _fmt_bytes(r.get("bytes")), _x(_ratio(ref and ref.get("bytes"), r.get("bytes"))),
            _fmt_bytes(r.get("gzip_bytes")),
            _x(_ratio(ref and ref.get("gzip_bytes"), r.get("gzip_bytes"))),
            _num(r.get("sparsity"), ".1%"), _num(acc, ".2%"), _num(delta, "+.2f"),
            _num(lat and lat.get("p50_ms"), ".3f"),
            _x(fast) + (f" ({spread[0]:.2f}-{spread[1]:.2f})" if spread else ""), parity]})
    return out


def render_markdown(report: dict[str, Any]) -> str:
    rows = report["artifacts"]
    lines = [f"# slimpipe report: {report['model']} on {report['dataset']}", "",
             f"Recipe `{report['recipe']}`, baseline `{report['baseline']}`. Ratios (x smaller, "
             "x faster) are against the dense baseline in the same format; accuracy is measured "
             f"on the test set by each artifact's own runtime; latency is p50 at 1 thread, batch 1. {SPREAD_NOTE}",
             "", "| " + " | ".join(TABLE_HEAD) + " |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for row in table_rows(report):
        cells = list(row["cells"])
        cells[0] = f"`{cells[0]}`"
        lines.append("| " + " | ".join(cells) + " |")
    lines += _pareto_markdown(report)
    lines += ["", "## Latency", "",
              "| artifact | runtime | engine | device | threads | batch | p50 ms | p90 ms | p99 ms "
              "| cv | runs | load ms |",
              "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        for l in r["latency"]:
            lines.append(f"| `{r['name']}` | {l['runtime']} | {l.get('engine') or '–'} | "
                         f"{l['device']} | {l['threads']} | {l['batch']} | "
                         f"{_num(l.get('p50_ms'), '.3f')} | {_num(l.get('p90_ms'), '.3f')} | "
                         f"{_num(l.get('p99_ms'), '.3f')} | {_num(l.get('cv'), '.1%')} | "
                         f"{l.get('runs')} | {_num(l.get('load_ms'), '.1f')} |")
    lines += ["", "cv: coefficient of variation of the timed runs (standard deviation / mean); "
              "load ms: loading and initializing the runtime, apart from the timed runs."]
    lines += _complexity_markdown(report)
    lines += ["", "## Sparsity and speed", ""]
    lines += [f"- {line}" for line in speed_summary(report["sparsity_and_speed"])] or [
        "- No sparse exported artifact was measured in this run."]
    lines += _sparse_kernels_markdown(report)
    lines += ["", "## Stages", "", "| step | stage | seconds | cache |", "|---|---|---:|---|"]
    lines += [f"| {s['name']} | {s.get('stage', s['name'])} | {s['seconds']:.1f} | "
              f"{cache_status(s)} |" for s in report["stages"]]
    env = report["environment"]
    lines += ["", "## Environment", "", f"- CPU: {env.get('cpu')} ({env.get('cores')} cores; "
              f"ISA: {', '.join(env.get('isa', [])) or 'unknown'})",
              f"- {isa_summary(env.get('isa'))}",
              *[f"- {e['sentence']}" for e in report.get("int8_vs_float") or []],
              f"- GPU: {', '.join(env.get('gpu') or []) or 'none'}",
              "- " + ", ".join(f"{k} {v}" for k, v in sorted(env.get("versions", {}).items()))]
    if report["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in report["notes"]]
    return "\n".join(lines) + "\n"


def cache_status(stage: dict[str, Any]) -> str:
    """'ran', or 'reused' with what the step took when it ran (a stage timing row)."""
    if not stage.get("reused"):
        return "ran"
    ran = stage.get("ran_seconds")
    return "reused from an earlier run" + ("" if ran is None else f" (it ran in {ran:.1f} s)")


def _sparse_kernels_markdown(report: dict[str, Any]) -> list[str]:
    """Dense- against sparse-kernel ratios, the computed sentences and per-layer labels."""
    entries = report.get("sparse_kernels")
    if entries is None:
        entries = sparse_kernels(report)
    if not entries:
        return []
    lines = ["", "Dense- and sparse-kernel speed (x the dense baseline, 1 thread, batch 1; "
             "`csr-reference` means the runtime has no sparse path for the file and a CSR kernel "
             "on the pruned weights was measured instead):", "",
             "| artifact | sparsity | dense-kernel ratio | sparse-kernel ratio | sparse kernel "
             "| latency-eligible | size-only | dense |", "|---|---:|---:|---:|---|---:|---:|---:|"]
    for e in entries:
        lab = e["labels"]
        lines.append(f"| `{e['artifact']}` | {_num(e['sparsity'], '.1%')} | "
                     f"{_x(e['dense_kernel_ratio'])} | {_x(e['sparse_kernel_ratio'])} | "
                     f"{e['sparse_kernel_source']} | {lab['latency-eligible']} | "
                     f"{lab['size-only']} | {lab['dense']} |")
    lines += [""] + [f"- {e['sentence']}" for e in entries]
    for e in entries:
        lines += ["", f"Layers of `{e['artifact']}`:", "",
                  "| layer | op | weights | zeros | stored | DENSIFY | label | why |",
                  "|---|---|---|---:|---|---|---|---|"]
        lines += [f"| `{l['name'].split(';')[0]}` | {l['op']} | {l['weights_dtype']} "
                  f"| {_num(l['sparsity'], '.0%')} | {'sparse' if l['sparse_storage'] else 'dense'} | "
                  f"{'–' if l['densify'] is None else ('yes' if l['densify'] else 'no')} | "
                  f"**{l['label']}** | {l['reason']} |" for l in e["layers"]]
    return lines


PLOT_FILES = ("size_vs_accuracy.png", "latency_vs_accuracy.png")


def _pareto_markdown(report: dict[str, Any]) -> list[str]:
    """The smallest artifact at iso-accuracy, the Pareto table with each artifact's size floor,
    and links to the plots that write_report puts next to report.md."""
    from slimpipe.pipeline.plots import pareto_table, smallest_sentence

    lines = ["", "## Size, accuracy and the Pareto frontiers", "", smallest_sentence(report), "",
             "The size floor is what the weights would need at the least: non-zeros x bits per "
             "weight (log2 of the number of distinct values plus a codebook, where that is "
             "cheaper, as for clustered kernels), plus the cheaper of a bitmap or per-non-zero "
             "indices for the zeros' positions. `x floor` = the file's gzip bytes / the floor. "
             "Top-1 agreement is with the float Keras baseline on the test set.", "",
             "| artifact | mode | bytes | gzip bytes | size floor | x floor (gzip) | accuracy "
             "| top-1 agreement | p50 ms | size frontier | latency frontier |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for p in pareto_table(report):
        floor = p.get("size_floor_bytes")
        lines.append(
            f"| `{p['name']}` | {p.get('mode') or p.get('format')} | {_fmt_bytes(p.get('bytes'))} "
            f"| {_fmt_bytes(p['gzip_bytes'])} | {_fmt_bytes(floor)} | {_x(_ratio(p['gzip_bytes'], floor))} "
            f"| {_num(p['accuracy'], '.2%')} | {_num(p.get('top1_agreement'), '.2%')} "
            f"| {_num(p.get('p50_ms'), '.3f')} | {'yes' if p['on_size_front'] else ''} "
            f"| {'yes' if p['on_latency_front'] else ''} |")
    plots = [name for name in PLOT_FILES if name in (report.get("plots") or [])]
    if plots:
        lines += [""] + [f"![{name}]({name})" for name in plots]
    return lines


def write_plots(report: dict[str, Any], out_dir: Path) -> dict[str, bytes]:
    """Draw the Pareto plots, write them as PNG files next to the report (atomically) and list
    them in `report["plots"]`. Returns the PNG bytes by file name, for the HTML report."""
    from slimpipe.pipeline.plots import plot_pareto

    images = plot_pareto(report)
    for name, data in images.items():
        final = Path(out_dir) / name
        tmp = final.with_name(final.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, final)
    report["plots"] = sorted(images)
    return images


def write_report(report: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """Write report.json and report.md atomically (temporary file, then rename)."""
    paths = []
    for name, text in (("report.json", json.dumps(report, indent=2, sort_keys=False)),
                       ("report.md", render_markdown(report))):
        final = Path(out_dir) / name
        tmp = final.with_suffix(final.suffix + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, final)
        paths.append(final)
    return paths[0], paths[1]
