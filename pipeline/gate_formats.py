"""The release gate's results as a text table (the terminal), Markdown (a CI job summary) and
JUnit XML (one test case per check, for CI test reports).

    results = evaluate(report, thresholds)
    print(text_table(results))
    write_text_atomic("gate.xml", junit_xml(results))
"""
from __future__ import annotations

import xml.etree.ElementTree as ET

from slimpipe.pipeline.gate import CheckResult
from slimpipe.pipeline.rows import DASH

HEAD = ["check", "artifact", "measured", "threshold", "result", "detail"]


def _fmt(name: str, value) -> str:
    if value is None:
        return DASH
    if name in ("max_bytes", "max_gzip_bytes"):
        return f"{value:,} B"
    if name == "min_accuracy":
        return f"{value:.2%}"
    if name == "max_accuracy_drop":
        return f"{value:.2f} pts"
    if name == "max_p90_ms":
        return f"{value:.3f} ms"
    if name in ("min_bytes_ratio", "min_gzip_ratio", "min_speedup"):
        return f"{value:.2f}x"
    if name == "max_minutes":
        return f"{value:.1f} min"
    if name == "require_parity":
        return f"{value} ok"
    return str(value)


def cells(r: CheckResult) -> list[str]:
    """One result as the six columns of HEAD, in plain text."""
    threshold = ("all pass" if r.name == "require_parity" else
                 ("<= " if r.name.startswith("max") else ">= ") + _fmt(r.name, r.threshold))
    return [r.name, r.artifact or DASH, _fmt(r.name, r.measured), threshold,
            "PASS" if r.passed else "FAIL", r.detail]


def text_table(results: list[CheckResult]) -> str:
    rows = [HEAD] + [cells(r) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEAD) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1] for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths) + "  " + "-" * len("detail"))
    failed = sum(not r.passed for r in results)
    lines.append(f"gate {'FAILED' if failed else 'PASSED'}: {len(results) - failed} of "
                 f"{len(results)} checks passed")
    return "\n".join(line.rstrip() for line in lines)


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_summary(results: list[CheckResult], note: str | None = None) -> str:
    """A Markdown heading and table; `note` (e.g. which artifact was picked) goes under it."""
    failed = [r for r in results if not r.passed]
    lines = [f"### slimpipe gate: {'❌ FAILED' if failed else '✅ PASSED'} "
             f"({len(results) - len(failed)} of {len(results)} checks passed)", ""]
    if note:
        lines += [_md(note), ""]
    lines += ["| " + " | ".join(HEAD) + " |", "|---|---|---:|---:|---|---|"]
    for r in results:
        c = cells(r)
        c[4] = "✅ pass" if r.passed else "❌ **FAIL**"
        c[0], c[1] = f"`{c[0]}`", f"`{c[1]}`" if r.artifact else c[1]
        lines.append("| " + " | ".join(_md(x) for x in c) + " |")
    return "\n".join(lines) + "\n"


def junit_xml(results: list[CheckResult], suite: str = "slimpipe.gate") -> str:
    failures = sum(not r.passed for r in results)
    root = ET.Element("testsuites", name=suite, tests=str(len(results)),
                      failures=str(failures), errors="0")
    ts = ET.SubElement(root, "testsuite", name=suite, tests=str(len(results)),
                       failures=str(failures), errors="0", skipped="0")
    for r in results:
        case = ET.SubElement(ts, "testcase", classname=suite, name=r.name)
        c = cells(r)
        props = ET.SubElement(case, "properties")
        for key, value in (("artifact", c[1]), ("measured", c[2]), ("threshold", c[3])):
            ET.SubElement(props, "property", name=key, value=value)
        if r.passed:
            ET.SubElement(case, "system-out").text = r.detail
        else:
            fail = ET.SubElement(case, "failure", type="GateFailure",
                                 message=f"{r.name} failed: {r.detail}")
            fail.text = (f"check {r.name} on {c[1]}: measured {c[2]}, threshold {c[3]}\n"
                         f"{r.detail}")
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"
