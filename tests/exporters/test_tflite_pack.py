"""Buffer alignment of the TFLite files slimpipe writes: the schema asks 16 bytes for buffer data
(`data:[ubyte] (force_align: 16)`); every file slimpipe re-packs (sparse layouts, stripped names,
embedded bundle metadata) keeps it, and runs exactly as the converter's own file."""
import numpy as np
import pytest

from slimpipe.exporters.bundle import build_metadata
from slimpipe.exporters.bundle_tflite import embed_tflite_metadata
from slimpipe.exporters.tflite import export_tflite
from slimpipe.exporters.tflite_pack import ALIGNMENT, buffer_offsets


@pytest.fixture(scope="module")
def sparse_model():
    import tf_keras as keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.layers.Input((12, 12, 1)), keras.layers.Conv2D(8, 3, name="conv"),
                              keras.layers.Flatten(), keras.layers.Dense(33, name="dense"),
                              keras.layers.Dense(4, name="logits")])
    weights = model.get_weights()
    for i in (0, 2):  # 90% zeros in the conv and dense kernels
        weights[i][np.abs(weights[i]) < np.quantile(np.abs(weights[i]), 0.9)] = 0
    model.set_weights(weights)
    return model


def outputs(data: bytes, x):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interp = Interpreter(model_content=data,
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interp.allocate_tensors()
    interp.set_tensor(interp.get_input_details()[0]["index"], x)
    interp.invoke()
    return interp.get_tensor(interp.get_output_details()[0]["index"])


@pytest.mark.parametrize("sparse, strip_names", [(True, False), (False, True), (True, True)])
def test_repacked_files_keep_16_byte_aligned_buffers_and_their_outputs(sparse_model, tmp_path, sparse,
                                                                        strip_names):
    repacked = export_tflite(sparse_model, tmp_path / "r.tflite", sparse=sparse, strip_names=strip_names,
                             sparse_layout="smallest").read_bytes()
    plain = export_tflite(sparse_model, tmp_path / "p.tflite", sparse=sparse, sparse_layout="converter"
                          ).read_bytes()
    offsets = buffer_offsets(repacked)
    assert offsets and all(start % ALIGNMENT == 0 for _, start, _ in offsets), offsets
    x = np.random.default_rng(0).random((1, 12, 12, 1), dtype=np.float32)
    assert np.array_equal(outputs(repacked, x), outputs(plain, x))


def test_the_generated_object_api_alone_aligns_to_4_bytes_only(sparse_model, tmp_path):
    # Why slimpipe packs buffers itself: flatbuffer_utils' round trip leaves data 4-byte aligned.
    from tensorflow.lite.tools import flatbuffer_utils

    data = export_tflite(sparse_model, tmp_path / "p.tflite").read_bytes()
    round_trip = bytes(flatbuffer_utils.convert_object_to_bytearray(
        flatbuffer_utils.convert_bytearray_to_object(bytearray(data))))
    starts = [start for _, start, _ in buffer_offsets(round_trip)]
    assert all(s % 4 == 0 for s in starts) and any(s % ALIGNMENT for s in starts)


def test_bundle_metadata_keeps_buffers_aligned(sparse_model, tmp_path):
    path = export_tflite(sparse_model, tmp_path / "p.tflite")
    labels = ["a", "b", "c", "d"]
    meta = build_metadata(path, labels=labels, normalization={"scale": 1 / 255, "offset": 0.0})
    embedded = embed_tflite_metadata(path.read_bytes(), meta, labels)
    assert all(start % ALIGNMENT == 0 for _, start, _ in buffer_offsets(embedded))
