"""The report as a document: sections of paragraphs, bullet lists, tables, figures and a tree,
as plain data that `report_md` renders to Markdown and `html_report` to HTML.

Text (titles, paragraphs, bullets, captions) may mark names as `code` with backticks and
**strong** words with double asterisks: Markdown keeps the marks, HTML turns them into tags
(after escaping everything else). Table cells hold plain text; a `Cell` gives one a style
that each renderer shows in its own way.

    Section("Latency", [Table("latency", ["artifact", "p50 ms"], [[code("a.tflite"), "0.042"]],
                              numeric={1})])
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

from slimpipe.pipeline.rows import DASH

STYLES = ("code", "strong", "ok", "fail", "muted")


@dataclass(frozen=True)
class Cell:
    """A table cell with a style: "code" (a name), "strong", "ok", "fail" or "muted" (a
    status). `value` is one text or several (a list of names, shown comma-separated)."""
    value: str | tuple[str, ...]
    style: str | None = None

    @property
    def text(self) -> str:
        """The cell as plain text."""
        if isinstance(self.value, tuple):
            return ", ".join(self.value) or DASH
        return self.value


def code(value: str | tuple[str, ...]) -> Cell:
    return Cell(value, "code")


def cell_text(value: str | Cell) -> str:
    """Any cell as plain text."""
    return value.text if isinstance(value, Cell) else value


@dataclass(frozen=True)
class Paragraph:
    text: str
    id: str | None = None
    role: str | None = None  # "summary": the report's headline sentence


@dataclass(frozen=True)
class Bullets:
    items: list[str]
    id: str | None = None


@dataclass(frozen=True)
class Table:
    id: str
    head: list[str]
    rows: list[list[str | Cell]]
    numeric: frozenset[int] | set[int] = frozenset()  # right-aligned columns
    caption: str | None = None  # shown above the table

    def text_rows(self) -> list[list[str]]:
        """The rows as plain text."""
        return [[cell_text(c) for c in row] for row in self.rows]


@dataclass(frozen=True)
class Figure:
    name: str  # the PNG file name, next to the report
    alt: str


@dataclass(frozen=True)
class Figures:
    figures: list[Figure]


@dataclass(frozen=True)
class TreeNode:
    name: str
    detail: str
    children: list["TreeNode"] = field(default_factory=list)


@dataclass(frozen=True)
class Tree:
    id: str
    caption: str
    roots: list[TreeNode]


Block = Union[Paragraph, Bullets, Table, Figures, Tree]


@dataclass(frozen=True)
class Section:
    title: str
    blocks: list[Block]


@dataclass(frozen=True)
class Document:
    title: str
    intro: list[Block]
    sections: list[Section]
