"""Weight sparsity MEASURED from a model file, never taken from what a stage claims.

Counted: weight tensors of rank >= 2 (conv / dense kernels, embeddings) holding float or 8-bit
integer values. Biases, BatchNorm vectors and integer index/shape tensors are skipped. A weight
is zero when its stored value is 0 (float) or equals its zero point (quantized int8/uint8).

- keras (.h5): every float weight of rank >= 2 of the loaded model (tfmot pruning masks skipped).
- onnx: initializers / Constant nodes of rank >= 2 (tf2onnx may transpose them; counts don't
  change); int8 weights feeding a DequantizeLinear use its zero point; sparse initializers count
  their stored values against the dense shape.
- tflite: constant tensors read straight from the flatbuffer. A tensor stored in sparse format
  (`Optimize.EXPERIMENTAL_SPARSITY`) keeps only its stored values (non-zeros, or whole blocks for
  block sparsity) plus index arrays; its dense size is its shape, so
  zeros = dense size - stored values + stored values equal to the zero point. This is exact for
  both random and block sparsity, without running the DENSIFY op.

If something cannot be measured, `sparsity` is None and `note` says why.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

import slimpipe.pipeline  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from slimpipe.pipeline.errors import ConfigError

FORMATS = ("keras", "tflite", "onnx")
# A weight tensor with at least this fraction of zeros counts as sparse: the TFLite converter
# stores it sparse (its kMinSparsityLevel), the report compares it against its dense
# counterpart, and a runtime would pick a sparse kernel for it.
SPARSE_MIN = 0.3


def weight_sparsity(path, fmt: str) -> dict[str, Any]:
    """{"sparsity": float|None, "zeros": int, "params": int, "layers": [...]} (+ "note")."""
    path = Path(path)
    if fmt not in FORMATS:
        raise ConfigError(f"weight_sparsity: fmt must be one of {', '.join(FORMATS)}. Received: fmt={fmt!r}")
    if not path.exists():
        raise ConfigError(f"weight_sparsity: {path} does not exist; fix: check the path")
    notes: list[str] = []
    if fmt == "keras":
        layers = _keras_layers(path)
    elif fmt == "onnx":
        layers = _onnx_layers(path, notes)
    else:
        layers = _tflite_layers(path, notes)
    zeros = sum(layer["zeros"] for layer in layers)
    params = sum(layer["params"] for layer in layers)
    result: dict[str, Any] = {"sparsity": zeros / params if params else None,
                              "zeros": zeros, "params": params, "layers": layers}
    if not params:
        notes.insert(0, f"no weight tensors of rank >= 2 found in {path.name}")
    if notes:
        result["note"] = "; ".join(notes)
    return result


def _layer(name: str, params: int, zeros: int, values: np.ndarray | None = None,
           is_zero: np.ndarray | None = None, **extra) -> dict[str, Any]:
    """One weight tensor's counts; with its stored `values`, also the bits per stored value and
    the number of distinct non-zero values (what a size floor needs)."""
    out = {"name": name, "params": int(params), "zeros": int(zeros),
           "sparsity": zeros / params if params else 0.0, **extra}
    if values is not None:
        out["bits"] = int(np.asarray(values).dtype.itemsize * 8)
        values = np.asarray(values)
        out["distinct"] = int(np.unique(values[~(values == 0 if is_zero is None else is_zero)]).size)
    return out


def size_floor_bytes(layers: list[dict]) -> int | None:
    """A lower bound for storing these weight tensors: non-zeros x bits per weight plus index
    overhead, summed over tensors (rounded up to bytes).

    Bits per weight are the stored dtype's, or log2(distinct values) plus a codebook of the
    distinct values when that is cheaper (a clustered kernel of 16 values costs 4 bits a weight).
    A tensor with zeros is stored either dense (zero is one more value) or as its non-zeros plus
    where they are (the cheaper of a bitmap, 1 bit per weight, and one index of log2(size) bits
    per non-zero), whichever is smaller. None when a tensor lacks the counts.
    """
    if not layers or any("bits" not in layer for layer in layers):
        return None
    return math.ceil(sum(_tensor_floor_bits(l["params"], l["params"] - l["zeros"], l["bits"],
                                            l["distinct"]) for l in layers) / 8)


def _tensor_floor_bits(n: int, nnz: int, bits: int, distinct: int) -> int:
    """The cheaper of storing all n values (zero being one more value) and storing the nnz
    non-zeros plus where they are."""
    def values(count: int, kinds: int) -> int:
        coded = count * math.ceil(math.log2(kinds)) + kinds * bits if kinds > 1 else bits
        return min(count * bits, coded)

    dense = values(n, distinct + (nnz < n))
    if nnz == n:
        return dense
    where = min(n, nnz * max(1, math.ceil(math.log2(n))))
    return min(dense, values(nnz, max(distinct, 1)) + where)


def _is_weight_dtype(dtype: np.dtype) -> bool:
    return dtype.kind == "f" or dtype in (np.dtype(np.int8), np.dtype(np.uint8))


# -- keras ---------------------------------------------------------------------------------
def _keras_layers(path: Path) -> list[dict]:
    from slimpipe.pipeline.kerasio import load_keras

    model = load_keras(path)
    layers = []
    for w in model.weights:
        name = w.name.split(":")[0]
        if name.rsplit("/", 1)[-1].startswith("mask"):  # tfmot pruning mask, not a weight
            continue
        arr = np.asarray(w.numpy())
        if arr.ndim < 2 or not _is_weight_dtype(arr.dtype):
            continue
        layers.append(_layer(name, arr.size, int(np.count_nonzero(arr == 0)), arr))
    return layers


# -- onnx ----------------------------------------------------------------------------------
def _onnx_layers(path: Path, notes: list[str]) -> list[dict]:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    consts: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    consts[node.output[0]] = numpy_helper.to_array(attr.t)
    zero_points: dict[str, np.ndarray] = {}
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and len(node.input) >= 3 and node.input[2] in consts:
            zero_points[node.input[0]] = consts[node.input[2]]
    layers = []
    for name, arr in consts.items():
        if arr.ndim < 2 or not _is_weight_dtype(arr.dtype):
            continue
        zp = zero_points.get(name)
        if zp is None or arr.dtype.kind == "f":
            is_zero = arr == 0
        elif zp.size == 1:
            is_zero = arr == zp.reshape(())
        else:  # per-axis zero point: find the axis it runs along
            axes = [a for a in range(arr.ndim) if arr.shape[a] == zp.size]
            if not axes:
                notes.append(f"{name}: per-axis zero point of size {zp.size} matches no axis; skipped")
                continue
            shape = [1] * arr.ndim
            shape[axes[0]] = zp.size
            is_zero = arr == zp.reshape(shape)
        layers.append(_layer(name, arr.size, int(np.count_nonzero(is_zero)), arr, is_zero))
    for sp in graph.sparse_initializer:
        values = numpy_helper.to_array(sp.values)
        dense = math.prod(sp.dims)
        if len(sp.dims) < 2 or not _is_weight_dtype(values.dtype):
            continue
        layers.append(_layer(sp.values.name, dense, dense - values.size + np.count_nonzero(values == 0),
                             values, storage="sparse"))
    return layers


# -- tflite --------------------------------------------------------------------------------
def tflite_model(path: Path):
    """(schema module, Model, file bytes) of a .tflite file, read with LiteRT's flatbuffer schema."""
    from ai_edge_litert import schema_py_generated as schema

    data = Path(path).read_bytes()
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ConfigError(f"{path.name} is not a TFLite flatbuffer (no 'TFL3' identifier); "
                          f"fix: check the path and format")
    return schema, schema.Model.GetRootAs(data, 0), data


_TFLITE_DTYPES = {"FLOAT32": np.float32, "FLOAT16": np.float16, "FLOAT64": np.float64,
                  "INT8": np.int8, "UINT8": np.uint8}


def buffer_bytes(model, data: bytes, index: int) -> bytes:
    """The raw bytes of buffer `index` (inside the flatbuffer, or after it in the large-model layout)."""
    buf = model.Buffers(index)
    if buf is None:
        return b""
    offset, size = buf.Offset(), buf.Size()
    if offset > 1:  # large-model layout: data lives after the flatbuffer
        return data[offset:offset + size]
    arr = buf.DataAsNumpy()
    return arr.tobytes() if isinstance(arr, np.ndarray) else b""


def _tflite_layers(path: Path, notes: list[str]) -> list[dict]:
    schema, model, data = tflite_model(path)
    type_names = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    seen_buffers: set[int] = set()
    layers = []
    for s in range(model.SubgraphsLength()):
        graph = model.Subgraphs(s)
        for t in range(graph.TensorsLength()):
            tensor = graph.Tensors(t)
            name = tensor_name(tensor, t)
            shape = [int(d) for d in tensor.ShapeAsNumpy()] if tensor.ShapeLength() else []
            dtype = _TFLITE_DTYPES.get(type_names.get(tensor.Type(), ""))
            if len(shape) < 2 or dtype is None or tensor.Buffer() == 0:
                continue
            if tensor.Buffer() in seen_buffers:
                continue
            raw = buffer_bytes(model, data, tensor.Buffer())
            if not raw:
                if hasattr(tensor, "ExternalBuffer") and tensor.ExternalBuffer():
                    notes.append(f"{name}: weights in an external buffer were not measured")
                continue  # not a constant (activation / variable)
            seen_buffers.add(tensor.Buffer())
            values = np.frombuffer(raw, dtype=dtype)
            dense = math.prod(shape)
            zp = _zero_point(tensor)
            sparse = tensor.Sparsity() is not None
            if sparse:
                if zp is not None and zp.size > 1 and np.any(zp != zp.flat[0]):
                    notes.append(f"{name}: sparse storage with per-channel zero points not measured")
                    continue
                z = 0 if zp is None else zp.flat[0]
                is_zero = values == z
                zeros = dense - values.size + int(np.count_nonzero(is_zero))
            else:
                if values.size != dense:
                    notes.append(f"{name}: {values.size} stored values for shape {shape}; not measured")
                    continue
                values = values.reshape(shape)
                if zp is None or zp.size == 1:
                    is_zero = values == (0 if zp is None else zp.flat[0])
                else:
                    axis = tensor.Quantization().QuantizedDimension()
                    bshape = [1] * len(shape)
                    bshape[axis] = zp.size
                    is_zero = values == zp.reshape(bshape)
                zeros = int(np.count_nonzero(is_zero))
            layers.append(_layer(name, dense, zeros, values, is_zero,
                                 storage="sparse" if sparse else "dense"))
    return layers


def tensor_name(tensor, index: int) -> str:
    """A tensor's name, or "tensor<index>" in a file whose names were stripped."""
    return tensor.Name().decode("utf-8", "replace") if tensor.Name() else f"tensor{index}"


def _zero_point(tensor) -> np.ndarray | None:
    q = tensor.Quantization()
    if q is None or q.ZeroPointLength() == 0 or q.ScaleLength() == 0:
        return None
    return q.ZeroPointAsNumpy()


def tflite_sparse_tensors(path) -> list[str]:
    """Names of the tensors stored in sparse format (EXPERIMENTAL_SPARSITY) in a .tflite file."""
    _, model, _ = tflite_model(Path(path))
    names = []
    for s in range(model.SubgraphsLength()):
        graph = model.Subgraphs(s)
        for t in range(graph.TensorsLength()):
            tensor = graph.Tensors(t)
            if tensor.Sparsity() is not None:
                names.append(tensor_name(tensor, t))
    return names


def tflite_ops(path) -> list[str]:
    """Op names of every operator in the .tflite graph, in graph order (repeats kept), e.g.
    ["CONV_2D", "MAX_POOL_2D", "RESHAPE", "DENSIFY", "FULLY_CONNECTED", ...]. Custom ops
    appear by their custom code."""
    schema, model, _ = tflite_model(Path(path))
    builtin = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    codes = []
    for i in range(model.OperatorCodesLength()):
        oc = model.OperatorCodes(i)
        code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
        if builtin.get(code) == "CUSTOM" and oc.CustomCode():
            codes.append(oc.CustomCode().decode("utf-8", "replace"))
        else:
            codes.append(builtin.get(code, f"BUILTIN_{code}"))
    ops = []
    for s in range(model.SubgraphsLength()):
        graph = model.Subgraphs(s)
        for o in range(graph.OperatorsLength()):
            ops.append(codes[graph.Operators(o).OpcodeIndex()])
    return ops
