"""report.html: one self-contained page (inline CSS, plots as data: URIs, no external URLs),
rendered from the same `Document` as report.md (see `sections`).

    write_html(report, out)                       # OUT/report.html, plots drawn from the report
    page = render_html(report, plot_pareto(report))

Every piece of text from the report goes through `html.escape`.
"""
from __future__ import annotations

import base64
import html
import re
from pathlib import Path
from typing import Any, Mapping

from slimpipe.pipeline.atomic import write_text_atomic
from slimpipe.pipeline.document import (Block, Bullets, Cell, Figures, Paragraph, Table, Tree,
                                        TreeNode)
from slimpipe.pipeline.plots import plot_pareto
from slimpipe.pipeline.rows import DASH
from slimpipe.pipeline.sections import report_document

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;
max-width:1200px;padding:0 1rem;color:#222;line-height:1.45}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;margin-top:2rem;
border-bottom:1px solid #ddd;padding-bottom:.2rem}h3{font-size:1rem}
.summary{font-size:1.05rem;background:#f3f7fb;border-left:4px solid #1f77b4;padding:.6rem .9rem}
table{border-collapse:collapse;margin:.5rem 0;font-size:.85rem}caption{text-align:left}
.wide{overflow-x:auto}
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
ROLE_CLASS = {"summary": "summary", "note": "muted"}


def _e(value: Any) -> str:
    return html.escape(DASH if value is None else str(value), quote=True)


def _inline(text: str) -> str:
    """Escaped text with `code` and **strong** marks turned into tags."""
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", _e(text))
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", out)


def render_html(report: Mapping[str, Any], images: Mapping[str, bytes]) -> str:
    """The whole report as one self-contained HTML page; `images` are the plots' PNG bytes."""
    doc = report_document(report, plots=images)
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{_e(doc.title)}</title><style>{CSS}</style></head><body>",
             f"<h1>{_e(doc.title)}</h1>", *(render_block(b, images) for b in doc.intro)]
    for section in doc.sections:
        parts.append(f"<h2>{_inline(section.title)}</h2>")
        parts += [render_block(b, images) for b in section.blocks]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def render_block(block: Block, images: Mapping[str, bytes]) -> str:
    if isinstance(block, Paragraph):
        attrs = (f' id="{_e(block.id)}"' if block.id else "") + (
            f' class="{ROLE_CLASS[block.role]}"' if block.role else "")
        return f"<p{attrs}>{_inline(block.text)}</p>"
    if isinstance(block, Bullets):
        attrs = f' id="{_e(block.id)}"' if block.id else ""
        return f"<ul{attrs}>" + "".join(f"<li>{_inline(i)}</li>" for i in block.items) + "</ul>"
    if isinstance(block, Table):
        return _table(block)
    if isinstance(block, Figures):
        return _figures(block, images)
    if isinstance(block, Tree):
        tree = _tree(block.roots) or '<p class="muted">no artifacts</p>'
        return f'<h3>{_inline(block.caption)}</h3><div id="{_e(block.id)}">{tree}</div>'
    raise TypeError(f"no HTML for {type(block).__name__}")


def _styled(text: str, style: str | None) -> str:
    if style == "code":
        return f"<code>{_e(text)}</code>"
    if style == "strong":
        return f"<b>{_e(text)}</b>"
    if style in ("ok", "fail", "muted"):
        return f'<span class="{style}">{_e(text)}</span>'
    return _e(text)


def _cell(value: str | Cell) -> str:
    if not isinstance(value, Cell):
        return _e(value)
    if isinstance(value.value, tuple):
        return ", ".join(_styled(v, value.style) for v in value.value) or DASH
    return _styled(value.value, value.style)


def _table(table: Table) -> str:
    out = [f'<div class="wide"><table id="{_e(table.id)}">']
    if table.caption:
        out.append(f'<caption class="muted">{_inline(table.caption)}</caption>')
    out.append("<thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in table.head)
               + "</tr></thead><tbody>")
    for row in table.rows:
        out.append("<tr>" + "".join(
            f'<td class="num">{_cell(c)}</td>' if i in table.numeric else f"<td>{_cell(c)}</td>"
            for i, c in enumerate(row)) + "</tr>")
    if not table.rows:
        out.append(f'<tr class="empty"><td colspan="{len(table.head)}" class="muted">none'
                   "</td></tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def _figures(block: Figures, images: Mapping[str, bytes]) -> str:
    out = ['<div class="plots">']
    for f in block.figures:
        uri = "data:image/png;base64," + base64.b64encode(images[f.name]).decode("ascii")
        out.append(f'<figure><img src="{uri}" alt="{_e(f.alt)}" title="{_e(f.name)}">'
                   f"<figcaption>{_e(f.alt)}</figcaption></figure>")
    return "".join(out + ["</div>"])


def _tree(nodes: list[TreeNode]) -> str:
    items = [f'<li><code>{_e(n.name)}</code> <span class="muted">({_e(n.detail)})</span>'
             f"{_tree(n.children)}</li>" for n in nodes]
    return f'<ul class="tree">{"".join(items)}</ul>' if items else ""


def write_html(report: Mapping[str, Any], out_dir: str | Path,
               images: Mapping[str, bytes] | None = None) -> Path:
    """Write OUT/report.html atomically (plots drawn from the report unless given)."""
    if images is None:
        images = plot_pareto(report)
    return write_text_atomic(Path(out_dir) / "report.html", render_html(report, images))
