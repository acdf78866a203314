"""The report's sections about the run itself: how it was started, the data it read, and the
Keras 3 copies of its models (for a model that came from Keras 3).

>>> [s.title for s in run_sections(report)]
['Run', 'Data', 'Keras 3 files']
"""
from __future__ import annotations

from typing import Any, Mapping

from slimpipe.pipeline.document import Bullets, Section, Table, code
from slimpipe.pipeline.rows import fmt_bytes, fmt_num

Report = Mapping[str, Any]
KERAS3_HEAD = ["artifact", "Keras 3 file", "bytes", "max |diff| vs tf_keras"]


def run_sections(report: Report) -> list[Section]:
    """The Run, Data and Keras 3 sections that apply to this report (none for older reports)."""
    return [s for s in (run_section(report), data_section(report), keras3_section(report)) if s]


def run_section(report: Report) -> Section | None:
    run = report.get("run")
    if not run:
        return None
    items = [f"Command: `{run.get('command')}`", f"Finished (UTC): {fmt_num(run.get('finished_utc'))}"]
    if run.get("make"):
        items.append("Make variables: " + ", ".join(f"`{k}={v}`" for k, v in sorted(run["make"].items())))
    git = run.get("git")
    if git:
        items.append(f"slimpipe commit: `{git.get('commit')}`" + (" (with uncommitted changes)"
                                                                 if git.get("dirty") else ""))
    return Section("Run", [Bullets(items, id="run")])


def data_section(report: Report) -> Section | None:
    data = report.get("data")
    if not data:
        return None
    norm = data.get("normalization") or {}
    items = [f"`{data.get('name')}`: {data.get('train_examples')} training and {data.get('test_examples')} "
             f"test examples of shape {tuple(data.get('input_shape') or ())}, {data.get('classes')} classes",
             f"Input range {data.get('input_range')} "
             f"({data.get('input_range_source', 'the default')}): model input = pixel x "
             f"{fmt_num(norm.get('scale'), '.6g')} + {fmt_num(norm.get('offset'), '.6g')}"]
    check = data.get("baseline_check")
    if check:
        items.append(f"Baseline check of the model file: {check['accuracy']:.1%} on {check['examples']} "
                     f"test images (chance {check['chance']:.1%})" + (f"; {check['warning']}"
                                                                      if check.get("warning") else ""))
    if data.get("skipped_images"):
        items.append(f"Skipped {data['skipped_images']} files that are not decodable images")
    if data.get("validation"):
        val = data["validation"]
        items.append(f"Validation split: {fmt_num(val.get('examples'))} training examples held out "
                     f"(seed {fmt_num(val.get('seed'))}) for decisions; the test set is used once")
    return Section("Data", [Bullets(items, id="data")])


def keras3_section(report: Report) -> Section | None:
    files = report.get("keras3_files")
    if not files:
        return None
    rows = [[code(f["artifact"]), code(f["path"]), fmt_bytes(f.get("bytes")),
             fmt_num(f.get("max_abs_diff"), ".1e")] for f in files]
    return Section("Keras 3 files", [Table("keras3-files", KERAS3_HEAD, rows, {2, 3})])
