"""report.md and report.html are two renderings of one document: same sections, same tables
with the same rows, same sentences. Parsed back from each rendering, not compared as strings."""
import html
import re
from html.parser import HTMLParser

import pytest

from slimpipe.pipeline.artifacts import make_artifact
from slimpipe.pipeline.context import RunContext
from slimpipe.pipeline.html_report import render_html
from slimpipe.pipeline.markdown_report import render_markdown
from slimpipe.pipeline.plots import plot_pareto
from slimpipe.pipeline.report import build_report

ENV = {"cpu": "Test CPU @ 2GHz", "cores": 2, "isa": ["avx", "avx2", "fma"], "gpu": [],
       "python": "3.11.7", "platform": "Linux-x86_64",
       "versions": {"tensorflow": "2.21.0", "ai_edge_litert": "1.2.0"}}


def _lat(p50, threads=1, batch=1, runtime="litert", resolver=None, engine="xnnpack", passes=None):
    row = {"runtime": runtime, "device": "cpu", "threads": threads, "batch": batch,
           "engine": engine, "p50_ms": p50, "p90_ms": p50 * 1.1, "p99_ms": p50 * 1.3,
           "cv": 0.05, "runs": 200, "load_ms": 2.5}
    if resolver:
        row["resolver"] = resolver
    if passes:
        row["pass_p50_ms"] = passes
    return row


def _layer(name, op, label, sparse_storage=True, densify=True, block=None):
    return {"name": name, "op": op, "weights_dtype": "float32", "sparsity": 0.8,
            "sparse_storage": sparse_storage, "densify": densify,
            "xnnpack_sparse_subgraph": False, "sparse_fc_block": block, "label": label,
            "reason": f"{name} | why it is {label}"}


@pytest.fixture
def report(tmp_path, tiny_data):
    """A run with every section: sparse and int8 files, a failed parity, structured pruning
    with its from-scratch control, per-layer labels, reused steps and notes."""
    ctx = RunContext(data=tiny_data, out_dir=tmp_path, model_name="cnn")

    def add(name, fmt, stage, parent, meta=None, **measured):
        (tmp_path / stage).mkdir(exist_ok=True)
        path = tmp_path / stage / name
        path.write_bytes(name.encode())
        art = make_artifact(name, path, fmt=fmt, kind=fmt, stage=stage, config={},
                            parent=parent, meta=meta)
        ctx.artifacts.append(art)
        ctx.measurements[name] = {"bytes": 1000, "gzip_bytes": 900, "accuracy": 0.9,
                                  "top1_agreement": 1.0, "size_floor_bytes": 400, **measured}
        return art

    ok = {"passed": True, "max_abs_diff": 2e-6, "atol": 1e-4}
    trained = add("trained", "keras", "01-train", None, sparsity=0.0,
                  complexity={"params": 130_000, "macs": 2_800_000})
    pruned = add("pruned", "keras", "02-strip", trained, sparsity=0.8, gzip_bytes=300,
                 accuracy=0.897, complexity={"params": 130_000, "macs": 2_800_000},
                 sparse_kernel={"ratio": 0.6, "flop_ratio": 5.0, "layers": []})
    structured = add("structured", "keras", "03-structured", trained, accuracy=0.905,
                     complexity={"params": 40_000, "macs": 400_000})
    add("structured.scratch", "keras", "03-structured", trained, {"from_scratch": True},
        accuracy=0.899, complexity={"params": 40_000, "macs": 400_000})
    add("trained.tflite", "tflite", "04-export", trained, {"mode": "float32", "validation": ok},
        sparsity=0.0, latency=[_lat(0.1, passes=[0.1, 0.12]), _lat(0.3, threads=2, batch=32),
                               _lat(0.4, resolver="builtin", engine="builtin")])
    add("pruned.tflite", "tflite", "04-export", pruned, {"mode": "float32", "validation": ok},
        sparsity=0.8, gzip_bytes=280, accuracy=0.897,
        latency=[_lat(0.098, passes=[0.1, 0.1]), _lat(0.29, threads=2, batch=32)],
        eligibility={"layers": [_layer("fc1;MatMul", "FULLY_CONNECTED", "size-only",
                                       sparse_storage=False, densify=None)]})
    add("pruned.sparse.tflite", "tflite", "04-export", pruned,
        {"mode": "float32", "sparse_storage": True, "validation": ok}, sparsity=0.8,
        bytes=300, gzip_bytes=250, accuracy=0.897, latency=[_lat(0.12)],
        eligibility={"layers": [_layer("fc1;MatMul", "FULLY_CONNECTED", "size-only"),
                                _layer("conv2", "CONV_2D", "dense", densify=False)]})
    add("pruned.onnx", "onnx", "04-export", pruned,
        {"validation": {"passed": False, "max_abs_diff": 3e-3, "atol": 1e-4}}, sparsity=0.8,
        latency=[_lat(0.2, runtime="onnxruntime", engine="CPUExecutionProvider")])
    add("structured.tflite", "tflite", "04-export", structured,
        {"mode": "float32", "validation": ok}, accuracy=0.905, latency=[_lat(0.04)])
    add("structured.int8.tflite", "tflite", "05-quantize", structured,
        {"mode": "int8", "validation": ok}, accuracy=0.904, bytes=300, latency=[_lat(0.05)])
    ctx.baseline = "trained"
    ctx.stage_timings += [
        {"name": n, "stage": s, "folder": n, "seconds": 0.1, "reused": True, "ran_seconds": 9.0}
        for n, s in (("01-train", "train"), ("02-strip", "strip"))] + [
        {"name": n, "stage": s, "folder": n, "seconds": 2.0, "reused": False}
        for n, s in (("03-structured", "structured_prune"), ("04-export", "export"),
                     ("05-quantize", "quantize"), ("06-benchmark", "benchmark"))]
    ctx.note("ONNX export of pruned failed parity | see validation")
    run = {"command": "slimpipe compress --recipe default", "finished_utc": "2026-01-02T03:04:05Z",
           "make": {"RECIPE": "default"}, "git": {"commit": "0" * 40, "dirty": True}}
    report = build_report(ctx, recipe="default", environment=ENV, run=run)
    report["keras3_files"] = [{"artifact": "pruned", "path": "02-strip/pruned.keras", "bytes": 1234,
                               "sha256": "0" * 64, "max_abs_diff": 2e-7}]
    return report


def _plain(text: str) -> str:
    """Markdown cell or line without its marks: `code`, **strong**, escaped pipes."""
    return re.sub(r"\*\*(.+?)\*\*", r"\1", text.replace("`", "")).replace("\\|", "|").strip()


def parse_markdown(md: str):
    """(sections, prose): sections as [(title, [(head, rows)])], prose as plain lines."""
    sections, prose, lines, i = [], [], md.splitlines(), 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            sections.append((line[3:], []))
        elif line.startswith("|"):
            block = []
            while i < len(lines) and lines[i].startswith("|"):
                block.append([_plain(c) for c in re.split(r"(?<!\\)\|", lines[i].strip()[1:-1])])
                i += 1
            assert set("".join(block[1])) <= set("-: "), block[1]  # the alignment row
            sections[-1][1].append((block[0], block[2:]))
            continue
        elif line.strip() and not line.startswith(("# ", "![")):
            prose.append(_plain(re.sub(r"^\s*- ", "", line)))
        i += 1
    return sections, prose


class _Html(HTMLParser):
    """Collects h2 sections, tables (head and body rows, 'none' placeholders left out), the
    text of each <p> and <li> (nested lists aside), image titles and all visible text."""

    def __init__(self):
        super().__init__()
        self.sections, self.prose, self.images, self.text = [], [], [], []
        self.stack, self.buffers, self.row, self.head, self.rows = [], [], None, None, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.stack.append(tag)
        if tag in ("h2", "p", "li", "td", "th", "caption", "h3"):
            self.buffers.append([])
        if tag == "table":
            self.head, self.rows = [], []
        elif tag == "tr":
            self.row = None if attrs.get("class") == "empty" else []
        elif tag == "img":
            self.images.append(attrs["title"])
        elif tag == "ul" and "li" in self.stack[:-1]:
            self.buffers[-1].append("\0")  # a nested list: cut the item's own text here

    def handle_endtag(self, tag):
        while self.stack and self.stack.pop() != tag:
            pass
        if tag in ("h2", "p", "li", "td", "th", "caption", "h3"):
            text = "".join(self.buffers.pop()).split("\0")[0].strip()
            if tag == "h2":
                self.sections.append((text, []))
            elif tag in ("p", "li", "caption", "h3"):
                self.prose.append(text)
            elif tag == "th":
                self.head.append(text)
            elif self.row is not None:
                self.row.append(text)
        elif tag == "tr" and self.row:
            self.rows.append(self.row)
        elif tag == "table":
            self.sections[-1][1].append((self.head, self.rows))

    def handle_data(self, data):
        if "style" in self.stack or "title" in self.stack:
            return
        for buf in self.buffers:
            buf.append(data)
        self.text.append(data)


def parse_html(page: str) -> _Html:
    parser = _Html()
    parser.feed(page)
    return parser


def test_markdown_and_html_carry_the_same_sections_tables_and_rows(report):
    images = plot_pareto(report)
    report["plots"] = sorted(images)
    md = render_markdown(report)
    md_sections, md_prose = parse_markdown(md)
    page = parse_html(render_html(report, images))

    assert [t for t, _ in md_sections] == [t for t, _ in page.sections] == [
        "Artifacts", "Size, accuracy and the Pareto frontiers", "Latency", "Complexity",
        "Sparsity and speed", "Stages", "Run", "Data", "Keras 3 files", "Environment", "Notes"]
    for (title, md_tables), (_, html_tables) in zip(md_sections, page.sections):
        assert md_tables == html_tables, title
    tables = {title: tables for title, tables in md_sections}
    assert len(tables["Sparsity and speed"]) == 3  # kernels, then the layers of each file
    assert sum(len(rows) for _, rows in tables["Latency"]) == 9  # one per measurement
    html_text = re.sub(r"\s+", " ", "".join(page.text))
    for line in md_prose:  # every sentence of report.md is in report.html ...
        assert re.sub(r"\s+", " ", line).rstrip(":") in html_text, line
    md_text = re.sub(r"\s+", " ", " ".join(md_prose))
    for text in page.prose:  # ... and the other way round
        assert re.sub(r"\s+", " ", text).rstrip(":") in md_text, text
    assert re.findall(r"^!\[.*\]\((.+)\)$", md, re.M) == page.images
    assert sorted(page.images) == report["plots"] == ["latency_vs_accuracy.png",
                                                      "size_vs_accuracy.png"]


def test_sections_the_html_report_used_to_lack(report):
    """Complexity, the ISA and int8-vs-float sentences, cv and load time, and the stored and
    DENSIFY columns of each layer are in both renderings, from the same measurements."""
    md = render_markdown(report)
    page = html.unescape(re.sub(r"<[^>]+>", "", render_html(report, {})))
    (int8,) = report["int8_vs_float"]
    for text in ("Complexity", "x fewer MACs", "VNNI (8-bit dot products) no",
                 int8["sentence"].replace("`", ""), "load ms", "5.0%", "DENSIFY",
                 "fc1;MatMul | why it is size-only", "Python 3.11.7 on Linux-x86_64",
                 "reused from an earlier run (it ran in 9.0 s)"):
        assert text in md.replace("`", "").replace("\\|", "|"), text
        assert text in page, text
    stored = next(t for title, tables in parse_markdown(md)[0] if title == "Sparsity and speed"
                  for t in tables if t[0][0] == "layer" and len(t[1]) == 2)
    assert [row[4:6] for row in stored[1]] == [["sparse", "yes"], ["sparse", "no"]]
