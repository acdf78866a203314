"""weight_sparsity / tflite_* on edge cases: nothing to measure, wrong files, wrong formats."""
import slimpipe.pipeline  # noqa: F401

import numpy as np
import pytest

from slimpipe.benchmarks.sparsity import tflite_ops, tflite_sparse_tensors, weight_sparsity
from slimpipe.pipeline.errors import ConfigError


def test_model_without_kernels_reports_none_with_a_note(tmp_path):
    import tf_keras as keras

    from slimpipe.exporters.tflite import export_tflite

    model = keras.Sequential([keras.layers.Input((4, 4, 1)), keras.layers.Flatten(),
                              keras.layers.Softmax()])
    path = export_tflite(model, tmp_path / "nokernel.tflite")
    res = weight_sparsity(path, "tflite")
    assert res["sparsity"] is None and res["params"] == 0 and res["layers"] == []
    assert "no weight tensors" in res["note"]
    assert tflite_sparse_tensors(path) == [] and "SOFTMAX" in tflite_ops(path)


def test_keras_counts_kernels_not_biases(tmp_path):
    import tf_keras as keras

    from slimpipe.pipeline.kerasio import save_keras

    model = keras.Sequential([keras.layers.Input((3,)), keras.layers.Dense(2, name="d")])
    model.get_layer("d").set_weights([np.array([[0, 1], [0, 0], [2, 3]], np.float32),
                                      np.zeros(2, np.float32)])
    res = weight_sparsity(save_keras(model, tmp_path / "d.h5"), "keras")
    assert (res["zeros"], res["params"]) == (3, 6) and res["sparsity"] == 0.5
    assert [l["name"] for l in res["layers"]] == ["d/kernel"]


def test_wrong_files_and_formats(tmp_path):
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"definitely not a flatbuffer")
    with pytest.raises(ConfigError, match="TFL3"):
        weight_sparsity(junk, "tflite")
    with pytest.raises(ConfigError, match="TFL3"):
        tflite_ops(junk)
    with pytest.raises(ConfigError, match="fmt"):
        weight_sparsity(junk, "pt")
    with pytest.raises(ConfigError, match="does not exist"):
        weight_sparsity(tmp_path / "missing.onnx", "onnx")
