"""The CSR reference kernel: right shapes and counts from a model's own weights; the timings
themselves are not asserted (they flake), the work counts that drive them are."""
import slimpipe.pipeline  # noqa: F401

import numpy as np
import pytest

from slimpipe.benchmarks.sparse_kernel import csr_reference, gemm_operands, time_gemm
from slimpipe.pipeline.errors import ConfigError
from slimpipe.pipeline.kerasio import save_keras
from tests.conftest import make_tiny_model

FAST = {"warmup": 1, "min_runs": 3, "min_seconds": 0.0}


def _sparse(shape, fraction, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(shape).astype(np.float32)
    w[rng.random(shape) < fraction] = 0.0
    return w


def test_work_counts_follow_sparsity():
    rows, depth, columns = 64, 256, 5
    dense = time_gemm(_sparse((rows, depth), 0.0), columns, **FAST)
    sparse = time_gemm(_sparse((rows, depth), 0.95), columns, **FAST)
    assert dense["dense_flops"] == sparse["dense_flops"] == 2 * rows * depth * columns
    assert dense["nnz"] == rows * depth and dense["sparse_flops"] == dense["dense_flops"]
    assert sparse["nnz"] == pytest.approx(0.05 * rows * depth, rel=0.3)
    assert sparse["sparse_flops"] == 2 * sparse["nnz"] * columns < dense["sparse_flops"] / 10
    assert sparse["sparsity"] == pytest.approx(0.95, abs=0.02) and dense["sparsity"] == 0.0
    for r in (dense, sparse):
        assert r["dense_p50_ms"] > 0 and r["csr_p50_ms"] > 0
        assert r["ratio"] == pytest.approx(r["dense_p50_ms"] / r["csr_p50_ms"])


def test_operands_are_the_models_own_gemms(tiny_model):
    """tiny model: conv 3x3x1 -> 8 on 12x12 (10x10 outputs), dense 200 -> 32, logits 32 -> 4."""
    gemms, skipped = gemm_operands(tiny_model, batch=2)
    shapes = {g["name"]: (g["kind"], g["weights"].shape, g["columns"]) for g in gemms}
    assert shapes == {"conv": ("Conv2D", (8, 9), 200), "dense": ("Dense", (32, 200), 2),
                      "logits": ("Dense", (4, 32), 2)}
    assert skipped == []
    kernel = tiny_model.get_layer("dense").get_weights()[0]
    np.testing.assert_array_equal(gemms[1]["weights"], kernel.T)


def test_depthwise_layers_are_listed_as_skipped():
    import tf_keras as keras

    model = keras.Sequential([keras.layers.Input((8, 8, 3)),
                              keras.layers.DepthwiseConv2D(3, name="dw"),
                              keras.layers.Conv2D(4, 1, name="pw")])
    gemms, skipped = gemm_operands(model)
    assert [g["name"] for g in gemms] == ["pw"] and skipped == ["dw (DepthwiseConv2D)"]
    assert gemms[0]["columns"] == 36


def test_whole_model_reference_from_a_pruned_file(tmp_path):
    model = make_tiny_model()
    for name in ("dense", "logits"):
        layer = model.get_layer(name)
        kernel, bias = layer.get_weights()
        layer.set_weights([_sparse(kernel.shape, 0.9, seed=1), bias])
    res = csr_reference(save_keras(model, tmp_path / "pruned.h5"), **FAST)
    assert [l["name"] for l in res["layers"]] == ["conv", "dense", "logits"]
    assert res["threads"] == 1 and res["batch"] == 1 and res["blas_threads_controlled"]
    assert res["dense_ms"] == pytest.approx(sum(l["dense_p50_ms"] for l in res["layers"]))
    by = {l["name"]: l for l in res["layers"]}
    # the dense conv keeps the dense kernel; the 90%-sparse layers get the CSR kernel
    assert [by[n]["kernel_used"] for n in ("conv", "dense", "logits")] == ["dense", "csr", "csr"]
    assert res["csr_ms"] == pytest.approx(by["conv"]["dense_p50_ms"] + by["dense"]["csr_p50_ms"]
                                          + by["logits"]["csr_p50_ms"])
    assert res["sparse_flops"] == (by["conv"]["dense_flops"] + by["dense"]["sparse_flops"]
                                   + by["logits"]["sparse_flops"])
    assert res["ratio"] == pytest.approx(res["dense_ms"] / res["csr_ms"])
    assert by["dense"]["sparsity"] == pytest.approx(0.9, abs=0.03)
    assert by["conv"]["sparsity"] < 0.05
    assert by["dense"]["sparse_flops"] < by["dense"]["dense_flops"] / 5
    assert res["flop_ratio"] == pytest.approx(res["dense_flops"] / res["sparse_flops"])
    assert res["flop_ratio"] > 1


def test_bad_input(tmp_path, tiny_model):
    with pytest.raises(ConfigError, match="does not exist"):
        csr_reference(tmp_path / "missing.h5")
    with pytest.raises(ConfigError, match="batch must be"):
        csr_reference(tiny_model, batch=0)


def test_qat_wrapped_model_reads_the_kernel_variables():
    import tensorflow_model_optimization as tfmot

    from tests.conftest import make_tiny_model

    plain = make_tiny_model()
    qat = tfmot.quantization.keras.quantize_model(make_tiny_model())
    want = {g["name"]: g["weights"] for g in gemm_operands(plain)[0]}
    got = {g["name"]: g["weights"] for g in gemm_operands(qat)[0]}
    assert set(got) == set(want) == {"conv", "dense", "logits"}
    assert all(np.array_equal(got[k], want[k]) for k in want)
