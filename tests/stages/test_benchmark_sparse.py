"""The benchmark stage on an 80%-sparse model: eligibility labels for its exports, a same-runtime
A/B with LiteRT's builtin kernels, and the CSR reference on its Keras weights, in the report."""
import numpy as np
import pytest

from slimpipe.pipeline.artifacts import make_artifact
from slimpipe.pipeline.context import RunContext
from slimpipe.pipeline.errors import ConfigError
from slimpipe.pipeline.kerasio import clone_with_weights, save_keras
from slimpipe.pipeline.markdown_report import render_markdown
from slimpipe.pipeline.report import build_report
from slimpipe.stages.benchmark import Benchmark
from slimpipe.pipeline.runner import run_stage
from slimpipe.stages.export import Export
from tests.conftest import make_tiny_model

FAST = {"latency": ((1, 1),), "warmup": 1, "min_runs": 3, "min_seconds": 0.0, "accuracy_limit": 32}


@pytest.fixture(scope="module")
def measured(tmp_path_factory, tiny_data):
    tmp = tmp_path_factory.mktemp("bench")
    ctx = RunContext(data=tiny_data, out_dir=tmp, model_name="tiny")
    model = make_tiny_model()
    pruned_model = clone_with_weights(model)
    layer = pruned_model.get_layer("dense")
    kernel, bias = layer.get_weights()
    kernel[np.random.default_rng(0).random(kernel.shape) < 0.8] = 0.0
    layer.set_weights([kernel, bias])

    def keras_art(name, m, parent):
        return make_artifact(name, save_keras(m, tmp / f"{name}.h5"), fmt="keras", kind="keras",
                             stage="train", config={}, parent=parent)

    trained = keras_art("trained", model, None)
    pruned = keras_art("pruned", pruned_model, trained)
    ctx.artifacts += [trained, pruned]
    ctx.baseline = "trained"
    ctx.stage_dir = tmp / "export"
    run_stage(Export(formats=("tflite",)), pruned, ctx)
    ctx.stage_dir = tmp / "benchmark"
    run_stage(Benchmark(**FAST), pruned, ctx)
    return ctx


def _builtin(m):
    return [l for l in m["latency"] if l.get("resolver") == "builtin"]


def test_sparse_artifacts_get_labels_builtin_rows_and_csr_reference(measured):
    m = measured.measurements
    assert set(m) == {"trained", "pruned", "trained.tflite", "pruned.tflite", "pruned.sparse.tflite"}
    labels = {l["name"]: l for l in m["pruned.sparse.tflite"]["eligibility"]["layers"]}
    dense_fc = next(l for l in labels.values() if l["sparsity"] > 0.5)
    assert dense_fc["op"] == "FULLY_CONNECTED" and dense_fc["densify"]
    assert dense_fc["label"] == "size-only"
    # same-runtime A/B: the sparse file and its dense counterpart both ran on builtin kernels
    for name in ("pruned.sparse.tflite", "pruned.tflite", "trained.tflite"):
        (row,) = _builtin(m[name])
        assert row["engine"] == "builtin" and row["threads"] == 1 and row["batch"] == 1
        assert row["p50_ms"] > 0
    assert all(l.get("resolver") == "default" for l in m["trained.tflite"]["latency"]
               if l not in _builtin(m["trained.tflite"]))
    ref = m["pruned"]["sparse_kernel"]
    assert [l["name"] for l in ref["layers"]] == ["conv", "dense", "logits"]
    assert "eligibility" not in m["trained.tflite"] and "sparse_kernel" not in m["trained"]


def test_report_shows_dense_and_sparse_kernel_ratios_and_labels(measured):
    report = build_report(measured, recipe="d", environment={})
    entry = next(e for e in report["sparse_kernels"] if e["artifact"] == "pruned.sparse.tflite")
    assert entry["sparse_kernel_source"] == "csr-reference"
    assert entry["sparse_kernel_ratio"] == measured.measurements["pruned"]["sparse_kernel"]["ratio"]
    assert entry["dense_kernel_ratio"] is not None and entry["builtin_ratio"] is not None
    assert entry["labels"]["size-only"] >= 1 and entry["labels"]["latency-eligible"] == 0
    md = render_markdown(report)
    assert "Layers of `pruned.sparse.tflite`" in md and "**size-only**" in md


def test_sparse_kernels_can_be_turned_off(measured, tmp_path):
    ctx = RunContext(data=measured.data, out_dir=tmp_path, model_name="tiny")
    ctx.artifacts = list(measured.artifacts)
    ctx.baseline = "trained"
    ctx.stage_dir = tmp_path / "benchmark"
    run_stage(Benchmark(**FAST, sparse_kernels=False), ctx.artifacts[1], ctx)
    assert not any(_builtin(m) or "eligibility" in m or "sparse_kernel" in m
                   for m in ctx.measurements.values())
    with pytest.raises(ConfigError, match="sparse_kernels must be"):
        Benchmark(sparse_kernels="yes")
