"""pipeline.keras3.scan and .detect: which Keras saved a file, and the one-line refusals."""
import json
import zipfile

import h5py
import numpy as np
import pytest

import slimpipe.pipeline  # noqa: F401  (legacy Keras before TensorFlow)
import keras
import tf_keras

from slimpipe.pipeline.errors import ConfigError
from slimpipe.pipeline.keras3.detect import keras3_version
from slimpipe.pipeline.models import load_user_model

L = keras.layers
pytestmark = pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file")


def small(*middle, shape=(8, 8, 3)):
    inputs = keras.Input(shape, name="image")
    x = inputs
    for layer in middle:
        x = layer(x)
    return keras.Model(inputs, L.Dense(2, name="logits")(L.Flatten(name="flat")(x)), name="small")


def test_which_keras_saved_the_file(tmp_path):
    small().save(tmp_path / "k3.keras")
    small().save(tmp_path / "k3.h5")
    tfk = tf_keras.Sequential([tf_keras.Input((4, 4, 1)), tf_keras.layers.Flatten()])
    tfk.save(tmp_path / "k2.keras")
    tfk.save(tmp_path / "k2.h5", save_format="h5")
    assert keras3_version(tmp_path / "k3.keras", "keras") == keras.__version__
    assert keras3_version(tmp_path / "k3.h5", "h5") == keras.__version__
    assert keras3_version(tmp_path / "k2.keras", "keras") is None
    assert keras3_version(tmp_path / "k2.h5", "h5") is None
    with h5py.File(tmp_path / "k3.h5", "a") as f:  # no version attribute: the config's format tells
        del f.attrs["keras_version"]
    assert keras3_version(tmp_path / "k3.h5", "h5") == "3"
    assert load_user_model(tmp_path / "k3.h5").count_params() == small().count_params()


def test_keras3_export_is_not_a_keras_model(tmp_path):
    small().export(tmp_path / "exported", verbose=False)
    with pytest.raises(ConfigError, match=r"SavedModel without Keras metadata \(keras_metadata.pb\): Keras 3's "
                                          r"model.export\(\) .* save the model itself with model.save\('model.keras'\)"):
        load_user_model(tmp_path / "exported")


class Scale(L.Layer):
    def call(self, x):
        return x * 2.0


@pytest.mark.parametrize("model, match", [
    (lambda: small(Scale(name="twice")),
     r"custom layers 'twice' \(Scale, from .*test_scan\): register it in both Keras versions with "
     r"--custom-objects FILE.py$"),
    (lambda: small(L.Lambda(lambda t: t + 1.0, name="plus_one")),
     r"Lambda layers 'plus_one' \(Lambda\): its Python code runs when the model is loaded; pass "
     r"--allow-unsafe-model if you trust the file$"),
    (lambda: small(L.Activation("celu", name="celu")),
     r"activations with no tf_keras equivalent 'celu' \(Activation, activation 'celu'\)"),
    (lambda: small(L.Conv2D(2, 1, data_format="channels_first", name="nchw"), shape=(3, 8, 8)),
     r"channels_first layers 'nchw' \(Conv2D\): slimpipe feeds images as \(height, width, channels\)"),
    (lambda: small(L.Conv2D(2, 1, dtype="float64", name="wide"), L.Activation("linear", dtype="float32")),
     r"layers that do not compute in float32 or mixed precision 'wide' \(Conv2D, dtype policy float64\)"),
    (lambda: small(L.RandomCrop(4, 4, name="rcrop")),
     r"layers with no tf_keras equivalent 'rcrop' \(RandomCrop\): rebuild them from standard keras.layers"),
])
def test_untranslatable_models_are_refused_in_one_line(tmp_path, model, match):
    model().save(tmp_path / "m.keras")
    with pytest.raises(ConfigError, match=r"^model 'small' cannot be translated from Keras 3 to tf_keras: "
                                          + match) as err:
        load_user_model(tmp_path / "m.keras")
    assert "\n" not in str(err.value)


def test_every_problem_is_named_at_once(tmp_path):
    inputs = keras.Input((8, 8, 3), name="image")
    x = Scale(name="s1")(inputs)
    x = L.Lambda(lambda t: t, name="lam")(x)
    x = keras.ops.sin(x)
    keras.Model(inputs, Scale(name="s2")(x), name="many").save(tmp_path / "m.keras")
    with pytest.raises(ConfigError) as err:
        load_user_model(tmp_path / "m.keras")
    text = str(err.value)
    assert "custom layers 's1' (Scale" in text and "'s2' (Scale" in text
    assert "Lambda layers 'lam' (Lambda)" in text and "'sin' (keras.ops Sin)" in text


def test_quantized_layers_are_refused(tmp_path):
    model = small(L.Dense(4, name="dense"))
    model.quantize("int8")
    model.save(tmp_path / "q.keras")
    with pytest.raises(ConfigError, match=r"layers quantized by Keras 3's model.quantize\(\) 'dense' \(Dense, "
                                          r"int8_from_float32\).*pass the model as saved before"):
        load_user_model(tmp_path / "q.keras")


@pytest.mark.parametrize("expression, ok", [
    (lambda x: x * 0.5 + 1.0, True), (lambda x: 2.0 - x, True), (lambda x: x / 4.0, True),
    (lambda x: x * x, True), (lambda x: 1.0 / (x + 1.0), False), (lambda x: x / (x + 1.0), False),
])
def test_keras_ops_arithmetic(tmp_path, expression, ok):
    inputs = keras.Input((4, 4, 1), name="image")
    source = keras.Model(inputs, L.Flatten()(expression(inputs)), name="ops")
    source.save(tmp_path / "ops.keras")
    if not ok:
        with pytest.raises(ConfigError, match=r"'true_divide(_\d+)?' \(keras.ops TrueDivide\) on these arguments"):
            load_user_model(tmp_path / "ops.keras")
        return
    model = load_user_model(tmp_path / "ops.keras")
    x = np.random.default_rng(0).uniform(size=(3, 4, 4, 1)).astype("float32")
    np.testing.assert_allclose(model(x).numpy(), np.asarray(source(x)), rtol=1e-6)


def test_keras_ops_in_h5_are_refused(tmp_path):
    inputs = keras.Input((4, 4, 1), name="image")
    keras.Model(inputs, L.Flatten()(inputs * 2.0), name="ops").save(tmp_path / "ops.h5")
    with pytest.raises(ConfigError, match=r"keras.ops calls 'multiply(_\d+)?' \(Multiply\): Keras 3 cannot load "
                                          r"those from .h5 files .*save the model as .keras$"):
        load_user_model(tmp_path / "ops.h5")


def test_a_broken_keras3_file(tmp_path):
    """What Keras 3 writes, minus the weights: its own loader's complaint, in one line."""
    path = tmp_path / "k3.keras"
    config = {"module": "keras", "class_name": "Sequential", "config": {"name": "sequential", "layers": [
        {"module": "keras.layers", "class_name": "InputLayer",
         "config": {"batch_shape": [None, 8, 8, 1], "dtype": "float32", "name": "input_layer"}},
        {"module": "keras.layers", "class_name": "Flatten", "config": {"name": "flatten"}}]}}
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("metadata.json", json.dumps({"keras_version": "3.15.1"}))
        zf.writestr("config.json", json.dumps(config))
    with pytest.raises(ConfigError, match=r"Keras 3.15.1 could not load '.*k3.keras' \(ValueError: Expected a "
                                          r"model.weights.h5.*\): re-save the model with Keras 3$"):
        load_user_model(path)


def test_subclassed_model_is_refused(tmp_path):
    class Net(keras.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.dense = L.Dense(2)

        def call(self, x):
            return self.dense(x)

    net = Net(name="net")
    net(np.zeros((1, 4, 4, 1), np.float32))
    net.save(tmp_path / "net.keras")
    with pytest.raises(ConfigError, match=r"'net.keras' holds a model of class 'Net', a subclassed model"):
        load_user_model(tmp_path / "net.keras")
