"""Every shipped recipe runs on every built-in model and on a saved model with unusual layer
names, end to end on a slice of real Fashion-MNIST with one epoch per training stage (the point is
that each combination runs, not its accuracy); and a recipe that does not fit its model fails
before anything trains."""
import json

import numpy as np
import pytest

from slimpipe.pipeline.cli import main
from slimpipe.pipeline.data import load_dataset
from slimpipe.pipeline.recipe import load_recipe, shipped_recipes
from slimpipe.stages import STAGES
from tests.test_cli import fashion_slice, needs_fashion

# One epoch everywhere, one structured round, tiny benchmark and parity settings; int8 files of a
# model trained for one epoch on 256 images may disagree with it, so agreement is not enforced.
SMOKE = ["train.epochs=1", "prune.epochs=1", "low_rank.epochs=1", "cluster.epochs=0", "quantize.epochs=1",
         "quantize.min_agreement=0", "quantize.parity_samples=32", "quantize.representative_samples=32",
         "export.min_agreement=0", "export.parity_samples=32", "export.calibration_samples=32",
         "structured_prune.rounds=1", "structured_prune.epochs=0", "structured_prune.final_epochs=1",
         "benchmark.latency=[[1, 1]]", "benchmark.min_runs=2", "benchmark.warmup=1",
         "benchmark.min_seconds=0", "benchmark.passes=1", "benchmark.sparse_kernels=false"]
# ONNX export (tf2onnx and onnxruntime's quantizer) is the slowest step of a small run: the
# default recipe exercises it on every model; the others export TFLite only.
TFLITE_ONLY = ['export.formats=["tflite"]', "export.onnx_int8=[]"]
MODELS = {"cnn": ["--model", "cnn"], "vgg16": ["--model", "vgg16", "--width", "0.125"],
          "mobilenet_v2": ["--model", "mobilenet_v2", "--width", "0.35"]}


@pytest.fixture(autouse=True)
def quiet(monkeypatch):
    monkeypatch.setenv("SLIMPIPE_QUIET", "1")


@pytest.fixture(scope="module")
def slice_npz(tmp_path_factory):
    """256 training and 128 test images of the real Fashion-MNIST."""
    return fashion_slice(tmp_path_factory.mktemp("data") / "fashion_slice.npz", 256)


def unusual_model():
    """A functional model with names no recipe could guess: dots, dashes, capitals; a batch norm,
    a 1x1 branch joined by Add, global pooling instead of Flatten."""
    import tf_keras as keras

    L = keras.layers
    keras.utils.set_random_seed(0)
    inputs = L.Input((28, 28, 1), name="pixels")
    x = L.Conv2D(8, 3, name="Stem.Conv")(inputs)
    x = L.BatchNormalization(name="stem-bn")(x)
    x = L.ReLU(name="stem-act")(x)
    x = L.MaxPooling2D(name="Pool_A")(x)
    a = L.Conv2D(16, 3, padding="same", activation="relu", name="Body-Conv-1")(x)
    b = L.Conv2D(16, 1, activation="relu", name="Body-Conv-1x1")(x)
    x = L.Add(name="Merge")([a, b])
    x = L.Conv2D(24, 3, activation="relu", name="Body-Conv-2")(x)
    x = L.GlobalAveragePooling2D(name="GAP")(x)
    x = L.Dense(32, activation="relu", name="Hidden.Dense")(x)
    outputs = L.Dense(10, name="Classifier.Head")(x)
    return keras.Model(inputs, outputs, name="Unusual_Net")


@pytest.fixture(scope="module")
def unusual_h5(tmp_path_factory, slice_npz):
    """Saved after a few epochs on the slice: a user's file is checked against chance level."""
    import tf_keras as keras

    model = unusual_model()
    data = np.load(slice_npz)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), metrics=["accuracy"],
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(data["x_train"][..., None] / 255.0, data["y_train"], epochs=8, batch_size=32, verbose=0)
    path = tmp_path_factory.mktemp("model") / "unusual.h5"
    model.save(path, save_format="h5")
    return path


def model_args(model, unusual_h5):
    return ["--model", str(unusual_h5)] if model == "unusual" else MODELS[model]


# Each shipped recipe end to end once, and each model once: every recipe-model pair is checked
# against the model before training by the test below, and a pair differs only in that check.
RUNS = [("default", "unusual"), ("thorough", "cnn"), ("speed", "cnn"), ("xnnpack", "mobilenet_v2"),
        ("lowrank", "vgg16")]


def test_the_end_to_end_runs_cover_every_recipe_and_model():
    assert {r for r, _ in RUNS} == set(shipped_recipes())
    assert {m for _, m in RUNS} == {*MODELS, "unusual"}


@needs_fashion
@pytest.mark.parametrize("model", [*MODELS, "unusual"])
@pytest.mark.parametrize("recipe", sorted(shipped_recipes()))
def test_every_shipped_recipe_fits_every_model_before_training(recipe, model, slice_npz, unusual_h5):
    """What `compress` checks before it trains: every layer a step names or selects exists in the
    model and can take the step (the stem and logits layer stay dense under the shipped rules)."""
    from slimpipe.pipeline.recipe import check_fits_model
    from slimpipe.pipeline.models import build_model

    data = load_dataset(f"npz:{slice_npz}")
    if model == "unusual":
        import tf_keras as keras
        net = keras.models.load_model(unusual_h5, compile=False)
    else:
        width = float(MODELS[model][-1]) if "--width" in MODELS[model] else 1.0
        net = build_model(model, data.input_shape, data.num_classes, width=width)
    check_fits_model(load_recipe(recipe, STAGES), net, data)


@pytest.mark.slow
@needs_fashion
@pytest.mark.parametrize(("recipe", "model"), RUNS)
def test_every_shipped_recipe_runs_end_to_end(recipe, model, slice_npz, unusual_h5, tmp_path):
    out = tmp_path / "run"
    args = ["compress", *model_args(model, unusual_h5), "--dataset", f"npz:{slice_npz}", "--recipe", recipe,
            "--out", str(out)]
    smoke = SMOKE + (TFLITE_ONLY if recipe != "default" else [])
    assert main(args + [a for s in smoke for a in ("--set", s)]) == 0
    report = json.loads((out / "report.json").read_text())
    steps = [step.name for step in load_recipe(recipe, STAGES)]
    assert [s["name"] for s in report["stages"]] == steps
    rows = {r["name"]: r for r in report["artifacts"]}
    floats = [r for r in rows.values() if r["format"] != "keras" and r.get("mode") == "float32"]
    assert floats and all(r["validation"]["passed"] for r in floats), recipe
    for step in (s for s in report["stages"] if s["stage"] == "prune"):
        manifest = json.loads((out / step["folder"] / ".slimpipe-stage.json").read_text())
        chosen = set(manifest["outputs"][0]["meta"]["layers"])  # the layers it pruned
        # the shipped rules keep the stem and the logits layer dense
        assert not chosen & {"conv1", "logits", "block1_conv1", "Conv1", "predictions", "Stem.Conv",
                             "Classifier.Head"}, (recipe, model, chosen)


@needs_fashion
def test_a_recipe_naming_a_missing_layer_fails_before_anything_trains(tmp_path, slice_npz, monkeypatch,
                                                                       capsys):
    import slimpipe.stages.finetune as finetune

    def no_training(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(finetune, "fit", no_training)
    recipe = tmp_path / "typo.toml"
    recipe.write_text('[[stages]]\nstage = "train"\n[[stages]]\nstage = "prune"\nlayers = ["conv9"]\n'
                      '[[stages]]\nstage = "strip"\n')
    out = tmp_path / "run"
    assert main(["compress", "--dataset", f"npz:{slice_npz}", "--recipe", str(recipe), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert ("step 2 'prune' does not fit model 'cnn' (checked before anything ran): stage 'prune': layers "
            "selector 'conv9' selects none of the layers this stage can work on (conv1, conv2, conv3, fc1, "
            "logits): fix the name") in err
    assert not out.exists()
