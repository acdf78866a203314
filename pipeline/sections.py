"""The report's sections, built once as data from a report dict; `markdown_report` and
`html_report` render the same `Document`, so report.md and report.html carry the same
sections, tables and rows.

>>> doc = report_document(report, plots=report.get("plots") or [])
>>> [s.title for s in doc.sections]
['Artifacts', 'Size, accuracy and the Pareto frontiers', 'Latency', ..., 'Environment']
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

from slimpipe.pipeline.document import (Bullets, Cell, Document, Figure, Figures, Paragraph,
                                        Section, Table, Tree, TreeNode, code)
from slimpipe.pipeline.pareto import pareto_table, smallest_sentence
from slimpipe.pipeline.plots import PLOT_ALT
from slimpipe.pipeline.search.section import search_sections
from slimpipe.pipeline.sections_run import run_sections
from slimpipe.pipeline.rows import (DASH, baseline_row, fmt_bytes, fmt_num, fmt_x, point_1x1,
                                    ratio_of, reference_for, speedup, speedup_range)
from slimpipe.pipeline.speed import isa_summary, sparse_kernels, sparsity_and_speed, speed_summary

Report = Mapping[str, Any]
SPREAD_NOTE = ("In brackets after x faster: the lowest and highest ratio of single interleaved "
               "passes (each pass times every file in turn), a measure of how much the machine's "
               "speed moved it.")
SIZE_FLOOR_NOTE = (
    "The size floor is what the weights would need at the least: non-zeros x bits per weight "
    "(log2 of the number of distinct values plus a codebook, where that is cheaper, as for "
    "clustered kernels), plus the cheaper of a bitmap or per-non-zero indices for the zeros' "
    "positions. `x floor` = the file's gzip bytes / the floor. Top-1 agreement is with the "
    "float Keras baseline on the test set.")
LATENCY_NOTE = ("cv: coefficient of variation of the timed runs (standard deviation / mean); "
                "load ms: loading and initializing the runtime, apart from the timed runs.")
COMPLEXITY_NOTE = ("Analytic counts per example (batch 1); MACs are multiply-accumulates of "
                   "convolutions and dense layers, zero weights included.")
KERNELS_NOTE = ("Dense- and sparse-kernel speed (x the dense baseline, 1 thread, batch 1; "
                "`csr-reference` means the runtime has no sparse path for the file and a CSR "
                "kernel on the pruned weights was measured instead):")
NO_SPARSE = "No sparse exported artifact was measured in this run."
ARTIFACT_HEAD = ["artifact", "format", "stage", "parent", "bytes", "x smaller", "gzip bytes",
                 "x smaller (gzip)", "sparsity", "accuracy", "Δ acc (pts)", "p50 ms", "x faster",
                 "parity"]
PARETO_HEAD = ["artifact", "mode", "bytes", "gzip bytes", "size floor", "x floor (gzip)",
               "accuracy", "top-1 agreement", "p50 ms", "size frontier", "latency frontier"]
LATENCY_HEAD = ["artifact", "runtime", "engine", "device", "threads", "batch", "p50 ms",
                "p90 ms", "p99 ms", "cv", "runs", "load ms"]
COMPLEXITY_HEAD = ["artifact", "format", "params (count)", "MACs (millions)", "x fewer MACs",
                   "accuracy"]
KERNEL_HEAD = ["artifact", "sparsity", "dense-kernel ratio", "sparse-kernel ratio",
               "sparse kernel", "latency-eligible", "size-only", "dense"]
LAYER_HEAD = ["layer", "op", "weights", "zeros", "stored", "DENSIFY", "label", "why"]
LABELS = ("latency-eligible", "size-only", "dense")
FACTOR_HEAD = ["artifact", "layer", "kind", "rank", "of", "energy kept", "params before", "params after",
               "MACs before", "MACs after", "factorized"]


def report_document(report: Report, plots: Iterable[str] = ()) -> Document:
    """The whole report; `plots` names the plot files (PNG) that go with it."""
    sections = [artifacts_section(report), *search_sections(report, set(plots)), pareto_section(report, set(plots)),
                latency_section(report), *complexity_section(report), *factorization_section(report),
                sparsity_section(report),
                stages_section(report), *run_sections(report), environment_section(report)]
    if report.get("notes"):
        sections.append(Section("Notes", [Bullets(list(report["notes"]), id="notes")]))
    title = f"slimpipe report: {report.get('model')} on {report.get('dataset')}"
    headline = Paragraph(smallest_sentence(report), id="summary", role="summary")
    return Document(title, [Paragraph(_intro(report), role="note"), headline], sections)


def _intro(report: Report) -> str:
    base = report.get("baseline")
    version = report.get("slimpipe_version")
    return (f"Recipe `{fmt_num(report.get('recipe'))}`, "
            + (f"baseline `{base}`" if base else "no baseline")
            + (f", slimpipe {version}" if version else "")
            + ". Ratios (x smaller, x faster) are against the dense baseline in the same format; "
            "accuracy is measured on the test set by each artifact's own runtime; latency is p50 "
            f"at 1 thread, batch 1. {SPREAD_NOTE}")


def cache_status(stage: Mapping[str, Any]) -> str:
    """'ran', or 'reused' with what the step took when it ran (a stage timing row)."""
    if not stage.get("reused"):
        return "ran"
    ran = stage.get("ran_seconds")
    return "reused from an earlier run" + ("" if ran is None else f" (it ran in {ran:.1f} s)")


def _parity(validation) -> str | Cell:
    if not validation:
        return DASH
    diff = validation.get("max_abs_diff")
    passed = bool(validation.get("passed"))
    return Cell(("ok" if passed else "FAILED") + ("" if diff is None else f" ({diff:.1e})"),
                "ok" if passed else "fail")


# -- the sections ------------------------------------------------------------------------------
def artifacts_table(report: Report) -> Table:
    """Every artifact against the dense baseline in its format: size, accuracy, speed, parity."""
    rows, base = report["artifacts"], baseline_row(report)
    base_acc = base.get("accuracy") if base else None
    out = []
    for r in rows:
        ref = reference_for(r, rows, report.get("baseline"))
        lat = point_1x1(r)
        fast = speedup(r, ref, lat) if lat and ref else None
        spread = speedup_range(r, ref, lat) if fast is not None else None
        acc = r.get("accuracy")
        delta = (acc - base_acc) * 100 if acc is not None and base_acc is not None else None
        out.append([
            code(r["name"]), fmt_num(r.get("format")), fmt_num(r.get("stage")),
            r.get("parent") or DASH, fmt_bytes(r.get("bytes")),
            fmt_x(ratio_of(ref and ref.get("bytes"), r.get("bytes"))),
            fmt_bytes(r.get("gzip_bytes")),
            fmt_x(ratio_of(ref and ref.get("gzip_bytes"), r.get("gzip_bytes"))),
            fmt_num(r.get("sparsity"), ".1%"), fmt_num(acc, ".2%"), fmt_num(delta, "+.2f"),
            fmt_num(lat and lat.get("p50_ms"), ".3f"),
            fmt_x(fast) + (f" ({spread[0]:.2f}-{spread[1]:.2f})" if spread else ""),
            _parity(r.get("validation"))])
    return Table("artifacts", ARTIFACT_HEAD, out, numeric=set(range(4, 13)))


def artifacts_section(report: Report) -> Section:
    return Section("Artifacts", [artifacts_table(report)])


def pareto_section(report: Report, plots: set[str]) -> Section:
    """The smallest artifact at iso-accuracy (also the report's headline), the Pareto table
    with each artifact's size floor, and the plots."""
    def front(on: bool) -> str | Cell:
        return Cell("yes", "ok") if on else ""

    rows = []
    for p in pareto_table(report):
        floor = p.get("size_floor_bytes")
        rows.append([code(p["name"]), fmt_num(p.get("mode") or p.get("format")),
                     fmt_bytes(p.get("bytes")), fmt_bytes(p["gzip_bytes"]), fmt_bytes(floor),
                     fmt_x(ratio_of(p["gzip_bytes"], floor)), fmt_num(p["accuracy"], ".2%"),
                     fmt_num(p.get("top1_agreement"), ".2%"), fmt_num(p.get("p50_ms"), ".3f"),
                     front(p["on_size_front"]), front(p["on_latency_front"])])
    blocks = [Paragraph(smallest_sentence(report)), Paragraph(SIZE_FLOOR_NOTE),
              Table("pareto", PARETO_HEAD, rows, set(range(2, 9)))]
    figures = [Figure(name, alt) for name, alt in PLOT_ALT.items() if name in plots]
    if figures:
        blocks.append(Figures(figures))
    return Section("Size, accuracy and the Pareto frontiers", blocks)


def latency_section(report: Report) -> Section:
    rows = [[code(r["name"]), fmt_num(l.get("runtime")), fmt_num(l.get("engine") or None),
             fmt_num(l.get("device")), fmt_num(l.get("threads")), fmt_num(l.get("batch")),
             fmt_num(l.get("p50_ms"), ".3f"), fmt_num(l.get("p90_ms"), ".3f"),
             fmt_num(l.get("p99_ms"), ".3f"), fmt_num(l.get("cv"), ".1%"),
             fmt_num(l.get("runs")), fmt_num(l.get("load_ms"), ".1f")]
            for r in report["artifacts"] for l in r.get("latency") or []]
    return Section("Latency", [Table("latency", LATENCY_HEAD, rows, set(range(4, 12))),
                               Paragraph(LATENCY_NOTE, role="note")])


def complexity_section(report: Report) -> list[Section]:
    """Parameters and MACs per artifact (exports take their Keras parent's), and each
    structured-pruned model beside its from-scratch control; none without counts."""
    rows, base = report["artifacts"], baseline_row(report)
    counted = [r for r in rows if r.get("macs") is not None]
    if not counted:
        return []
    table = [[code(r["name"]), fmt_num(r.get("format")), fmt_num(r.get("params"), ","),
              fmt_num(r["macs"] / 1e6, ".3f"),
              fmt_x(ratio_of(base and base.get("macs"), r["macs"])),
              fmt_num(r.get("accuracy"), ".2%")] for r in counted]
    controls = []
    for scratch in (r for r in rows if r.get("from_scratch")):
        tuned = next((r for r in rows if r.get("parent") == scratch.get("parent")
                      and r.get("stage") == scratch.get("stage") and r.get("format") == "keras"
                      and not r.get("from_scratch")), None)
        if tuned is None or tuned.get("accuracy") is None or scratch.get("accuracy") is None:
            continue
        gap = (tuned["accuracy"] - scratch["accuracy"]) * 100
        controls.append(
            f"Pruned and fine-tuned `{tuned['name']}`: {tuned['accuracy']:.2%}; the same "
            f"architecture trained from scratch, `{scratch['name']}` (the control of Liu et al., "
            f"\"Rethinking the Value of Network Pruning\"): {scratch['accuracy']:.2%} "
            f"({gap:+.2f} points for pruning and fine-tuning).")
    blocks = [Paragraph(COMPLEXITY_NOTE),
              Table("complexity", COMPLEXITY_HEAD, table, set(range(2, 6)))]
    return [Section("Complexity", blocks + ([Bullets(controls)] if controls else []))]


def factorization_section(report: Report) -> list[Section]:
    """Each layer a low_rank step planned: its rank, the share of the squared singular values
    kept, and the weights and MACs before and after (or why it was left alone)."""
    rows = []
    for art in report["artifacts"]:
        for f in art.get("factorization") or ():
            rows.append([code(art["name"]), code(f["layer"]), f["kind"], fmt_num(f["rank"]),
                         fmt_num(f["max_rank"]), fmt_num(f["energy_kept"], ".1%"),
                         fmt_num(f["params_before"], ","), fmt_num(f["params_after"], ","),
                         fmt_num(f["macs_before"], ","), fmt_num(f["macs_after"], ","),
                         "no: " + f["skipped"] if f.get("skipped") else "yes"])
    if not rows:
        return []
    note = ("A factorized layer NAME becomes NAME_lr (no bias, no activation) followed by NAME. "
            "Weights and MACs are of the kernels alone; the layer's bias is kept.")
    return [Section("Low-rank factorization", [Paragraph(note), Table("factorization", FACTOR_HEAD, rows,
                                                                     set(range(3, 10)))])]


def sparsity_section(report: Report) -> Section:
    entries = report.get("sparsity_and_speed")
    if entries is None:
        entries = sparsity_and_speed(report)
    blocks = [Bullets(speed_summary(entries) or [NO_SPARSE])]
    return Section("Sparsity and speed", blocks + sparse_kernel_blocks(report))


def sparse_kernel_blocks(report: Report) -> list:
    """Dense- against sparse-kernel ratios, the computed sentences and per-layer labels."""
    entries = report.get("sparse_kernels")
    if entries is None:
        entries = sparse_kernels(report)
    if not entries:
        return []
    rows = [[code(e["artifact"]), fmt_num(e.get("sparsity"), ".1%"),
             fmt_x(e.get("dense_kernel_ratio")), fmt_x(e.get("sparse_kernel_ratio")),
             fmt_num(e.get("sparse_kernel_source"))]
            + [str((e.get("labels") or {}).get(k, 0)) for k in LABELS] for e in entries]
    blocks = [Paragraph(KERNELS_NOTE),
              Table("sparse-kernels", KERNEL_HEAD, rows, {1, 2, 3, 5, 6, 7}),
              Bullets([e["sentence"] for e in entries])]
    for e in entries:
        layers = [[code(l["name"].split(";")[0]), l["op"], l["weights_dtype"],
                   fmt_num(l.get("sparsity"), ".0%"),
                   "sparse" if l.get("sparse_storage") else "dense",
                   DASH if l.get("densify") is None else ("yes" if l["densify"] else "no"),
                   Cell(l["label"], "strong"), l["reason"]] for l in e.get("layers") or []]
        blocks.append(Table(f"layers-{e['artifact']}", LAYER_HEAD, layers, {3},
                            caption=f"Layers of `{e['artifact']}`:"))
    return blocks


def stages_section(report: Report) -> Section:
    """Steps in the order they ran, whether each was reused, the artifacts each made, and the
    artifacts as a parent -> child tree."""
    rows = report["artifacts"]
    table = []
    for s in report.get("stages") or []:
        folder = s.get("folder")  # OUT/NN-step/, where the step wrote its files
        made = tuple(r["name"] for r in rows if (str(r.get("path", "")).startswith(f"{folder}/")
                                                 if folder else r.get("stage") == s.get("stage")))
        table.append([fmt_num(s.get("name")), fmt_num(s.get("stage", s.get("name"))),
                      fmt_num(s.get("seconds"), ".1f"),
                      Cell(cache_status(s), "ok" if s.get("reused") else "muted"), code(made)])
    head = ["step", "stage", "seconds", "cache", "artifacts"]
    return Section("Stages", [Table("lineage", head, table, {2}),
                              Tree("tree", "Artifact tree (parent → child)", artifact_tree(rows))])


def artifact_tree(rows: list[Mapping[str, Any]]) -> list[TreeNode]:
    """Artifacts as parent -> child trees (roots: no parent, or a parent not in the report)."""
    names = {r["name"] for r in rows}
    kids: dict[str | None, list] = {}
    for r in rows:
        kids.setdefault(r.get("parent") if r.get("parent") in names else None, []).append(r)

    def branch(parent, seen) -> list[TreeNode]:
        return [TreeNode(r["name"], f"{fmt_num(r.get('format'))}, {fmt_num(r.get('stage'))}",
                         branch(r["name"], seen | {r["name"]}))
                for r in kids.get(parent, []) if r["name"] not in seen]

    return branch(None, frozenset())


def environment_section(report: Report) -> Section:
    """The machine and versions, the ISA line, and int8 against float on this CPU."""
    env = report.get("environment") or {}
    items = [f"CPU: {env.get('cpu') or 'unknown'} ({env.get('cores') or '?'} cores; "
             f"ISA: {', '.join(env.get('isa') or []) or 'unknown'})",
             isa_summary(env.get("isa")),
             *[e["sentence"] for e in report.get("int8_vs_float") or []],
             f"GPU: {', '.join(env.get('gpu') or []) or 'none'}"]
    versions = ", ".join(f"{k} {v}" for k, v in sorted((env.get("versions") or {}).items()))
    if versions:
        items.append(versions)
    if env.get("python"):
        items.append(f"Python {env['python']} on {env.get('platform') or 'unknown'}")
    return Section("Environment", [Bullets(items, id="environment")])
