"""Input range: detecting a model's own preprocessing, and the baseline check that catches a
model fed the wrong range (a real model trained here on Fashion-MNIST)."""
import re
from pathlib import Path

import numpy as np
import pytest

import slimpipe.pipeline  # noqa: F401  (legacy Keras before TensorFlow)
from slimpipe.pipeline.data import IDX_FILES, Dataset, load_dataset
from slimpipe.pipeline.data.input_range import check_baseline, choose_input_range, detect_input_range
from slimpipe.pipeline.errors import ConfigError
from slimpipe.pipeline.runner import data_fingerprint

FASHION = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(not (FASHION / IDX_FILES[0]).is_file(),
                                   reason="real Fashion-MNIST absent: apt-get install dataset-fashion-mnist")


def model_of(*layers, shape=(28, 28, 1)):
    import tf_keras as keras

    return keras.Sequential([keras.layers.Input(shape), *layers, keras.layers.Flatten(),
                             keras.layers.Dense(10)])


CASES = {"rescale_255": "0-255", "rescale_minus1_1": "0-255", "rescale_unit_to_pm1": "0-1",
         "augment_then_rescale": "0-255", "resize_then_rescale": "0-255", "normalization_raw": "0-255",
         "normalization_unit": "0-1", "conv_first": None, "none": None}


def layers_for(case):
    import tf_keras as keras

    L = keras.layers
    if case.startswith("normalization"):
        layer = L.Normalization()
        raw = np.random.default_rng(0).uniform(0, 255, (16, 28, 28, 1)).astype(np.float32)
        layer.adapt(raw if case == "normalization_raw" else raw / 255)
        return [layer]
    return {
        "rescale_255": lambda: [L.Rescaling(1 / 255)],
        "rescale_minus1_1": lambda: [L.Rescaling(1 / 127.5, offset=-1)],
        "rescale_unit_to_pm1": lambda: [L.Rescaling(2.0, offset=-1)],
        "augment_then_rescale": lambda: [keras.Sequential([L.RandomFlip("horizontal"), L.RandomRotation(0.1)]),
                                         L.Rescaling(1 / 255)],
        "resize_then_rescale": lambda: [L.Resizing(32, 32), L.Rescaling(1 / 255)],
        "conv_first": lambda: [L.Conv2D(4, 3), L.Rescaling(1 / 255)],
        "none": lambda: [],
    }[case]()


@pytest.mark.parametrize("case, expected", list(CASES.items()))
def test_detect_input_range(case, expected):
    model = model_of(*layers_for(case))
    detected, why = detect_input_range(model)
    assert detected == expected, why
    if expected:
        assert ("Rescaling" in why or "Normalization" in why) and "\n" not in why
        assert choose_input_range(model, "auto") == (expected, f"detected: {why}")
    else:
        assert choose_input_range(model, "auto")[0] == "0-1"
    assert choose_input_range(model, "0-255") == ("0-255", "--input-range 0-255")


def test_input_range_rescales_in_memory_data_and_changes_the_fingerprint():
    x = (np.arange(2 * 4 * 4, dtype=np.float32).reshape(2, 4, 4, 1) % 256) / np.float32(255)
    ds = Dataset("t", x, np.array([0, 1]), x, np.array([1, 0]), labels=("a", "b"))
    raw = ds.with_input_range("0-255", "--input-range 0-255")
    np.testing.assert_allclose(raw.x_test, x * 255, rtol=1e-6)
    assert raw.normalization == {"scale": 1.0, "offset": 0.0} and raw.input_range == "0-255"
    assert raw.record()["input_range"] == "0-255"
    assert raw.record()["input_range_source"] == "--input-range 0-255"
    assert data_fingerprint(raw) != data_fingerprint(ds)
    same = ds.with_input_range("0-1", "default")
    assert same.x_train is ds.x_train and data_fingerprint(same) == data_fingerprint(ds)
    floats = Dataset("npz:f", x, np.array([0, 1]), x, np.array([1, 0]), ("a", "b"), input_range="as stored")
    with pytest.raises(ConfigError, match="float images, which are used as stored"):
        floats.with_input_range("0-255", "detected")


@pytest.fixture(scope="module")
def rescaling_model():
    """A linear classifier with Rescaling(1/255) at its input, trained on raw 0-255 pixels."""
    import tf_keras as keras

    train = load_dataset("fashion_mnist", data_dir=FASHION, limit=3000)
    keras.utils.set_random_seed(0)
    model = model_of(keras.layers.Rescaling(1 / 255))
    model.compile(keras.optimizers.Adam(1e-2),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.fit(train.x_train * 255, train.y_train, epochs=3, batch_size=64, verbose=0)
    return model


@needs_fashion
def test_baseline_check_catches_the_wrong_range(rescaling_model):
    data = load_dataset("fashion_mnist", data_dir=FASHION, limit=100)
    good = data.with_input_range(*choose_input_range(rescaling_model, "auto"))
    result = check_baseline(rescaling_model, good)
    assert result["input_range"] == "0-255" and result["examples"] == 300 and result["accuracy"] > 0.6
    wrong = data.with_input_range("0-1", "--input-range 0-1")
    with pytest.raises(ConfigError, match=r"model scores \d+% on 300 test images of 'fashion_mnist' with "
                                          r"input range 0-1 \(--input-range 0-1\), where chance is 10%, but "
                                          r"\d+% with input range 0-255: .*pass --input-range 0-255") as info:
        check_baseline(rescaling_model, wrong)
    assert "\n" not in str(info.value)


@needs_fashion
def test_baseline_check_warns_about_a_model_that_learned_nothing():
    import tf_keras as keras

    data = load_dataset("fashion_mnist", data_dir=FASHION, limit=100)
    blank = keras.Sequential([keras.layers.Input((28, 28, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(10, kernel_initializer="zeros")])  # one class for all
    # Neither range does better: not a range problem, so the run goes on, with the warning
    # (an architecture handed over for training looks exactly like this).
    result = check_baseline(blank, data.with_input_range("0-1", "default"), examples=200)
    assert result["accuracy"] == pytest.approx(0.1)
    assert re.search(r"scores 10% on 200 test images .* and 10% with input range 0-255: it looks untrained",
                     result["warning"])
