"""--custom-objects: a user's layer class in both Keras versions, through the translation."""
import json
import textwrap

import numpy as np
import pytest

import slimpipe.pipeline  # noqa: F401  (legacy Keras before TensorFlow)
import keras

from slimpipe.pipeline.cli import main
from slimpipe.pipeline.errors import ConfigError
from slimpipe.pipeline.keras3.check import outputs, sample_inputs
from slimpipe.pipeline.keras3.custom import load_custom_objects
from slimpipe.pipeline.models import load_user_model

# The form the --help and docs describe: one class per Keras version, one dict naming them.
MODULE = '''
import keras
import tf_keras


@keras.saving.register_keras_serializable(package="demo")
class Gain(keras.layers.Layer):
    """Multiplies each channel by a learned gain, then adds `bias`."""

    def __init__(self, bias=0.0, **kwargs):
        super().__init__(**kwargs)
        self.bias = bias

    def build(self, input_shape):
        self.gain = self.add_weight(shape=(input_shape[-1],), initializer="ones", name="gain")

    def call(self, x):
        return x * self.gain + self.bias

    def get_config(self):
        return {**super().get_config(), "bias": self.bias}


class GainTfKeras(tf_keras.layers.Layer):
    def __init__(self, bias=0.0, **kwargs):
        super().__init__(**kwargs)
        self.bias = bias

    def build(self, input_shape):
        self.gain = self.add_weight(shape=(input_shape[-1],), initializer="ones", name="gain")

    def call(self, x):
        return x * self.gain + self.bias

    def get_config(self):
        return {**super().get_config(), "bias": self.bias}


CUSTOM_OBJECTS = {"demo>Gain": (Gain, GainTfKeras)}
'''


@pytest.fixture
def custom_file(tmp_path):
    path = tmp_path / "my_layers.py"
    path.write_text(MODULE)
    return path


def gain_model(custom):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((20, 20, 1), name="image")
    x = custom.keras3["demo>Gain"](bias=0.5, name="gain")(inputs)
    x = keras.layers.Conv2D(4, 3, name="conv")(x)
    model = keras.Model(inputs, keras.layers.Dense(3, name="logits")(keras.layers.Flatten()(x)), name="gained")
    model.get_layer("gain").set_weights([np.array([1.5], np.float32)])
    return model


def test_custom_layer_translates_both_ways(tmp_path, custom_file, round_trip):
    custom = load_custom_objects(custom_file)
    model, _, back = round_trip(gain_model(custom), tmp_path, custom=custom)
    assert type(model.get_layer("gain")).__name__ == "GainTfKeras" and model.get_layer("gain").bias == 0.5
    assert type(back.get_layer("gain")).__name__ == "Gain"
    np.testing.assert_array_equal(model.get_layer("gain").get_weights()[0], [1.5])


def test_cli_needs_and_takes_the_custom_objects(tmp_path, custom_file, capsys, monkeypatch):
    monkeypatch.setenv("SLIMPIPE_QUIET", "1")
    gain_model(load_custom_objects(custom_file)).save(tmp_path / "gained.keras")
    recipe = tmp_path / "keep.toml"
    recipe.write_text('name = "keep"\n[[stages]]\nstage = "train"\n')  # a trained model is kept as is
    argv = ["compress", "--model", str(tmp_path / "gained.keras"), "--dataset", "npz:" + _npz(tmp_path),
            "--recipe", str(recipe), "--out", str(tmp_path / "run")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("slimpipe: error: model 'gained' cannot be translated") and len(err.splitlines()) == 1
    assert "custom layers 'gain' (demo>Gain" in err and "--custom-objects FILE.py" in err
    assert not (tmp_path / "run").exists()
    assert main([*argv, "--custom-objects", str(custom_file)]) == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert [f["path"] for f in report["keras3_files"]] == ["00-source/source.keras"]
    back = keras.saving.load_model(tmp_path / "run" / "00-source" / "source.keras",
                                   custom_objects=dict(load_custom_objects(custom_file).keras3))
    source = keras.saving.load_model(tmp_path / "gained.keras")
    x = sample_inputs(back)
    np.testing.assert_allclose(outputs(back, x)[0], outputs(source, x)[0], rtol=1e-6)


def _npz(tmp_path) -> str:
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (24, 20, 20, 1)).astype("uint8")
    path = tmp_path / "data.npz"
    np.savez(path, x_train=x, y_train=np.arange(24) % 3, x_test=x[:12], y_test=np.arange(12) % 3)
    return str(path)


@pytest.mark.parametrize("content, match", [
    (None, r"expected an existing Python file \(.py\) defining CUSTOM_OBJECTS"),
    ("X = 1\n", r"must define a non-empty dict CUSTOM_OBJECTS = "),
    ("raise RuntimeError('boom')\n", r"failed to import \(RuntimeError: boom\): fix the file"),
    ("CUSTOM_OBJECTS = {'A': int}\n", r"each entry must be \"Name\": \(Keras 3 class or None"),
    ("import tf_keras\nclass A(tf_keras.layers.Layer): pass\nCUSTOM_OBJECTS = {'A': (A, None)}\n",
     r"the first class of \['A'\] is not a Keras 3 layer"),
])
def test_bad_custom_objects_files(tmp_path, content, match):
    path = tmp_path / "objs.py"
    if content is not None:
        path.write_text(textwrap.dedent(content))
    with pytest.raises(ConfigError, match=match):
        load_custom_objects(path if content is not None else tmp_path / "missing.py")


def test_tf_keras_models_with_custom_layers_load_too(tmp_path, custom_file):
    """The tf_keras class alone serves a tf_keras model (Keras 2 files)."""
    import tf_keras

    custom = load_custom_objects(custom_file)
    inputs = tf_keras.Input((20, 20, 1), name="image")
    x = custom.tf_keras["demo>Gain"](bias=1.0, name="gain")(inputs)
    tfk = tf_keras.Model(inputs, tf_keras.layers.Dense(2)(tf_keras.layers.Flatten()(x)))
    tfk.save(tmp_path / "k2.keras")
    loaded = load_user_model(tmp_path / "k2.keras", custom=custom)
    assert loaded.get_layer("gain").bias == 1.0
