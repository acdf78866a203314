"""Store a .tflite file's sparse weight tensors in their smallest layout.

The converter's `Optimize.EXPERIMENTAL_SPARSITY` stores a mostly-zero constant that an op cannot
take sparse as its non-zeros plus a CSR index (every dimension dense but the last, in the
tensor's own order) behind a DENSIFY op, which rebuilds the dense tensor when the model is
prepared. The format allows any traversal order of the dimensions, and the order decides the
index cost: a [128, 576] Dense kernel indexed along its 576 inputs needs uint16 indices, along
its 128 outputs uint8 ones; a conv kernel [64, 3, 3, 32] has 576 rows of 32 inputs, or 288 rows
of 64 outputs (half the segment array).

`smallest_sparse_layout` tries every traversal order of each such tensor (all levels dense but
the last, which is CSR; no block map) and keeps the one whose arrays gzip smallest without
growing the raw file. The same weights come back out of DENSIFY, so the model computes exactly
what it did (`export_tflite` checks this by running both files on the same inputs). Tensors an
op reads sparse itself (block-sparse FULLY_CONNECTED) and layouts with block maps or several
sparse levels are left as the converter wrote them.

>>> data, changes = smallest_sparse_layout(Path("out/clustered.int8.per-tensor.sparse.tflite").read_bytes())
>>> [(c["shape"], c["from"], c["to"], c["bytes_saved"], c["gzip_saved"]) for c in changes]
[([64, 3, 3, 32], [0, 1, 2, 3], [3, 1, 2, 0], 576, 339),
 ([64, 3, 3, 64], [0, 1, 2, 3], [0, 2, 1, 3], 0, 3),
 ([128, 576], [0, 1], [1, 0], 2053, 666)]
"""
from __future__ import annotations

import itertools
import zlib

import numpy as np

from slimpipe.exporters.tflite_pack import pack_model

DENSE, SPARSE_CSR = 0, 1
_MAX_PERMUTED_RANK = 4  # 24 orders; higher ranks try their own order and its reverse only


def _gzip_len(*arrays: np.ndarray) -> int:
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    return sum(len(comp.compress(np.ascontiguousarray(a).tobytes())) for a in arrays) + len(comp.flush())


def _index_vector(schema, values: np.ndarray):
    """The narrowest SparseIndexVector (uint8, uint16, int32) that holds `values`."""
    top = int(values.max()) if values.size else 0
    for kind, cls, dtype, limit in ((schema.SparseIndexVector.Uint8Vector, schema.Uint8VectorT, np.uint8, 1 << 8),
                                    (schema.SparseIndexVector.Uint16Vector, schema.Uint16VectorT, np.uint16, 1 << 16),
                                    (schema.SparseIndexVector.Int32Vector, schema.Int32VectorT, np.int32, 1 << 31)):
        if top < limit:
            vec = cls()
            vec.values = values.astype(dtype)
            return kind, vec
    raise ValueError(f"sparse index {top} does not fit in int32")


def csr_layout(sparsity) -> list[int] | None:
    """The traversal order of a one-level CSR layout (every level dense but the last, no block
    map), or None for any other layout."""
    if sparsity is None or sparsity.dimMetadata is None or len(sparsity.dimMetadata) == 0:
        return None
    if sparsity.blockMap is not None and len(sparsity.blockMap):
        return None
    if sparsity.traversalOrder is None or len(sparsity.traversalOrder) != len(sparsity.dimMetadata):
        return None
    last = sparsity.dimMetadata[-1]
    if last.arraySegments is None or last.arrayIndices is None:
        return None
    formats = [d.format for d in sparsity.dimMetadata]
    order = [int(t) for t in sparsity.traversalOrder]
    if formats[-1] != SPARSE_CSR or any(f != DENSE for f in formats[:-1]):
        return None
    if sorted(order) != list(range(len(formats))):
        return None
    return order


def decode_csr(sparsity, values: np.ndarray, shape) -> np.ndarray:
    """The dense tensor of a one-level CSR layout (see csr_layout); `values` as stored."""
    order = csr_layout(sparsity)
    if order is None:
        raise ValueError("decode_csr: not a one-level CSR layout without a block map")
    shape = tuple(int(s) for s in shape)
    permuted = tuple(shape[d] for d in order)
    rows = int(np.prod(permuted[:-1], dtype=np.int64))
    last = sparsity.dimMetadata[-1]
    seg = np.asarray(last.arraySegments.values, dtype=np.int64)
    idx = np.asarray(last.arrayIndices.values, dtype=np.int64)
    if (len(seg) != rows + 1 or seg[0] != 0 or seg[-1] != len(idx) or len(idx) != len(values)
            or np.any(np.diff(seg) < 0) or (idx.size and (idx.min() < 0 or idx.max() >= permuted[-1]))):
        raise ValueError("decode_csr: segments and indices do not match the tensor's shape")
    flat = np.zeros((rows, permuted[-1]), dtype=values.dtype)
    flat[np.repeat(np.arange(rows), np.diff(seg)), idx] = values
    return flat.reshape(permuted).transpose(np.argsort(order))


def encode_csr(schema, dense: np.ndarray, order) -> tuple[object, np.ndarray]:
    """SparsityParametersT and stored values for `dense` in traversal `order`, every level dense
    but the last (CSR). Zero means all bits zero (the dtype's unsigned view)."""
    order = [int(o) for o in order]
    permuted = dense.transpose(order)
    flat = permuted.reshape(-1, permuted.shape[-1])
    bits = flat.view(np.dtype(f"u{flat.dtype.itemsize}"))
    keep = bits != 0
    dims = []
    for size in permuted.shape[:-1]:
        dm = schema.DimensionMetadataT()
        dm.format, dm.denseSize = DENSE, int(size)
        dims.append(dm)
    last = schema.DimensionMetadataT()
    last.format = SPARSE_CSR
    seg = np.concatenate([[0], np.cumsum(keep.sum(axis=1))]).astype(np.int64)
    last.arraySegmentsType, last.arraySegments = _index_vector(schema, seg)
    last.arrayIndicesType, last.arrayIndices = _index_vector(schema, np.nonzero(keep)[1].astype(np.int64))
    dims.append(last)
    sp = schema.SparsityParametersT()
    sp.traversalOrder, sp.blockMap, sp.dimMetadata = order, None, dims
    return sp, np.ascontiguousarray(flat[keep])


def _stored_bytes(sparsity, values: np.ndarray) -> tuple[int, int]:
    last = sparsity.dimMetadata[-1]
    seg, idx = np.asarray(last.arraySegments.values), np.asarray(last.arrayIndices.values)
    return (values.nbytes + seg.nbytes + idx.nbytes, _gzip_len(values, seg, idx))


def _orders(rank: int):
    if rank <= _MAX_PERMUTED_RANK:
        return itertools.permutations(range(rank))
    return [tuple(range(rank)), tuple(reversed(range(rank)))]


_VALUE_DTYPES = {"FLOAT32": np.float32, "FLOAT16": np.float16, "INT8": np.int8, "UINT8": np.uint8,
                 "INT16": np.int16, "INT32": np.int32}


def smallest_sparse_layout(flatbuffer: bytes) -> tuple[bytes, list[dict]]:
    """The file with each DENSIFY-fed one-level CSR tensor in the traversal order whose stored
    arrays (values, segments, indices) gzip smallest without more raw bytes, and one record per
    tensor it changed. Returns the input unchanged (and []) when nothing gets smaller."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
    builtin = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    types = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    changes = []
    for sg_index, graph in enumerate(model.subgraphs or []):
        readers: dict[int, set[str]] = {}
        for op in graph.operators or []:
            code = model.operatorCodes[op.opcodeIndex]
            name = builtin.get(max(code.builtinCode, code.deprecatedBuiltinCode), "?")
            for i in (op.inputs if op.inputs is not None else []):
                readers.setdefault(int(i), set()).add(name)
        for t_index, tensor in enumerate(graph.tensors or []):
            order = csr_layout(tensor.sparsity)
            dtype = _VALUE_DTYPES.get(types.get(tensor.type, ""))
            if order is None or dtype is None or readers.get(t_index) != {"DENSIFY"}:
                continue
            buffer = model.buffers[tensor.buffer]
            if buffer.data is None:
                continue
            values = np.frombuffer(bytes(np.asarray(buffer.data, dtype=np.uint8)), dtype=dtype)
            try:
                dense = decode_csr(tensor.sparsity, values, tensor.shape)
            except ValueError:
                continue
            own_sp, own_values = encode_csr(schema, dense, order)
            if not (np.array_equal(own_values.view(np.uint8), values.view(np.uint8))
                    and _same_arrays(own_sp, tensor.sparsity)):
                continue  # we would not reproduce the converter's arrays: leave the tensor alone
            raw0, gz0 = _stored_bytes(tensor.sparsity, values)
            best = (gz0, raw0, order, None, None)
            for cand in _orders(dense.ndim):
                if list(cand) == order:
                    continue
                sp, vals = encode_csr(schema, dense, cand)
                raw, gz = _stored_bytes(sp, vals)
                if raw <= raw0 and (gz, raw) < best[:2]:
                    best = (gz, raw, list(cand), sp, vals)
            if best[3] is None:
                continue
            tensor.sparsity = best[3]
            buffer.data = np.frombuffer(best[4].tobytes(), dtype=np.uint8)
            changes.append({"subgraph": sg_index, "tensor": t_index,
                            "name": tensor.name.decode() if isinstance(tensor.name, bytes) else tensor.name,
                            "shape": [int(s) for s in tensor.shape], "from": order, "to": best[2],
                            "bytes_saved": raw0 - best[1], "gzip_saved": gz0 - best[0]})
    if not changes:
        return bytes(flatbuffer), []
    return pack_model(model), changes


def _same_arrays(a, b) -> bool:
    for x, y in zip(a.dimMetadata, b.dimMetadata):
        if x.format != y.format or (x.format == DENSE and x.denseSize != y.denseSize):
            return False
        if x.format == SPARSE_CSR:
            for (tx, vx), (ty, vy) in (((x.arraySegmentsType, x.arraySegments), (y.arraySegmentsType, y.arraySegments)),
                                       ((x.arrayIndicesType, x.arrayIndices), (y.arrayIndicesType, y.arrayIndices))):
                if tx != ty or not np.array_equal(np.asarray(vx.values), np.asarray(vy.values)):
                    return False
    return len(a.dimMetadata) == len(b.dimMetadata)


def sparse_orders(path) -> list[dict]:
    """Shape and traversal order of each one-level CSR tensor in a .tflite file (what the
    report records of a sparse file's layout)."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(str(path))
    return [{"shape": [int(s) for s in tensor.shape], "order": order}
            for graph in model.subgraphs or [] for tensor in graph.tensors or []
            if (order := csr_layout(tensor.sparsity)) is not None]
