"""The size floor: non-zeros x bits per weight (fewer bits for few distinct values) plus index
overhead, measured from the file; a real file is never smaller than its floor."""
import slimpipe.pipeline  # noqa: F401

import gzip

import numpy as np
import pytest

from slimpipe.benchmarks.sparsity import size_floor_bytes, weight_sparsity


def _dense_model(kernel):
    import tf_keras as keras

    model = keras.Sequential([keras.layers.Input((kernel.shape[0],)),
                              keras.layers.Dense(kernel.shape[1], name="d")])
    model.get_layer("d").set_weights([kernel.astype(np.float32), np.zeros(kernel.shape[1], np.float32)])
    return model


def _layers(kernel, tmp_path, fmt="keras"):
    from slimpipe.exporters.tflite import export_tflite
    from slimpipe.pipeline.kerasio import save_keras

    model = _dense_model(kernel)
    path = (save_keras(model, tmp_path / "m.h5") if fmt == "keras"
            else export_tflite(model, tmp_path / "m.tflite"))
    return weight_sparsity(path, fmt)["layers"], path


def test_counts_bits_and_distinct_values(tmp_path):
    kernel = np.array([[0, 1.5], [0, 0], [2.5, 1.5]])
    layers, _ = _layers(kernel, tmp_path)
    assert [(l["bits"], l["distinct"], l["zeros"]) for l in layers] == [(32, 2, 3)]


def test_dense_random_float_costs_its_full_width(tmp_path):
    kernel = np.random.default_rng(0).normal(size=(64, 32))
    layers, _ = _layers(kernel, tmp_path)
    assert size_floor_bytes(layers) == 64 * 32 * 4


def test_few_distinct_values_and_zeros_lower_the_floor(tmp_path):
    rng = np.random.default_rng(0)
    dense = rng.normal(size=(64, 32))
    clustered = rng.choice(np.linspace(-1, 1, 16), size=(64, 32))
    sparse = clustered * (rng.random((64, 32)) < 0.1)
    floors = [size_floor_bytes(_layers(k, tmp_path)[0]) for k in (dense, clustered, sparse)]
    assert floors[0] > floors[1] > floors[2]
    # 16 values need 4 bits a weight, plus a 16-entry float codebook.
    assert floors[1] == pytest.approx(64 * 32 * 4 / 8 + 16 * 4, abs=1)


def test_a_real_file_is_not_smaller_than_its_floor(tmp_path):
    rng = np.random.default_rng(1)
    kernel = rng.choice(np.linspace(-1, 1, 8), size=(128, 64)) * (rng.random((128, 64)) < 0.2)
    layers, path = _layers(kernel, tmp_path, fmt="tflite")
    floor = size_floor_bytes(layers)
    assert 0 < floor <= len(gzip.compress(path.read_bytes(), 9)) <= path.stat().st_size


def test_missing_counts_give_no_floor():
    assert size_floor_bytes([]) is None
    assert size_floor_bytes([{"name": "w", "params": 4, "zeros": 0}]) is None


def test_a_few_zeros_are_cheaper_stored_dense():
    few = [{"name": "w", "params": 4096, "zeros": 40, "bits": 8, "distinct": 255}]
    many = [{"name": "w", "params": 4096, "zeros": 3686, "bits": 8, "distinct": 255}]
    assert size_floor_bytes(few) == 4096  # 8 bits a weight, no index
    # 410 non-zeros x 8 bits + a 4096-bit bitmap, plus the 255-value codebook not being cheaper
    assert size_floor_bytes(many) == (410 * 8 + 4096) // 8
