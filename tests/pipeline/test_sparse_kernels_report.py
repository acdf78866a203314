"""The "Sparsity and speed" section: dense- and sparse-kernel ratios, computed from the
measurements, and the per-layer eligibility labels, in report.json, report.md and report.html."""
import json

import pytest

from slimpipe.pipeline.artifacts import make_artifact
from slimpipe.pipeline.context import RunContext
from slimpipe.pipeline.html_report import render_html
from slimpipe.pipeline.markdown_report import render_markdown
from slimpipe.pipeline.report import build_report
from slimpipe.pipeline.sections import artifacts_table

ENV = {"cpu": "test cpu", "cores": 2, "isa": ["avx2"], "gpu": [], "versions": {"tensorflow": "x"}}


def _lat(p50, resolver="default", engine="xnnpack"):
    return {"runtime": "litert", "device": "cpu", "threads": 1, "batch": 1, "engine": engine,
            "resolver": resolver, "p50_ms": p50, "p90_ms": p50, "p99_ms": p50, "runs": 50}


def _layer(name, op, label, block=None, reason="because"):
    return {"name": name, "op": op, "weights_dtype": "float32", "sparsity": 0.8,
            "sparse_storage": True, "densify": block is None, "xnnpack_sparse_subgraph": False,
            "sparse_fc_block": block, "label": label, "reason": reason}


def _eligibility(*layers):
    return {"layers": list(layers), "summary": {"applicable": True}}


@pytest.fixture
def run(tmp_path, tiny_data):
    ctx = RunContext(data=tiny_data, out_dir=tmp_path, model_name="tiny")

    def add(name, fmt, parent, meta=None, **measured):
        path = tmp_path / name
        path.write_bytes(name.encode())
        art = make_artifact(name, path, fmt=fmt, kind=fmt, stage="s", config={}, parent=parent,
                            meta=meta)
        ctx.artifacts.append(art)
        ctx.measurements[name] = {"bytes": 100, "gzip_bytes": 90, "accuracy": 0.9, **measured}
        return art

    trained = add("trained", "keras", None, sparsity=0.0)
    pruned = add("pruned", "keras", trained, sparsity=0.8,
                 sparse_kernel={"ratio": 1.8, "flop_ratio": 5.0, "layers": []})
    add("trained.tflite", "tflite", trained, {"mode": "float32"}, sparsity=0.0,
        latency=[_lat(2.0), _lat(3.0, "builtin", "builtin")])
    add("pruned.tflite", "tflite", pruned, {"mode": "float32"}, sparsity=0.8,
        latency=[_lat(1.9), _lat(2.9, "builtin", "builtin")],
        eligibility=_eligibility(_layer("fc1", "FULLY_CONNECTED", "size-only")))
    add("pruned.sparse.tflite", "tflite", pruned, {"mode": "float32", "sparse_storage": True},
        sparsity=0.8, latency=[_lat(2.5), _lat(2.4, "builtin", "builtin")],
        eligibility=_eligibility(_layer("fc1", "FULLY_CONNECTED", "size-only", reason="DENSIFY x"),
                                 _layer("logits", "FULLY_CONNECTED", "dense")))
    add("pruned.block.tflite", "tflite", pruned, {"mode": "float32", "sparse_storage": True},
        sparsity=0.8, latency=[_lat(1.5, engine="builtin"), _lat(1.0, "builtin", "builtin")],
        eligibility=_eligibility(_layer("fc1", "FULLY_CONNECTED", "latency-eligible", "1x4")))
    ctx.baseline = "trained"
    return ctx


def test_ratios_and_sources_come_from_labels_and_measurements(run):
    report = build_report(run, recipe="d", environment=ENV)
    entries = {e["artifact"]: e for e in report["sparse_kernels"]}
    assert set(entries) == {"pruned.tflite", "pruned.sparse.tflite", "pruned.block.tflite"}

    no_path = entries["pruned.sparse.tflite"]  # no latency-eligible layer: CSR stands in
    assert no_path["dense_kernel_source"] == "default"
    assert no_path["dense_kernel_ratio"] == pytest.approx(2.0 / 2.5)
    assert no_path["builtin_ratio"] == pytest.approx(3.0 / 2.4)
    assert no_path["sparse_kernel_source"] == "csr-reference"
    assert no_path["sparse_kernel_ratio"] == pytest.approx(1.8)
    assert no_path["labels"] == {"latency-eligible": 0, "size-only": 1, "dense": 1}
    assert "0.80x" in no_path["sentence"] and "1.80x" in no_path["sentence"]
    assert "no sparse kernel" in no_path["sentence"] and "5.00x" in no_path["sentence"]

    block = entries["pruned.block.tflite"]  # a 1x4 FC: the builtin resolver runs it sparse
    assert block["sparse_kernel_source"] == "builtin"
    assert block["sparse_kernel_ratio"] == pytest.approx(3.0 / 1.0)
    # XNNPACK leaves the sparse FC to the same kernel, so the dense-kernel run is the same
    # weights stored dense (pruned.tflite) on the builtin kernels
    assert block["dense_kernel_artifact"] == "pruned.tflite"
    assert block["dense_kernel_ratio"] == pytest.approx(3.0 / 2.9)
    assert block["default_ratio"] == pytest.approx(2.0 / 1.5)
    assert "the same weights stored dense" in block["sentence"]
    assert "pays off in speed" in block["sentence"]
    json.dumps(report)


def test_xnnpack_eligible_file_is_measured_against_the_builtin_kernels(run):
    run.measurements["pruned.sparse.tflite"]["eligibility"] = _eligibility(
        _layer("pw", "CONV_2D", "latency-eligible"), _layer("stem", "CONV_2D", "dense"))
    entry = next(e for e in build_report(run, recipe="d", environment=ENV)["sparse_kernels"]
                 if e["artifact"] == "pruned.sparse.tflite")
    assert entry["sparse_kernel_source"] == "xnnpack"
    assert entry["sparse_kernel_ratio"] == pytest.approx(2.0 / 2.5)  # default engine: XNNPACK
    assert entry["dense_kernel_source"] == "builtin"
    assert entry["dense_kernel_ratio"] == pytest.approx(3.0 / 2.4)
    assert "bought no speed" in entry["sentence"] and "1.80x" in entry["sentence"]


def test_builtin_rows_do_not_leak_into_default_comparisons(run):
    report = build_report(run, recipe="d", environment=ENV)
    rows = {(s["artifact"], s["resolver"]): s["speedup"] for s in report["sparsity_and_speed"]}
    assert rows[("pruned.sparse.tflite", "default")] == pytest.approx(2.0 / 2.5)
    assert rows[("pruned.sparse.tflite", "builtin")] == pytest.approx(3.0 / 2.4)
    main = {r[0]: r for r in artifacts_table(report).text_rows()}
    assert main["pruned.sparse.tflite"][11] == "2.500"  # p50 of the default (XNNPACK) row


def test_markdown_and_html_show_ratios_labels_and_reasons(run):
    report = build_report(run, recipe="d", environment=ENV)
    md = render_markdown(report)
    section = md.split("## Sparsity and speed", 1)[1].split("## Stages", 1)[0]
    assert "| `pruned.sparse.tflite` | 80.0% | 0.80x | 1.80x | csr-reference | 0 | 1 | 1 |" in section
    assert "Layers of `pruned.block.tflite`" in section
    assert ("| `fc1` | FULLY_CONNECTED | float32 | 80% | sparse | yes | **size-only** | DENSIFY x |"
            in section)
    assert "**latency-eligible**" in section
    page = render_html(report, {})
    assert 'id="sparse-kernels"' in page and "<b>latency-eligible</b>" in page
    assert "DENSIFY x" in page


def test_no_sparse_artifact_no_kernel_section(run):
    for name in ("pruned.tflite", "pruned.sparse.tflite", "pruned.block.tflite", "pruned"):
        run.measurements[name]["sparsity"] = 0.1
    report = build_report(run, recipe="d", environment=ENV)
    assert report["sparse_kernels"] == []
    assert "Dense- and sparse-kernel speed" not in render_markdown(report)
