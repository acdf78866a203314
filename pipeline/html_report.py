"""report.html: one self-contained page (inline CSS, plots as data: URIs, no external URLs).

    images = plot_pareto(report)
    Path(out, "report.html").write_text(render_html(report, images))

Every piece of text from the report goes through `html.escape`.
"""
from __future__ import annotations

import base64
import html
import os
from pathlib import Path
from typing import Any, Mapping

from slimpipe.pipeline.plots import pareto_table, smallest_sentence
from slimpipe.pipeline.report import (SPREAD_NOTE, _fmt_bytes, _ratio, _x, cache_status, sparse_kernels,
                             sparsity_and_speed, speed_summary, table_rows)

ALT = {
    "size_vs_accuracy.png": "Gzip size (KB, log scale) against accuracy for every artifact, "
                            "with the size Pareto frontier",
    "latency_vs_accuracy.png": "p50 latency (ms, 1 thread, batch 1) against accuracy for every "
                               "artifact, with the latency Pareto frontier",
}

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;
max-width:1200px;padding:0 1rem;color:#222;line-height:1.45}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;margin-top:2rem;
border-bottom:1px solid #ddd;padding-bottom:.2rem}
.summary{font-size:1.05rem;background:#f3f7fb;border-left:4px solid #1f77b4;padding:.6rem .9rem}
table{border-collapse:collapse;margin:.5rem 0;font-size:.85rem}caption{text-align:left}
th,td{border:1px solid #ddd;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f5f5f5}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr:nth-child(even) td{background:#fafafa}
code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.85em}
.fail{color:#b00020;font-weight:600}.ok{color:#1b7f3b}
.plots{display:flex;flex-wrap:wrap;gap:1rem}.plots figure{margin:0}
.plots img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.8rem;color:#555}ul.tree{list-style:none;padding-left:1.2rem}
ul.tree li::before{content:"\\2192\\00a0";color:#888}
.muted{color:#666;font-size:.85rem}
"""


def _e(value: Any) -> str:
    return html.escape("–" if value is None else str(value), quote=True)


def _num(value: Any, spec: str = "") -> str:
    return "–" if value is None else format(value, spec)


def _table(table_id: str, caption: str, head: list[str], rows: list[list[str]],
           numeric: set[int] = frozenset()) -> str:
    """`rows` hold already-escaped HTML cells; `numeric` are right-aligned column indexes."""
    out = [f'<table id="{table_id}"><caption class="muted">{_e(caption)}</caption><thead><tr>']
    out += [f"<th>{_e(h)}</th>" for h in head]
    out.append("</tr></thead><tbody>")
    for row in rows:
        out.append("<tr>" + "".join(
            f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>"
            for i, c in enumerate(row)) + "</tr>")
    if not rows:
        out.append(f'<tr><td colspan="{len(head)}" class="muted">none</td></tr>')
    out.append("</tbody></table>")
    return "".join(out)


def _artifact_rows(report) -> list[list[str]]:
    out = []
    for row in table_rows(report):
        cells = [_e(c) for c in row["cells"]]
        cells[0] = f"<code>{cells[0]}</code>"
        if row["parity"] is not None:
            cls = "ok" if row["parity"] else "fail"
            cells[-1] = f'<span class="{cls}">{cells[-1]}</span>'
        out.append(cells)
    return out


def _latency_rows(report) -> list[list[str]]:
    return [[f"<code>{_e(r['name'])}</code>", _e(l.get("runtime")), _e(l.get("engine")),
             _e(l.get("device")), _e(l.get("threads")), _e(l.get("batch")),
             _e(_num(l.get("p50_ms"), ".3f")), _e(_num(l.get("p90_ms"), ".3f")),
             _e(_num(l.get("p99_ms"), ".3f")), _e(l.get("runs"))]
            for r in report["artifacts"] for l in r.get("latency") or []]


def _pareto_rows(report) -> list[list[str]]:
    yes = lambda b: '<span class="ok">yes</span>' if b else "–"  # noqa: E731
    return [[f"<code>{_e(p['name'])}</code>", _e(p["format"]), _e(p["mode"]),
             _e(_fmt_bytes(p["bytes"])), _e(_fmt_bytes(p["gzip_bytes"])),
             _e(_fmt_bytes(p.get("size_floor_bytes"))),
             _e(_x(_ratio(p["gzip_bytes"], p.get("size_floor_bytes")))),
             _e(_num(p["accuracy"], ".2%")), _e(_num(p.get("top1_agreement"), ".2%")),
             _e(_num(p["p50_ms"], ".3f")), yes(p["on_size_front"]), yes(p["on_latency_front"])]
            for p in pareto_table(report)]


def _tree(report) -> str:
    """Artifacts as a parent -> child tree (roots: no parent, or a parent not in the report)."""
    rows = report["artifacts"]
    names = {r["name"] for r in rows}
    kids: dict[str | None, list] = {}
    for r in rows:
        kids.setdefault(r.get("parent") if r.get("parent") in names else None, []).append(r)

    def branch(parent, seen) -> str:
        items = []
        for r in kids.get(parent, []):
            if r["name"] in seen:
                continue
            label = (f"<code>{_e(r['name'])}</code> <span class=\"muted\">({_e(r.get('format'))}"
                     f", {_e(r.get('stage'))})</span>")
            items.append(f"<li>{label}{branch(r['name'], seen | {r['name']})}</li>")
        return f'<ul class="tree">{"".join(items)}</ul>' if items else ""

    return branch(None, frozenset()) or '<p class="muted">no artifacts</p>'


def _sparse_kernel_parts(report) -> list[str]:
    """Dense- against sparse-kernel ratios and per-layer eligibility labels, as in report.md."""
    entries = report.get("sparse_kernels")
    if entries is None:
        entries = sparse_kernels(report)
    if not entries:
        return []
    parts = [_table("sparse-kernels", "Speed against the dense baseline at 1 thread, batch 1, "
                    "with dense kernels and with a sparse kernel (csr-reference: the runtime has "
                    "no sparse path for the file; a CSR kernel on the pruned weights stands in)",
                    ["artifact", "sparsity", "dense-kernel ratio", "sparse-kernel ratio",
                     "sparse kernel", "latency-eligible", "size-only", "dense"],
                    [[f"<code>{_e(e['artifact'])}</code>", _e(_num(e.get("sparsity"), ".1%")),
                      _e(_x(e.get("dense_kernel_ratio"))), _e(_x(e.get("sparse_kernel_ratio"))),
                      _e(e.get("sparse_kernel_source"))] +
                     [_e((e.get("labels") or {}).get(k, 0))
                      for k in ("latency-eligible", "size-only", "dense")] for e in entries],
                    numeric={1, 2, 3, 5, 6, 7}), "<ul>"]
    parts += [f"<li>{_e(e.get('sentence'))}</li>" for e in entries] + ["</ul>"]
    for e in entries:
        parts.append(_table(f"layers-{_e(e['artifact'])}", f"Layers of {e['artifact']}",
                            ["layer", "op", "weights", "zeros", "label", "why"],
                            [[f"<code>{_e(l['name'].split(';')[0])}</code>", _e(l["op"]),
                              _e(l["weights_dtype"]),
                              _e(_num(l.get("sparsity"), ".0%")), f"<b>{_e(l['label'])}</b>",
                              _e(l["reason"])] for l in e.get("layers") or []], numeric={3}))
    return parts


def _environment(env: Mapping[str, Any]) -> list[list[str]]:
    def show(value):
        if isinstance(value, Mapping):
            return ", ".join(f"{k} {v}" for k, v in sorted(value.items()))
        if isinstance(value, (list, tuple)):
            return ", ".join(str(v) for v in value) or "none"
        return value
    return [[_e(k), _e(show(v))] for k, v in env.items()]


def render_html(report: Mapping[str, Any], images: Mapping[str, bytes]) -> str:
    """The whole report as one self-contained HTML page."""
    title = f"slimpipe report: {report.get('model')} on {report.get('dataset')}"
    rows = report["artifacts"]
    sentences = report.get("sparsity_and_speed")
    if sentences is None:
        sentences = sparsity_and_speed(report)
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f'<p class="muted">Recipe <code>{_e(report.get("recipe"))}</code>, baseline '
        f'<code>{_e(report.get("baseline"))}</code>, slimpipe '
        f'{_e(report.get("slimpipe_version"))}. Ratios (x smaller, x faster) are against the '
        "dense baseline in the same format; accuracy is measured on the test set by each "
        f"artifact's own runtime; latency is p50 at 1 thread, batch 1. {_e(SPREAD_NOTE)}</p>",
        f'<p class="summary" id="summary">{_e(smallest_sentence(report))}</p>',
        "<h2>Artifacts</h2>",
        _table("artifacts", "Every artifact of the run",
               ["artifact", "format", "stage", "parent", "bytes", "x smaller", "gzip bytes",
                "x smaller (gzip)", "sparsity", "accuracy", "Δ acc (pts)", "p50 ms",
                "x faster", "parity"], _artifact_rows(report), numeric=set(range(4, 13))),
    ]
    if images:
        parts.append('<h2>Pareto plots</h2><div class="plots">')
        for name, data in images.items():
            alt = ALT.get(name, f"plot {name}")
            uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
            parts.append(f'<figure><img src="{uri}" alt="{_e(alt)}" title="{_e(name)}">'
                         f"<figcaption>{_e(alt)}</figcaption></figure>")
        parts.append("</div>")
    parts += [
        "<h2>Latency</h2>",
        _table("latency", "Every latency measurement",
               ["artifact", "runtime", "engine", "device", "threads", "batch", "p50 ms",
                "p90 ms", "p99 ms", "runs"], _latency_rows(report), numeric=set(range(4, 10))),
        "<h2>Pareto frontier</h2>",
        _table("pareto", "Artifacts on the size (gzip bytes) and latency (p50) frontiers "
               "against accuracy; exports that failed parity are never on a frontier",
               ["artifact", "format", "mode", "bytes", "gzip bytes", "size floor",
                "x floor (gzip)", "accuracy", "top-1 agreement", "p50 ms", "on size frontier",
                "on latency frontier"], _pareto_rows(report), numeric=set(range(3, 10))),
        "<h2>Sparsity and speed</h2>", "<ul>",
    ]
    parts += [f"<li>{_e(line)}</li>" for line in speed_summary(sentences)] or [
        "<li>No sparse exported artifact was measured in this run.</li>"]
    parts += ["</ul>", *_sparse_kernel_parts(report), "<h2>Lineage</h2>"]
    stage_rows = []
    for s in report.get("stages") or []:
        folder = s.get("folder")  # OUT/NN-step/, where the step wrote its files
        made = [r["name"] for r in rows if (str(r.get("path", "")).startswith(f"{folder}/")
                                            if folder else r.get("stage") == s.get("stage"))]
        status = cache_status(s)
        stage_rows.append([_e(s.get("name")), _e(s.get("stage")),
                           _e(_num(s.get("seconds"), ".1f")),
                           f'<span class="{"ok" if s.get("reused") else "muted"}">{_e(status)}</span>',
                           ", ".join(f"<code>{_e(n)}</code>" for n in made) or "–"])
    parts += [_table("lineage", "Steps in the order they ran, whether each was reused from an "
                     "earlier run, and the artifacts it made",
                     ["step", "stage", "seconds", "cache", "artifacts"], stage_rows, numeric={2}),
              "<h3>Artifact tree (parent → child)</h3>", f'<div id="tree">{_tree(report)}</div>',
              "<h2>Environment</h2>",
              _table("environment", "Where this run was measured", ["key", "value"],
                     _environment(report.get("environment") or {}))]
    if report.get("notes"):
        parts += ["<h2>Notes</h2>", '<ul id="notes">'] + [f"<li>{_e(n)}</li>" for n in report["notes"]]
        parts.append("</ul>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_html(report: Mapping[str, Any], out_dir: str | Path,
               images: Mapping[str, bytes] | None = None) -> Path:
    """Write OUT/report.html atomically (plots drawn from the report unless given)."""
    if images is None:
        from slimpipe.pipeline.plots import plot_pareto
        images = plot_pareto(report)
    final = Path(out_dir) / "report.html"
    tmp = final.with_name(final.name + ".tmp")
    tmp.write_text(render_html(report, images), encoding="utf-8")
    os.replace(tmp, final)
    return final
