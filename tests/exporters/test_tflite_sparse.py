"""exporters.tflite_sparse: the CSR codec, and export_tflite's smallest sparse layout."""
import gzip
import itertools
import warnings

import slimpipe.pipeline  # noqa: F401

import numpy as np
import pytest

from slimpipe.benchmarks.runtimes import open_runtime
from slimpipe.exporters import tflite_sparse
from slimpipe.exporters.tflite import export_tflite
from slimpipe.exporters.tflite_sparse import csr_layout, decode_csr, encode_csr, smallest_sparse_layout


def _schema():
    from tensorflow.lite.python import schema_py_generated as schema
    return schema


def _sparse_array(rng, shape, dtype, density=0.15):
    values = rng.integers(1, 60, size=shape) * rng.choice([-1, 1], size=shape)
    return np.where(rng.random(shape) < density, values, 0).astype(dtype)


@pytest.mark.parametrize("shape,dtype", [((16, 3, 3, 8), np.int8), ((24, 300), np.float32),
                                          ((5, 2, 7), np.float16)])
def test_every_traversal_order_round_trips(shape, dtype):
    schema = _schema()
    dense = _sparse_array(np.random.default_rng(1), shape, dtype)
    nnz = int(np.count_nonzero(dense))
    for order in itertools.permutations(range(len(shape))):
        sp, values = encode_csr(schema, dense, order)
        assert csr_layout(sp) == list(order) and len(values) == nnz and np.all(values != 0)
        assert np.array_equal(decode_csr(sp, values, shape), dense)
        last = sp.dimMetadata[-1]
        inner = shape[order[-1]]  # indices run along the innermost dimension: narrowest type
        assert last.arrayIndicesType == (3 if inner <= 256 else 2)
        assert [d.denseSize for d in sp.dimMetadata[:-1]] == [shape[o] for o in order[:-1]]


def test_layouts_other_than_one_level_csr_are_not_ours():
    schema = _schema()
    sp, values = encode_csr(schema, _sparse_array(np.random.default_rng(2), (4, 8), np.int8), [0, 1])
    assert csr_layout(sp) == [0, 1]
    sp.blockMap = [1]
    assert csr_layout(sp) is None  # block-sparse (e.g. FULLY_CONNECTED's own 1x16 kernels)
    sp.blockMap = None
    sp.dimMetadata[0].format = 1
    assert csr_layout(sp) is None  # two CSR levels
    assert csr_layout(None) is None
    sp.dimMetadata[0].format = 0
    sp.dimMetadata[-1].arrayIndices = None
    assert csr_layout(sp) is None  # no index array
    with pytest.raises(ValueError, match="one-level CSR"):
        decode_csr(sp, values, (4, 8))


def _sparse_model():
    """conv [16, 3, 3, 8] and dense [24, 300] kernels at ~88% zeros: a dense kernel with more
    than 256 inputs needs uint16 indices in the converter's layout."""
    import tf_keras as keras

    model = keras.Sequential([
        keras.layers.Input((12, 12, 8)),
        keras.layers.Conv2D(16, 3, activation="relu", name="conv"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Flatten(),  # 5 x 5 x 16 = 400 inputs
        keras.layers.Dense(24, activation="relu", name="fc"),
        keras.layers.Dense(4, name="logits"),
    ])
    rng = np.random.default_rng(3)
    for name in ("conv", "fc"):
        kernel, bias = model.get_layer(name).get_weights()
        mask = rng.random(kernel.shape) < 0.12
        model.get_layer(name).set_weights([np.where(mask, rng.standard_normal(kernel.shape) * 0.3, 0)
                                           .astype(np.float32), bias + 0.01])
    return model


def _sparse_tensors(path):
    """{shape: (traversal order, index dtype code, dense weights)} of the DENSIFY-fed tensors."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(str(path))
    found = {}
    for tensor in model.subgraphs[0].tensors:
        if tensor.sparsity is None:
            continue
        dtype = {0: np.float32, 9: np.int8}[tensor.type]
        values = np.frombuffer(bytes(np.asarray(model.buffers[tensor.buffer].data, np.uint8)), dtype)
        found[tuple(int(s) for s in tensor.shape)] = (
            csr_layout(tensor.sparsity), tensor.sparsity.dimMetadata[-1].arrayIndicesType,
            decode_csr(tensor.sparsity, values, tensor.shape))
    return found


@pytest.mark.parametrize("mode", ["float32", "int8"])
def test_smallest_layout_is_smaller_and_computes_the_same(mode, tmp_path):
    model = _sparse_model()
    x = np.random.default_rng(4).standard_normal((64, 12, 12, 8)).astype(np.float32)
    rep = {"representative": x[:32]} if mode == "int8" else {}
    plain = export_tflite(model, tmp_path / "converter.tflite", mode=mode, sparse=True,
                          sparse_layout="converter", **rep)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # the rewrite was kept, not reverted
        small = export_tflite(model, tmp_path / "smallest.tflite", mode=mode, sparse=True, **rep)
    a, b = plain.read_bytes(), small.read_bytes()
    assert len(b) < len(a) and len(gzip.compress(b, 9)) < len(gzip.compress(a, 9))

    before, after = _sparse_tensors(plain), _sparse_tensors(small)
    assert set(before) == set(after) == {(16, 3, 3, 8), (24, 400)}
    assert before[(24, 400)][:2] == ([0, 1], 2)  # converter: rows of 400 inputs, uint16 indices
    assert after[(24, 400)][:2] == ([1, 0], 3)  # rows of 24 outputs: uint8 indices
    for shape in before:  # the same weights come out of DENSIFY
        assert np.array_equal(before[shape][2], after[shape][2])
        assert np.count_nonzero(after[shape][2]) < 0.2 * after[shape][2].size

    for resolver in ("default", "builtin"):
        ra, rb = (open_runtime(p, "tflite", resolver=resolver) for p in (plain, small))
        ya = np.concatenate([ra.predict(x[i:i + 1]) for i in range(len(x))])
        yb = np.concatenate([rb.predict(x[i:i + 1]) for i in range(len(x))])
        assert np.array_equal(ya, yb) and np.ptp(ya) > 0


def test_the_converters_own_arrays_are_reproduced_before_anything_changes(tmp_path):
    schema = _schema()
    path = export_tflite(_sparse_model(), tmp_path / "c.tflite", sparse=True, sparse_layout="converter")
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(str(path))
    checked = 0
    for tensor in model.subgraphs[0].tensors:
        if tensor.sparsity is None:
            continue
        values = np.frombuffer(bytes(np.asarray(model.buffers[tensor.buffer].data, np.uint8)), np.float32)
        dense = decode_csr(tensor.sparsity, values, tensor.shape)
        sp, again = encode_csr(schema, dense, csr_layout(tensor.sparsity))
        assert np.array_equal(again, values)
        for ours, theirs in zip(sp.dimMetadata, tensor.sparsity.dimMetadata):
            assert ours.format == theirs.format
            if ours.format == 1:
                assert ours.arrayIndicesType == theirs.arrayIndicesType
                assert np.array_equal(ours.arraySegments.values, theirs.arraySegments.values)
                assert np.array_equal(ours.arrayIndices.values, theirs.arrayIndices.values)
        checked += 1
    assert checked == 2
    assert smallest_sparse_layout(path.read_bytes())[1]  # and there is something to gain


def test_a_rewrite_that_changes_the_outputs_is_not_kept(tmp_path, monkeypatch):
    model = _sparse_model()
    plain = export_tflite(model, tmp_path / "converter.tflite", sparse=True, sparse_layout="converter")
    real = tflite_sparse.smallest_sparse_layout

    def corrupted(flatbuffer):
        from tensorflow.lite.tools import flatbuffer_utils

        data, changes = real(flatbuffer)
        obj = flatbuffer_utils.convert_bytearray_to_object(bytearray(data))
        tensor = obj.subgraphs[0].tensors[changes[0]["tensor"]]
        values = np.frombuffer(bytes(np.asarray(obj.buffers[tensor.buffer].data, np.uint8)), np.float32).copy()
        values[0] *= 2  # one stored weight changed
        obj.buffers[tensor.buffer].data = np.frombuffer(values.tobytes(), np.uint8)
        return bytes(flatbuffer_utils.convert_object_to_bytearray(obj)), changes

    monkeypatch.setattr(tflite_sparse, "smallest_sparse_layout", corrupted)
    with pytest.warns(RuntimeWarning, match="kept the converter's sparse layout"):
        kept = export_tflite(model, tmp_path / "smallest.tflite", sparse=True)
    assert kept.read_bytes() == plain.read_bytes()


def test_dense_exports_and_files_without_sparse_tensors_are_unchanged(tiny_model, tmp_path):
    dense = export_tflite(tiny_model, tmp_path / "dense.tflite", sparse=True)  # nothing mostly zero
    assert smallest_sparse_layout(dense.read_bytes()) == (dense.read_bytes(), [])
