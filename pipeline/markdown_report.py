"""report.md: the report's `Document` (see `sections`) rendered as GitHub-flavoured Markdown.

    Path(out, "report.md").write_text(render_markdown(report))
"""
from __future__ import annotations

from typing import Any, Mapping

from slimpipe.pipeline.document import (Block, Bullets, Cell, Figures, Paragraph, Table, Tree,
                                        TreeNode)
from slimpipe.pipeline.rows import DASH
from slimpipe.pipeline.sections import report_document


def render_markdown(report: Mapping[str, Any]) -> str:
    """The report as Markdown; plots listed in `report["plots"]` are linked as images."""
    doc = report_document(report, plots=report.get("plots") or [])
    parts = [f"# {doc.title}", *map(render_block, doc.intro)]
    for section in doc.sections:
        parts += [f"## {section.title}", *map(render_block, section.blocks)]
    return "\n\n".join(parts) + "\n"


def render_block(block: Block) -> str:
    if isinstance(block, Paragraph):
        return block.text
    if isinstance(block, Bullets):
        return "\n".join(f"- {item}" for item in block.items)
    if isinstance(block, Table):
        return _table(block)
    if isinstance(block, Figures):
        return "\n".join(f"![{f.name}]({f.name})" for f in block.figures)
    if isinstance(block, Tree):
        return f"{block.caption}:\n\n" + "\n".join(_tree(block.roots, 0))
    raise TypeError(f"no Markdown for {type(block).__name__}")


def _cell(value: str | Cell) -> str:
    if not isinstance(value, Cell):
        text = value
    elif isinstance(value.value, tuple):
        text = ", ".join(_styled(v, value.style) for v in value.value) or DASH
    else:
        text = _styled(value.value, value.style)
    return text.replace("|", "\\|").replace("\n", " ")


def _styled(text: str, style: str | None) -> str:
    if style == "code":
        return f"`{text}`"
    if style == "strong":
        return f"**{text}**"
    return text


def _table(table: Table) -> str:
    lines = [] if table.caption is None else [table.caption, ""]
    lines.append("| " + " | ".join(_cell(h) for h in table.head) + " |")
    lines.append("|" + "|".join("---:" if i in table.numeric else "---"
                                for i in range(len(table.head))) + "|")
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in table.rows]
    return "\n".join(lines)


def _tree(nodes: list[TreeNode], depth: int) -> list[str]:
    lines = []
    for node in nodes:
        lines.append(f"{'  ' * depth}- `{node.name}` ({node.detail})")
        lines += _tree(node.children, depth + 1)
    return lines
