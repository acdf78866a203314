"""The benchmark stage as a latency harness: the thread/batch grid, load time apart from the
timed runs, parameters and MACs per Keras model, and which devices get rows."""
import os

import pytest

from slimpipe.benchmarks.complexity import keras_complexity
from slimpipe.pipeline.artifacts import make_artifact
from slimpipe.pipeline.context import RunContext
from slimpipe.pipeline.kerasio import save_keras
from slimpipe.pipeline.markdown_report import render_markdown
from slimpipe.pipeline.report import build_report
from slimpipe.stages.benchmark import Benchmark, latency_devices
from slimpipe.pipeline.runner import run_stage
from slimpipe.stages.export import Export
from tests.conftest import make_tiny_model

FAST = {"warmup": 1, "min_runs": 3, "min_seconds": 0.0, "accuracy_limit": 32, "sparse_kernels": False}


def test_default_grid_is_one_thread_and_all_cores_at_batch_1_and_32():
    assert set(Benchmark().latency) == {(1, 1), (1, 32), (0, 1), (0, 32)}


@pytest.mark.parametrize("fmt, gpus, expected", [
    ("onnx", [], ["cpu"]),
    ("onnx", ["onnxruntime:CUDAExecutionProvider"], ["cpu", "gpu"]),
    ("onnx", ["onnxruntime:TensorrtExecutionProvider"], ["cpu", "gpu"]),
    # a ROCm provider or a TF GPU alone gives onnxruntime nothing open_runtime can select
    ("onnx", ["onnxruntime:ROCMExecutionProvider", "tensorflow:/physical_device:GPU:0"], ["cpu"]),
    ("tflite", ["onnxruntime:CUDAExecutionProvider", "tensorflow:/physical_device:GPU:0"], ["cpu"]),
    ("keras", [], []),
    ("keras", ["onnxruntime:CUDAExecutionProvider"], []),
    ("keras", ["tensorflow:/physical_device:GPU:0"], ["gpu"]),
])
def test_latency_devices(fmt, gpus, expected):
    assert latency_devices(fmt, gpus) == expected


@pytest.fixture(scope="module")
def measured(tmp_path_factory, tiny_data):
    tmp = tmp_path_factory.mktemp("harness")
    ctx = RunContext(data=tiny_data, out_dir=tmp, model_name="tiny")
    model = make_tiny_model()
    trained = make_artifact("trained", save_keras(model, tmp / "trained.h5"), fmt="keras",
                            kind="keras", stage="train", config={}, parent=None)
    ctx.artifacts.append(trained)
    ctx.baseline = "trained"
    ctx.stage_dir = tmp / "export"
    run_stage(Export(), trained, ctx)
    ctx.stage_dir = tmp / "benchmark"
    run_stage(Benchmark(latency=((1, 1), (0, 32)), **FAST), trained, ctx)
    return ctx, keras_complexity(model)


def test_rows_hold_load_time_cv_and_the_grid(measured):
    ctx, _ = measured
    for name in ("trained.tflite", "trained.onnx"):
        rows = ctx.measurements[name]["latency"]
        assert {(r["threads"], r["batch"]) for r in rows} == {(1, 1), (os.cpu_count(), 32)}
        for r in rows:
            assert r["load_ms"] > 0 and r["cv"] >= 0 and r["runs"] >= 3
            assert r["passes"] == 10 and len(r["pass_p50_ms"]) == 10  # interleaved with the other rows
            assert r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"]
    assert ctx.measurements["trained"]["latency"] == []  # no TF GPU here: Keras gets no rows


def test_params_and_macs_reach_the_report_for_every_artifact(measured):
    ctx, complexity = measured
    assert ctx.measurements["trained"]["complexity"] == {"params": complexity["params"],
                                                         "macs": complexity["macs"]}
    assert complexity["params"] > 0 and complexity["macs"] > 0
    report = build_report(ctx, recipe="t", environment={"isa": []})
    for row in report["artifacts"]:  # the exports take their Keras parent's counts
        assert (row["params"], row["macs"]) == (complexity["params"], complexity["macs"]), row["name"]
    md = render_markdown(report)
    assert "| artifact | format | params (count) | MACs (millions) |" in md
    assert f"| `trained.onnx` | onnx | {complexity['params']:,} | {complexity['macs'] / 1e6:.3f} |" in md
