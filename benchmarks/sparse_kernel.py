"""What a sparse kernel would buy: a reference CSR matrix multiply against a dense one, on a
model's own (pruned) weight matrices, at the shapes the model runs them.

>>> r = csr_reference("out/pruned.h5")
>>> r["ratio"], [(l["name"], l["ratio"]) for l in r["layers"]]
(0.9, [('conv1', 1.1), ('conv2', 0.9), ('fc1', 0.5), ...])

Each Dense kernel is one matrix-vector product per example: W^T (units x inputs) times the
input. Each Conv2D (groups 1) is its im2col GEMM: W^T (filters x kh*kw*cin) times a patch
matrix with one column per output position (the real output height x width). Both kernels get
the same float32 operands: numpy's dense matmul (BLAS) and scipy.sparse's CSR matmul, which
touches only the stored non-zeros. BLAS runs on one thread (threadpoolctl); scipy's CSR kernel
is single-threaded. Depthwise and other layers are listed in `skipped`.

`ratio` is dense time / CSR time (> 1: the sparse kernel is faster), per layer and for the
model: there the sum of dense times over the sum of the times of the kernel a runtime would
pick (`kernel_used`: CSR for layers with at least 30% zeros, dense for the rest). This times
the weight products only, not the whole network. scipy's CSR is a portable scalar reference,
not a tuned SpMM: per multiply-add it is several times slower than BLAS, so it breaks even
only at high sparsity. `flop_ratio` (dense / kept multiply-adds) is the ceiling an ideal
sparse kernel would approach.
"""
from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from slimpipe.benchmarks.measure import measure_latency
from slimpipe.benchmarks.sparsity import SPARSE_MIN  # below it a layer keeps the dense kernel
from slimpipe.pipeline.errors import ConfigError


def gemm_operands(model, batch: int = 1) -> tuple[list[dict], list[str]]:
    """The weight GEMMs of a Keras model: [{"name", "kind", "weights" (rows x depth), "columns"}]
    and the names of weight layers that are not a plain GEMM (skipped)."""
    gemms, skipped = [], []
    for outer in _flat_layers(model):
        layer = getattr(outer, "layer", outer)  # tfmot wrappers keep the real layer in .layer
        kind = type(layer).__name__
        kernel = getattr(layer, "kernel", None)
        if kernel is None:
            if getattr(layer, "weights", None) and any(len(w.shape) >= 2 for w in layer.weights):
                skipped.append(f"{layer.name} ({kind})")
            continue
        if not hasattr(kernel, "numpy"):  # a QAT wrapper swaps the kernel for a fake-quantized tensor
            kernel = next(v for v in outer.weights if v.name.rsplit("/", 1)[-1].startswith("kernel"))
        w = np.asarray(kernel.numpy(), dtype=np.float32)
        if kind == "Dense" and w.ndim == 2:
            gemms.append({"name": layer.name, "kind": kind, "weights": np.ascontiguousarray(w.T),
                          "columns": batch})
        elif kind == "Conv2D" and w.ndim == 4 and getattr(layer, "groups", 1) == 1:
            out_h, out_w = _output_shape(model, outer)[1:3]
            gemms.append({"name": layer.name, "kind": kind,
                          "weights": np.ascontiguousarray(w.reshape(-1, w.shape[-1]).T),
                          "columns": int(out_h) * int(out_w) * batch})
        else:
            skipped.append(f"{layer.name} ({kind})")
    return gemms, skipped


def _output_shape(model, layer):
    """A layer's output shape; a Sequential model loaded from .h5 may have no call history,
    then the shapes are propagated from the model's input shape."""
    try:
        return layer.output_shape
    except AttributeError:
        shape = model.input_shape
        for each in model.layers:
            shape = tuple(each.compute_output_shape(shape))
            if each is layer:
                return shape
        raise


def _flat_layers(model):
    for layer in model.layers:
        if hasattr(layer, "layers") and not hasattr(layer, "layer"):
            yield from _flat_layers(layer)
        else:
            yield layer


def _one_thread():
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return nullcontext(), False
    return threadpool_limits(limits=1), True


def time_gemm(weights: np.ndarray, columns: int, *, seed: int = 0, **timing) -> dict[str, Any]:
    """Dense vs CSR time for weights (rows x depth) times a random (depth x columns) matrix."""
    from scipy import sparse

    rows, depth = weights.shape
    x = np.random.default_rng(seed).standard_normal((depth, columns)).astype(np.float32)
    csr = sparse.csr_array(weights)
    y_dense, y_csr = np.empty((rows, columns), np.float32), np.zeros((rows, columns), np.float32)
    spmm = _raw_csr(csr, x, y_csr) or (lambda: csr @ x)
    y_csr[:] = 0
    out = spmm()
    if not np.allclose(y_csr if out is None else out, weights @ x, rtol=1e-4, atol=1e-4):
        raise AssertionError("CSR and dense products differ: the reference kernel is broken")
    dense = measure_latency(lambda: np.matmul(weights, x, out=y_dense), **timing)
    sparse_t = measure_latency(spmm, **timing)
    nnz = int(csr.nnz)
    return {"rows": rows, "depth": depth, "columns": columns, "nnz": nnz,
            "sparsity": 1 - nnz / weights.size if weights.size else 0.0,
            "dense_flops": 2 * rows * depth * columns, "sparse_flops": 2 * nnz * columns,
            "dense_p50_ms": dense["p50_ms"], "csr_p50_ms": sparse_t["p50_ms"],
            "ratio": dense["p50_ms"] / sparse_t["p50_ms"] if sparse_t["p50_ms"] else None}


def _raw_csr(csr, x: np.ndarray, y: np.ndarray):
    """scipy's C++ CSR kernel called directly (y += A @ x), without the few microseconds of
    Python checks that `csr @ x` adds per call and that would swamp small layers; None when
    this scipy lacks it (then `csr @ x` is timed)."""
    try:
        from scipy.sparse import _sparsetools as st
    except ImportError:
        return None
    rows, depth = csr.shape
    args = (csr.indptr, csr.indices, csr.data, x.ravel(), y.ravel())
    if x.shape[1] == 1:
        return lambda: st.csr_matvec(rows, depth, *args)
    return lambda: st.csr_matvecs(rows, depth, x.shape[1], *args)


def csr_reference(model_or_path, *, batch: int = 1, warmup: int = 5, min_runs: int = 20,
                  min_seconds: float = 0.2) -> dict[str, Any]:
    """Per-layer and whole-model dense/CSR timings of a Keras model's weight GEMMs (see the
    module docstring). `model_or_path`: a Keras model or a .h5/.keras path."""
    if isinstance(model_or_path, (str, Path)):
        if not Path(model_or_path).exists():
            raise ConfigError(f"csr_reference: {model_or_path} does not exist; fix: check the path")
        from slimpipe.pipeline.kerasio import load_keras

        model = load_keras(Path(model_or_path))
    else:
        model = model_or_path
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise ConfigError(f"csr_reference: batch must be an integer >= 1. Received: batch={batch!r}")
    gemms, skipped = gemm_operands(model, batch)
    limit, controlled = _one_thread()
    timing = {"warmup": warmup, "min_runs": min_runs, "min_seconds": min_seconds}
    with limit:
        layers = [{"name": g["name"], "kind": g["kind"],
                   **time_gemm(g["weights"], g["columns"], **timing)} for g in gemms]
    for layer in layers:  # a runtime would only pick the sparse kernel for sparse layers
        layer["kernel_used"] = "csr" if layer["sparsity"] >= SPARSE_MIN else "dense"
    csr = [l["kernel_used"] == "csr" for l in layers]
    dense_ms = sum(l["dense_p50_ms"] for l in layers)
    csr_ms = sum(l["csr_p50_ms"] if c else l["dense_p50_ms"] for l, c in zip(layers, csr))
    dense_flops = sum(l["dense_flops"] for l in layers)
    sparse_flops = sum(l["sparse_flops"] if c else l["dense_flops"] for l, c in zip(layers, csr))
    return {
        "kernel": "scipy.sparse CSR (csr_matvec/csr_matvecs) vs numpy dense matmul (float32)",
        "threads": 1, "blas_threads_controlled": controlled, "batch": batch,
        "layers": layers, "skipped": skipped,
        "dense_ms": dense_ms, "csr_ms": csr_ms, "ratio": dense_ms / csr_ms if csr_ms else None,
        "dense_flops": dense_flops, "sparse_flops": sparse_flops,
        "flop_ratio": dense_flops / sparse_flops if sparse_flops else None,
        "note": None if controlled else "threadpoolctl is not installed: BLAS may use several threads",
    }
