"""The report is computed from artifact records and measurements, never canned."""
import json

import pytest

from slimpipe.pipeline.artifacts import make_artifact
from slimpipe.pipeline.context import RunContext
from slimpipe.pipeline.markdown_report import render_markdown
from slimpipe.pipeline.report import build_report, write_report

ENV = {"cpu": "test cpu", "cores": 2, "isa": ["avx2"], "gpu": [], "versions": {"tensorflow": "x"}}


class _Stage:
    def __init__(self, name):
        self.name = name


def _lat(p50, threads=1, batch=1, runtime="litert"):
    return {"runtime": runtime, "device": "cpu", "threads": threads, "batch": batch,
            "engine": "xnnpack", "p50_ms": p50, "p90_ms": p50 * 1.1, "p99_ms": p50 * 1.2, "runs": 50}


@pytest.fixture
def run(tmp_path, tiny_data):
    ctx = RunContext(data=tiny_data, out_dir=tmp_path, model_name="tiny")

    def add(name, fmt, stage, parent, meta=None, **measured):
        path = tmp_path / name
        path.write_bytes(name.encode())
        art = make_artifact(name, path, fmt=fmt, kind="keras" if fmt == "keras" else fmt,
                            stage=stage, config={}, parent=parent, meta=meta)
        ctx.artifacts.append(art)
        ctx.measurements[name] = measured
        return art

    trained = add("trained.h5", "keras", "train", None, bytes=1000, gzip_bytes=900, sparsity=0.0, accuracy=0.90)
    pruned = add("pruned.h5", "keras", "strip", trained, bytes=1000, gzip_bytes=300, sparsity=0.8, accuracy=0.895)
    add("trained.tflite", "tflite", "export", trained, {"mode": "float32", "validation": {"passed": True, "max_abs_diff": 1e-6}},
        bytes=800, gzip_bytes=700, sparsity=0.0, accuracy=0.90, latency=[_lat(2.0)])
    add("pruned.tflite", "tflite", "export", pruned, {"mode": "float32", "validation": {"passed": True, "max_abs_diff": 2e-6}},
        bytes=800, gzip_bytes=200, sparsity=0.8, accuracy=0.895, latency=[_lat(1.96)])
    add("pruned.sparse.tflite", "tflite", "export", pruned,
        {"mode": "float32", "sparse_storage": True, "validation": {"passed": True, "max_abs_diff": 2e-6}},
        bytes=200, gzip_bytes=150, sparsity=0.8, accuracy=0.895, latency=[_lat(4.0)])
    ctx.baseline = "trained.h5"
    ctx.stage_timings.append({"name": "train", "stage": "train", "seconds": 1.5})
    return ctx


def test_fields_ci_scripts_rely_on(run):
    report = build_report(run, recipe="default", environment=ENV)
    for key in ("model", "dataset", "baseline", "environment", "stages", "artifacts", "notes"):
        assert key in report
    assert report["baseline"] == "trained.h5"
    row = next(r for r in report["artifacts"] if r["name"] == "pruned.tflite")
    for key in ("name", "format", "stage", "parent", "path", "bytes", "gzip_bytes", "sparsity",
                "accuracy", "latency"):
        assert key in row
    assert row["parent"] == "pruned.h5" and row["path"] == "pruned.tflite"
    assert set(row["latency"][0]) >= {"runtime", "device", "threads", "batch", "p50_ms", "p90_ms", "p99_ms"}
    json.dumps(report)  # serializable


def test_sparsity_and_speed_is_computed_from_measurements(run):
    rows = {r["artifact"]: r for r in build_report(run, recipe="d", environment=ENV)["sparsity_and_speed"]}
    assert set(rows) == {"pruned.tflite", "pruned.sparse.tflite"}
    dense = rows["pruned.tflite"]
    assert dense["reference"] == "trained.tflite"
    assert dense["speedup"] == pytest.approx(2.0 / 1.96)
    assert "no speedup" in dense["sentence"] and "80%" in dense["sentence"]
    sparse = rows["pruned.sparse.tflite"]
    assert sparse["speedup"] == pytest.approx(0.5)
    assert "slower" in sparse["sentence"] and sparse["bytes_ratio"] == pytest.approx(4.0)


def test_speedup_sentence_follows_the_numbers(run):
    run.measurements["pruned.tflite"]["latency"] = [_lat(0.5)]
    rows = {r["artifact"]: r for r in build_report(run, recipe="d", environment=ENV)["sparsity_and_speed"]}
    assert rows["pruned.tflite"]["speedup"] == pytest.approx(4.0)
    assert "faster" in rows["pruned.tflite"]["sentence"]


def test_markdown_table_against_baseline(run, tmp_path):
    report = build_report(run, recipe="default", environment=ENV)
    md = render_markdown(report)
    line = next(l for l in md.splitlines() if l.startswith("| `pruned.h5`"))
    assert "3.00x" in line  # gzip 900 -> 300
    assert "-0.50" in line  # accuracy delta in points
    assert "## Sparsity and speed" in md and "no speedup" in md
    json_path, md_path = write_report(report, tmp_path)
    assert json.loads(json_path.read_text())["baseline"] == "trained.h5"
    assert not list(tmp_path.glob("*.tmp"))


def test_failed_parity_is_visible(run):
    import dataclasses
    i = next(i for i, a in enumerate(run.artifacts) if a.name == "pruned.tflite")
    run.artifacts[i] = dataclasses.replace(run.artifacts[i], meta={
        "mode": "float32", "validation": {"passed": False, "max_abs_diff": 3e-3}})
    md = render_markdown(build_report(run, recipe="d", environment=ENV))
    assert "FAILED (3.0e-03)" in md


def test_pareto_section_names_the_smallest_and_the_size_floor(run, tmp_path):
    from slimpipe.pipeline.report import write_plots

    run.measurements["pruned.sparse.tflite"]["size_floor_bytes"] = 50
    report = build_report(run, recipe="default", environment=ENV)
    images = write_plots(report, tmp_path)
    md = render_markdown(report)
    section = md.split("## Size, accuracy and the Pareto frontiers")[1].split("\n## ")[0]
    # pruned.sparse.tflite: 150 gzip bytes at 0.895 (-0.5 points) is the smallest within 0.5.
    assert "pruned.sparse.tflite, 150 bytes gzipped (4.67x smaller than trained.tflite" in section
    row = next(line for line in section.splitlines() if line.startswith("| `pruned.sparse.tflite`"))
    assert "| 50 | 3.00x |" in row and row.rstrip().endswith("| yes |  |")
    assert set(images) == {"size_vs_accuracy.png", "latency_vs_accuracy.png"} == set(report["plots"])
    for name in images:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"![{name}]({name})" in section


def _row(name, fmt, parent, p50, *, mode=None, sparsity=0.0, sparse_storage=False):
    lat = [{"runtime": "onnxruntime" if fmt == "onnx" else "litert", "device": "cpu", "threads": t,
            "batch": b, "engine": "e", "p50_ms": p50 * b / t} for t in (1, 2) for b in (1, 32)]
    return {"name": name, "format": fmt, "parent": parent, "mode": mode, "sparsity": sparsity,
            "sparse_storage": sparse_storage, "bytes": 100, "gzip_bytes": 50, "latency": lat}


def test_sparse_int8_is_compared_with_dense_int8_not_with_float():
    from slimpipe.pipeline.speed import speed_summary, sparsity_and_speed

    report = {"baseline": "trained", "artifacts": [
        _row("trained", "keras", None, 1.0),
        _row("trained.onnx", "onnx", "trained", 0.04),
        _row("trained.dynamic.onnx", "onnx", "trained", 0.20, mode="int8-dynamic"),
        _row("pruned.dynamic.onnx", "onnx", "pruned", 0.20, mode="int8-dynamic", sparsity=0.9),
        _row("trained.tflite", "tflite", "trained", 0.03),
        _row("clustered.int8.sparse.tflite", "tflite", "clustered", 0.05, mode="int8",
             sparsity=0.9, sparse_storage=True)]}
    rows = sparsity_and_speed(report)
    dynamic = [r for r in rows if r["artifact"] == "pruned.dynamic.onnx"]
    assert {r["reference"] for r in dynamic} == {"trained.dynamic.onnx"}  # not the 5x faster float file
    assert all(r["same_precision"] and abs(r["speedup"] - 1.0) < 1e-9 for r in dynamic)
    assert "no speedup" in dynamic[0]["sentence"]
    tflite = [r for r in rows if r["artifact"] == "clustered.int8.sparse.tflite"]
    assert {r["reference"] for r in tflite} == {"trained.tflite"}
    assert not tflite[0]["same_precision"] and "not a measure of the zeros" in tflite[0]["sentence"]
    assert "slower" not in tflite[0]["sentence"]  # 0.6x is not blamed on the sparse format

    lines = speed_summary(rows)
    assert len(lines) == 2  # one line per artifact, the other grid points folded into it
    assert lines[0].startswith("pruned.dynamic.onnx") and "1 thread, batch 1" in lines[0]
    assert lines[0].count("Other points:") == 1 and "2 threads, batch 32) 1.00x" in lines[0]


def test_wrapped_keras_models_and_their_files_inherit_the_counted_macs():
    from slimpipe.pipeline.report import inherit_complexity

    rows = [{"name": "clustered", "format": "keras", "parent": "pruned", "params": 10, "macs": 99},
            {"name": "q", "format": "keras", "parent": "clustered", "params": None, "macs": None},
            {"name": "q.tflite", "format": "tflite", "parent": "q", "params": None, "macs": None},
            {"name": "s", "format": "keras", "parent": "clustered", "params": 4, "macs": 40},
            {"name": "s.int8.s2d.tflite", "format": "tflite", "parent": "s", "params": 5, "macs": 45}]
    inherit_complexity(rows)
    # A counted model keeps its own count, and so does a file that records its own (a rewrite).
    assert [r["macs"] for r in rows] == [99, 99, 99, 40, 45]


def test_a_speed_difference_without_an_eligible_layer_is_called_variation():
    from slimpipe.pipeline.speed import sparsity_and_speed

    pruned = _row("pruned.onnx", "onnx", "pruned", 0.05, sparsity=0.9)
    eligible = _row("pruned.sparse.tflite", "tflite", "pruned", 0.01, sparsity=0.9, sparse_storage=True)
    pruned["eligibility"] = {"layers": [{"label": "size-only"}, {"label": "dense"}]}
    eligible["eligibility"] = {"layers": [{"label": "latency-eligible"}]}
    report = {"baseline": "trained", "artifacts": [
        _row("trained", "keras", None, 1.0), _row("trained.onnx", "onnx", "trained", 0.04),
        _row("trained.tflite", "tflite", "trained", 0.03), pruned, eligible]}
    rows = {r["artifact"]: r for r in sparsity_and_speed(report) if r["threads"] == r["batch"] == 1}
    assert rows["pruned.onnx"]["speedup"] == pytest.approx(0.8)
    assert "run-to-run variation" in rows["pruned.onnx"]["sentence"]
    assert rows["pruned.sparse.tflite"]["speedup"] == pytest.approx(3.0)
    assert "skipped work for the zeros" in rows["pruned.sparse.tflite"]["sentence"]


def test_x_faster_shows_the_pass_by_pass_spread(run):
    """Each interleaved pass pairs the files in time: the cell gives the lowest and highest
    per-pass ratio, and nothing where the passes are unknown."""
    from slimpipe.pipeline.sections import artifacts_table

    lat = lambda row: run.measurements[row]["latency"][0]  # noqa: E731
    lat("trained.tflite")["pass_p50_ms"] = [2.0, 2.0, 3.0]
    lat("pruned.tflite")["pass_p50_ms"] = [1.0, 0.5, 1.5]
    cells = {r[0]: r for r in artifacts_table(build_report(run, recipe="d", environment=ENV)).text_rows()}
    assert cells["pruned.tflite"][12] == "1.02x (2.00-4.00)"  # 2.0 / 1.96 pooled; passes 2, 4, 2
    assert cells["trained.tflite"][12] == "1.00x"  # its own reference
    assert cells["pruned.sparse.tflite"][12] == "0.50x"  # no per-pass figures
    assert "lowest and highest ratio of single interleaved passes" in render_markdown(
        build_report(run, recipe="d", environment=ENV))
