"""pipeline.models: zoo builders (tiny widths), safe loading of user files, fit checks."""
import json
import zipfile

import numpy as np
import pytest

import slimpipe.pipeline  # noqa: F401  (legacy Keras before TensorFlow)
import tf_keras as keras
from slimpipe.pipeline.data import Dataset
from slimpipe.pipeline.errors import ConfigError
from slimpipe.pipeline.models import (MODELS, build_model, check_fit, load_user_model, output_is_probabilities,
                             resolve_model)

# Users do hand us .h5 files; tf_keras's advice to prefer .keras is noise here.
pytestmark = pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file")


def fake_data(shape=(28, 28, 1), classes=10, n=4):
    x = np.zeros((n, *shape), np.float32)
    y = np.arange(n) % classes
    return Dataset("fake", x, y, x, y, labels=tuple(str(i) for i in range(classes)))


# ---- builders -------------------------------------------------------------------------------

@pytest.mark.parametrize("name, shape, width", [
    ("cnn", (28, 28, 1), 0.25),
    ("vgg16", (28, 28, 1), 0.0625),
    ("vgg16", (32, 32, 3), 0.0625),
    ("mobilenet_v2", (32, 32, 3), 0.35),
    ("mobilenet_v2", (28, 28, 1), 0.35),
])
def test_builders_output_logits(name, shape, width):
    model = build_model(name, shape, 7, width=width)
    assert model.input_shape == (None, *shape) and model.output_shape == (None, 7)
    last = model.layers[-1]
    assert isinstance(last, keras.layers.Dense) and last.activation is keras.activations.linear
    assert not output_is_probabilities(model)
    out = model(np.random.default_rng(0).uniform(size=(2, *shape)).astype("float32"), training=False)
    assert out.shape == (2, 7)


def test_models_listing():
    assert set(MODELS) == {"cnn", "vgg16", "mobilenet_v2"}
    assert all("\n" not in v for v in MODELS.values())


def test_cnn_layers_and_width():
    model = build_model("cnn", (28, 28, 1), 10)
    names = [layer.name for layer in model.layers]
    for expected in ("conv1", "pool1", "conv2", "pool2", "conv3", "flatten", "fc1", "logits"):
        assert expected in names
    assert [model.get_layer(n).filters for n in ("conv1", "conv2", "conv3")] == [32, 64, 64]
    assert model.get_layer("fc1").units == 128
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers)
    half = build_model("cnn", (28, 28, 1), 10, width=0.5)
    assert half.get_layer("conv1").filters == 16 and half.count_params() < model.count_params() / 2
    assert build_model("cnn", (28, 28, 1), 10, width=0.001).get_layer("conv2").filters == 1


@pytest.mark.parametrize("width", [0.35, 1.0])
def test_mobilenet_v2_matches_keras_layer_for_layer(width):
    """Same parameters and layer names as keras.applications.MobileNetV2; only the stride-2
    padding differs (1 on each side, explicit), which keeps every shape."""
    ours = build_model("mobilenet_v2", (32, 32, 3), 10, width=width)
    ref = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=width, weights=None,
                                         classes=10, classifier_activation=None)
    assert ours.count_params() == ref.count_params()
    for layer in ref.layers:
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.BatchNormalization, keras.layers.Add)):
            assert ours.get_layer(layer.name).output_shape == layer.output_shape, layer.name
    pads = [l for l in ours.layers if isinstance(l, keras.layers.ZeroPadding2D)]
    assert len(pads) == 5 and all(p.padding == ((1, 1), (1, 1)) for p in pads)


def test_vgg16_structure():
    model = build_model("vgg16", (28, 28, 1), 10, width=0.0625)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert len(convs) == 13 and not any(c.use_bias for c in convs)
    assert [c.filters for c in convs] == [4, 4, 8, 8, 16, 16, 16, 32, 32, 32, 32, 32, 32]
    assert sum(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers) == 13
    for name in ("block1_conv1", "block1_bn1", "block1_relu1", "block3_conv3", "block5_pool", "fc1"):
        model.get_layer(name)
    assert model.get_layer("block5_pool").output_shape == (None, 1, 1, 32)  # 28→14→7→4→2→1
    assert model.get_layer("fc1").units == 32
    assert model.get_layer("dropout").rate == 0.5
    assert build_model("vgg16", (28, 28, 1), 10, width=0.125).count_params() > model.count_params()


def test_seed_makes_weights_reproducible():
    a = build_model("cnn", (28, 28, 1), 10, width=0.25, seed=1).get_weights()
    b = build_model("cnn", (28, 28, 1), 10, width=0.25, seed=1).get_weights()
    c = build_model("cnn", (28, 28, 1), 10, width=0.25, seed=2).get_weights()
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])


@pytest.mark.parametrize("name, shape, kwargs, match", [
    ("cnn", (12, 12, 1), {}, r"cnn needs images of at least 18x18, got 12x12"),
    ("cnn", (28, 28, 1), {"width": 0}, "width must be > 0"),
    ("cnn", (28, 28), {}, r"input_shape must be \(height, width, channels\)"),
    ("mobilenet_v2", (32, 32, 4), {}, "mobilenet_v2 takes 1- or 3-channel images, got 4"),
    ("vgg", (32, 32, 3), {}, "unknown model 'vgg': did you mean 'vgg16'"),
])
def test_build_errors(name, shape, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        build_model(name, shape, 10, **kwargs)


# ---- user files -----------------------------------------------------------------------------

def tiny_cnn():
    return build_model("cnn", (20, 20, 1), 3, width=0.125)


def save(model, path):
    if path.suffix == ".h5":
        model.save(path, save_format="h5")
    elif path.suffix == ".keras":
        model.save(path)
    else:
        model.save(path, save_format="tf")  # SavedModel directory
    return path


@pytest.mark.parametrize("filename", ["m.h5", "m.keras", "saved_model"])
def test_load_user_model_round_trip(tmp_path, filename):
    model = tiny_cnn()
    path = save(model, tmp_path / filename)
    loaded = load_user_model(path)
    x = np.random.default_rng(0).uniform(size=(2, 20, 20, 1)).astype("float32")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


def lambda_model():
    keras.utils.set_random_seed(0)
    inputs = keras.layers.Input((20, 20, 1))
    x = keras.layers.Lambda(lambda t: t * 2.0, name="doubler")(inputs)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(3)(x))


@pytest.mark.parametrize("filename", ["m.h5", "m.keras", "saved_model"])
def test_lambda_layer_refused_unless_allowed(tmp_path, filename):
    path = save(lambda_model(), tmp_path / filename)
    with pytest.raises(ConfigError, match=r"model contains Lambda layer 'doubler', whose Python code "
                                          r"runs when loaded; pass --allow-unsafe-model"):
        load_user_model(path)
    loaded = load_user_model(path, allow_unsafe=True)
    x = np.ones((1, 20, 20, 1), np.float32)
    assert loaded.get_layer("doubler")(x).numpy().max() == 2.0


def test_not_a_keras_model(tmp_path):
    with pytest.raises(ConfigError, match=r"model file .*missing.h5' not found"):
        load_user_model(tmp_path / "missing.h5")
    cases = {
        "notes.h5": (b"just some text\n", "looks like a text file"),
        "model.tflite": (b"\x1c\x00\x00\x00TFL3" + bytes(40), "looks like a TFLite flatbuffer"),
        "model.onnx": (b"\x08\x07\x12\x07pytorch" + bytes(20), "looks like an ONNX model"),
        "blob.keras": (b"PK\x03\x04" + bytes(30), "looks like a zip archive without config.json"),
        "empty.h5": (b"", "looks like an empty file"),
    }
    for name, (content, match) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ConfigError, match=match + r", not a Keras model: slimpipe takes a \.keras"):
            load_user_model(tmp_path / name)
    (tmp_path / "folder").mkdir()
    with pytest.raises(ConfigError, match="folder without saved_model.pb"):
        load_user_model(tmp_path / "folder")


def test_weights_only_h5(tmp_path):
    model = tiny_cnn()
    model.save_weights(tmp_path / "w.h5")
    with pytest.raises(ConfigError, match="HDF5 file without a model config"):
        load_user_model(tmp_path / "w.h5")


def test_model_without_single_image_input(tmp_path):
    inputs = keras.layers.Input((10,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    model.save(tmp_path / "flat.h5", save_format="h5")
    with pytest.raises(ConfigError, match=r"has inputs \[\(None, 10\)\], expected one image input"):
        load_user_model(tmp_path / "flat.h5")


def test_resolve_model(tmp_path):
    model, trained = resolve_model("cnn", input_shape=(28, 28, 1), num_classes=10, width=0.25)
    assert not trained and model.output_shape == (None, 10)
    path = save(tiny_cnn(), tmp_path / "mine.h5")
    model, trained = resolve_model(str(path), input_shape=(28, 28, 1), num_classes=10)
    assert trained and model.input_shape == (None, 20, 20, 1)
    with pytest.raises(ConfigError, match=r"unknown model '.*nope.h5': expected one of cnn, vgg16, "
                                          r"mobilenet_v2 or the path of an existing model file"):
        resolve_model(str(tmp_path / "nope.h5"), input_shape=(28, 28, 1), num_classes=10)


# ---- fit and output kind --------------------------------------------------------------------

def test_check_fit():
    model = build_model("cnn", (28, 28, 1), 10, width=0.125)
    check_fit(model, fake_data())
    with pytest.raises(ConfigError, match=r"model takes inputs of shape \(28, 28, 1\) but data set 'fake' "
                                          r"has \(32, 32, 3\)"):
        check_fit(model, fake_data(shape=(32, 32, 3)))
    with pytest.raises(ConfigError, match=r"model outputs shape \(10,\) but data set 'fake' has 5 classes: "
                                          r"use a data set with 10 classes, or rebuild the model's last"):
        check_fit(model, fake_data(classes=5))


def test_output_is_probabilities():
    def with_head(*head):
        return keras.Sequential([keras.layers.Input((4,)), *head])

    assert output_is_probabilities(with_head(keras.layers.Dense(3, activation="softmax")))
    assert output_is_probabilities(with_head(keras.layers.Dense(3), keras.layers.Softmax()))
    assert output_is_probabilities(with_head(keras.layers.Dense(3), keras.layers.Activation("softmax")))
    assert not output_is_probabilities(with_head(keras.layers.Dense(3)))
    assert not output_is_probabilities(with_head(keras.layers.Dense(3, activation="sigmoid")))


def test_output_is_probabilities_sees_through_pruning_wrappers():
    import tensorflow_model_optimization as tfmot

    model = keras.Sequential([keras.layers.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    pruned = tfmot.sparsity.keras.prune_low_magnitude(model)
    assert output_is_probabilities(pruned)
    logits = tfmot.sparsity.keras.prune_low_magnitude(
        keras.Sequential([keras.layers.Input((4,)), keras.layers.Dense(3)]))
    assert not output_is_probabilities(logits)
