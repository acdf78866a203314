"""`slimpipe compress` on a model saved by Keras 3: end to end on real Fashion-MNIST, and the
refusals (one line, exit code 2, nothing written)."""
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

import slimpipe.pipeline  # noqa: F401  (legacy Keras before TensorFlow)
import keras

from slimpipe.pipeline.cli import main
from slimpipe.pipeline.kerasio import load_keras

FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
needs_fashion = pytest.mark.skipif(not FASHION.exists() and not os.environ.get("SLIMPIPE_DATA_DIR"),
                                   reason="Fashion-MNIST not installed (make test installs it)")
pytestmark = pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file")

TINY = """
name = "tiny"
[[stages]]
stage = "train"
epochs = 1
[[stages]]
stage = "prune"
final_sparsity = 0.5
epochs = 1
[[stages]]
stage = "strip"
[[stages]]
stage = "export"
formats = ["tflite"]
[[stages]]
stage = "benchmark"
min_runs = 2
min_seconds = 0.0
warmup = 1
passes = 1
latency = [[1, 1]]
accuracy_limit = 500
sparse_kernels = false
[[stages]]
stage = "bundle"
"""


@pytest.fixture(autouse=True)
def quiet(monkeypatch):
    monkeypatch.setenv("SLIMPIPE_QUIET", "1")


@pytest.fixture(scope="module")
def keras3_cnn(tmp_path_factory):
    """The CNN of `--model cnn` at half width, built and trained for 48 steps in Keras 3."""
    from slimpipe.pipeline.data import load_dataset

    folder = tmp_path_factory.mktemp("keras3_cnn")
    data = load_dataset("fashion_mnist", limit=1024)
    keras.utils.set_random_seed(0)
    L = keras.layers
    model = keras.Sequential([
        keras.Input((28, 28, 1), name="image"), L.Conv2D(16, 3, activation="relu", name="conv1"),
        L.MaxPooling2D(2, name="pool1"), L.Conv2D(32, 3, activation="relu", name="conv2"),
        L.MaxPooling2D(2, name="pool2"), L.Conv2D(32, 3, activation="relu", name="conv3"),
        L.Flatten(name="flatten"), L.Dropout(0.25, name="dropout"), L.Dense(64, activation="relu", name="fc1"),
        L.Dense(10, name="logits")], name="cnn")
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.fit(data.x_train, data.y_train, epochs=3, batch_size=64, verbose=0)
    model.save(folder / "cnn.keras")
    model.save(folder / "cnn.h5")
    return folder


def _compress(tmp_path, model_path):
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(TINY)
    out = tmp_path / "run"
    code = main(["compress", "--model", str(model_path), "--dataset", "fashion_mnist", "--limit", "1000",
                 "--recipe", str(recipe), "--out", str(out)])
    assert code == 0
    return out, json.loads((out / "report.json").read_text())


def _check_keras3_outputs(out, report):
    files = {f["artifact"]: f for f in report["keras3_files"]}
    assert set(files) == {"source", "pruned"}  # 'pruning' holds tfmot wrappers: no copy
    rows = {r["name"]: r for r in report["artifacts"]}
    x = np.random.default_rng(0).uniform(0, 1, (16, 28, 28, 1)).astype("float32")
    for name, record in files.items():
        path = out / record["path"]
        assert path.stat().st_size == record["bytes"] and path.suffix == ".keras"
        keras3_model = keras.saving.load_model(path)  # safe mode, plain Keras 3
        tf_keras_model = load_keras(out / rows[name]["path"])
        np.testing.assert_allclose(np.asarray(keras3_model(x)), tf_keras_model(x).numpy(), rtol=0, atol=1e-5)
    pruned = keras.saving.load_model(out / files["pruned"]["path"]).get_layer("fc1").get_weights()[0]
    assert abs(float(np.mean(pruned == 0)) - 0.5) < 0.05  # the pruned weights came back to Keras 3
    bundles = json.loads((out / "06-bundle" / "bundles.json").read_text())["bundles"]
    assert {"source.keras", "pruned.keras", "pruned.tflite"} <= set(bundles)
    meta = json.loads((out / "06-bundle" / "pruned.keras" / "metadata.json").read_text())
    assert meta["format"] == "keras" and meta["bytes"] == files["pruned"]["bytes"]
    assert meta["input"]["shape"] == [-1, 28, 28, 1] and meta["output"]["shape"] == [-1, 10]
    assert (out / "06-bundle" / "pruned.keras.zip").is_file()
    assert any(n.startswith("model: a .") and "saved by Keras 3" in n for n in report["notes"])
    assert any(n.startswith("Keras 3 models (keras.saving.load_model): 00-source/source.keras") for n in report["notes"])
    assert rows["source"]["accuracy"] > 0.5  # the Keras 3 training came along (chance: 0.1)


@needs_fashion
def test_compress_a_keras3_model(tmp_path, keras3_cnn):
    out, report = _compress(tmp_path, keras3_cnn / "cnn.keras")
    _check_keras3_outputs(out, report)


@pytest.mark.slow
@needs_fashion
def test_compress_a_keras3_h5_model(tmp_path, keras3_cnn):
    out, report = _compress(tmp_path, keras3_cnn / "cnn.h5")
    _check_keras3_outputs(out, report)


class Twice(keras.layers.Layer):
    def call(self, x):
        return x * 2.0


@pytest.mark.parametrize("layer, match", [
    (lambda: Twice(name="twice"), r"custom layers 'twice' \(Twice, from .*\): register it in both Keras "
                                  r"versions with --custom-objects FILE.py"),
    (lambda: keras.layers.Lambda(lambda t: t * 2.0, name="double"),
     r"Lambda layers 'double' \(Lambda\): its Python code runs when the model is loaded; pass "
     r"--allow-unsafe-model if you trust the file"),
    (lambda: keras.layers.RandomCrop(20, 20, name="rcrop"), r"layers with no tf_keras equivalent 'rcrop' "
                                                            r"\(RandomCrop\)"),
])
def test_untranslatable_keras3_models_exit_2_and_write_nothing(tmp_path, capsys, layer, match):
    inputs = keras.Input((28, 28, 1), name="image")
    x = keras.layers.Flatten()(layer()(inputs))
    keras.Model(inputs, keras.layers.Dense(10)(x), name="odd").save(tmp_path / "odd.keras")
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (20, 28, 28, 1)).astype("uint8")
    np.savez(tmp_path / "d.npz", x_train=images, y_train=np.arange(20) % 10, x_test=images, y_test=np.arange(20) % 10)
    code = main(["compress", "--model", str(tmp_path / "odd.keras"), "--dataset", f"npz:{tmp_path / 'd.npz'}",
                 "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("slimpipe: error: model 'odd' cannot be translated from Keras 3 to tf_keras: ")
    assert re.search(match, err), err
    assert not (tmp_path / "run").exists()


def test_lambda_translates_with_allow_unsafe(tmp_path):
    from slimpipe.pipeline.models import load_user_model

    inputs = keras.Input((4, 4, 1), name="image")
    source = keras.Model(inputs, keras.layers.Flatten()(keras.layers.Lambda(lambda t: t * 2.0, name="double")(inputs)))
    source.save(tmp_path / "lam.keras")
    from slimpipe.pipeline.keras3.out import Keras3Writer
    from slimpipe.pipeline.kerasio import save_keras

    model = load_user_model(tmp_path / "lam.keras", allow_unsafe=True)
    x = np.ones((1, 4, 4, 1), np.float32)
    np.testing.assert_array_equal(model(x).numpy(), np.full((1, 16), 2.0))
    record = Keras3Writer(allow_unsafe=True).write(model, save_keras(model, tmp_path / "m.h5"), kind="keras")
    back = keras.saving.load_model(tmp_path / record["file"], safe_mode=False)
    np.testing.assert_array_equal(np.asarray(back(x)), np.full((1, 16), 2.0))
