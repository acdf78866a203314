"""Sparse storage: EXPERIMENTAL_SPARSITY shrinks the file; sparsity is measured from each file."""
import slimpipe.pipeline  # noqa: F401

import numpy as np
import pytest

from slimpipe.benchmarks.measure import file_size
from slimpipe.benchmarks.runtimes import LiteRTRuntime, open_runtime
from slimpipe.benchmarks.sparsity import tflite_ops, tflite_sparse_tensors, weight_sparsity
from slimpipe.exporters.onnx import export_onnx
from slimpipe.exporters.tflite import export_tflite
from slimpipe.exporters.validate import check_parity
from slimpipe.pipeline.kerasio import clone_with_weights, save_keras

DENSE_PARAMS = 200 * 32


@pytest.fixture
def sparse_model(tiny_model):
    """A copy of the tiny model with exactly 80% of its Dense kernel zeroed."""
    model = clone_with_weights(tiny_model)
    kernel, bias = model.get_layer("dense").get_weights()
    flat = kernel.reshape(-1)
    flat[np.random.default_rng(0).permutation(flat.size)[: int(0.8 * flat.size)]] = 0.0
    model.get_layer("dense").set_weights([flat.reshape(kernel.shape), bias])
    # the original is untouched
    assert np.count_nonzero(tiny_model.get_layer("dense").get_weights()[0] == 0) < 10
    return model


def _dense_layer(result):
    (layer,) = [l for l in result["layers"] if l["params"] == DENSE_PARAMS]
    return layer


def test_sparse_tflite_is_smaller_and_all_formats_measure_the_same_sparsity(
        sparse_model, tiny_data, tmp_path):
    h5 = save_keras(sparse_model, tmp_path / "pruned.h5")
    onnx_path = export_onnx(sparse_model, tmp_path / "pruned.onnx")
    dense = export_tflite(sparse_model, tmp_path / "dense.tflite")
    sparse = export_tflite(sparse_model, tmp_path / "sparse.tflite", sparse=True)

    assert file_size(sparse)["bytes"] < 0.6 * file_size(dense)["bytes"]
    assert tflite_sparse_tensors(dense) == []
    assert len(tflite_sparse_tensors(sparse)) == 1
    assert "DENSIFY" in tflite_ops(sparse) and "DENSIFY" not in tflite_ops(dense)
    assert tflite_ops(dense).count("FULLY_CONNECTED") == 2

    expected_zeros = int(0.8 * DENSE_PARAMS)
    results = {fmt_path: weight_sparsity(p, fmt) for fmt_path, (p, fmt) in {
        "h5": (h5, "keras"), "onnx": (onnx_path, "onnx"),
        "dense": (dense, "tflite"), "sparse": (sparse, "tflite")}.items()}
    for name, res in results.items():
        assert res["params"] == 72 + DENSE_PARAMS + 32 * 4, name  # conv + dense + logits kernels
        assert _dense_layer(res)["zeros"] == expected_zeros, name
        assert _dense_layer(res)["sparsity"] == pytest.approx(0.8), name
        assert res["sparsity"] == pytest.approx(expected_zeros / res["params"], abs=2e-3), name
        assert "note" not in res
    assert _dense_layer(results["sparse"])["storage"] == "sparse"
    assert _dense_layer(results["dense"])["storage"] == "dense"

    # The sparse file still computes the same function.
    x = tiny_data.x_test[:64]
    ref = sparse_model(x, training=False).numpy()
    res = check_parity(ref, sparse, "tflite", x)
    assert res["passed"], res


def test_dense_model_measures_near_zero_sparsity(tiny_model, tmp_path):
    path = export_tflite(tiny_model, tmp_path / "dense.tflite")
    res = weight_sparsity(path, "tflite")
    assert res["sparsity"] < 0.01 and res["params"] == 6600


def test_sparse_dynamic_range_runs_on_some_path(sparse_model, tiny_data, tmp_path):
    path = export_tflite(sparse_model, tmp_path / "sd.tflite", mode="dynamic", sparse=True)
    assert tflite_sparse_tensors(path)
    res = weight_sparsity(path, "tflite")
    assert _dense_layer(res)["zeros"] >= int(0.8 * DENSE_PARAMS)  # int8 rounding adds zeros
    rt = open_runtime(path, "tflite")
    # Which path runs is recorded: XNNPACK, or the builtin kernels with the reason.
    assert (rt.delegate == "builtin") == (rt.fallback is not None)
    x = tiny_data.x_test[:16]
    out = rt.predict(x)
    ref = sparse_model(x, training=False).numpy()
    assert np.abs(out - ref).max() < 0.05 * np.abs(ref).max()


def test_xnnpack_prepare_failure_falls_back_to_builtin(tiny_model, tmp_path, monkeypatch):
    path = export_tflite(tiny_model, tmp_path / "m.tflite")
    real = LiteRTRuntime._make

    def flaky(p, threads, *, builtin):
        if not builtin:
            raise RuntimeError("Node number 6 (TfLiteXNNPackDelegate) failed to prepare.")
        return real(p, threads, builtin=builtin)

    monkeypatch.setattr(LiteRTRuntime, "_make", staticmethod(flaky))
    rt = open_runtime(path, "tflite")
    assert rt.delegate == "builtin" and "failed to prepare" in rt.fallback
    assert rt.predict(np.zeros((2, 12, 12, 1), np.float32)).shape == (2, 4)


def _tensor_names(path):
    from slimpipe.benchmarks.sparsity import tflite_model

    _, model, _ = tflite_model(path)
    graph = model.Subgraphs(0)
    return [graph.Tensors(t).Name() for t in range(graph.TensorsLength())]


def test_strip_names_makes_a_smaller_file_with_the_same_outputs_and_measurements(
        sparse_model, tiny_data, tmp_path):
    from slimpipe.benchmarks.eligibility import eligibility

    named = export_tflite(sparse_model, tmp_path / "named.tflite", sparse=True)
    bare = export_tflite(sparse_model, tmp_path / "bare.tflite", sparse=True, strip_names=True)

    assert all(_tensor_names(named)) and not any(_tensor_names(bare))
    assert file_size(bare)["bytes"] < file_size(named)["bytes"] - 300
    x = tiny_data.x_test[:32]
    np.testing.assert_array_equal(open_runtime(bare, "tflite").predict(x),
                                  open_runtime(named, "tflite").predict(x))
    # the same per-layer measurements, under index names
    a, b = weight_sparsity(named, "tflite"), weight_sparsity(bare, "tflite")
    assert [(l["params"], l["zeros"], l["storage"]) for l in a["layers"]] == \
        [(l["params"], l["zeros"], l["storage"]) for l in b["layers"]]
    assert all(l["name"].startswith("tensor") for l in b["layers"])
    assert len({l["name"] for l in b["layers"]}) == len(b["layers"])
    assert len(tflite_sparse_tensors(bare)) == 1
    labels = [(l["op"], l["sparsity"], l["label"]) for l in eligibility(bare, "tflite")["layers"]]
    assert labels == [(l["op"], l["sparsity"], l["label"]) for l in eligibility(named, "tflite")["layers"]]


def test_strip_names_must_be_a_bool(sparse_model, tmp_path):
    from slimpipe.pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match="strip_names must be True or False"):
        export_tflite(sparse_model, tmp_path / "x.tflite", strip_names="yes")
    assert not (tmp_path / "x.tflite").exists()
