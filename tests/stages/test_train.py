"""The train stage: learns the tiny task, never touches its input, honours if_trained."""
import numpy as np
import pytest

from slimpipe.pipeline.artifacts import make_artifact
from slimpipe.pipeline.errors import ConfigError
from slimpipe.pipeline.kerasio import load_keras, save_keras
from slimpipe.pipeline.runner import run_stage
from slimpipe.stages.train import Train


@pytest.fixture(autouse=True)
def quiet(monkeypatch):
    monkeypatch.setenv("SLIMPIPE_QUIET", "1")


def source(ctx, model, meta=None):
    path = save_keras(model, ctx.out_dir / "source.h5")
    return make_artifact("source", path, fmt="keras", kind="keras", stage="source",
                         config={}, parent=None, meta=meta)


def run(stage, art, ctx, folder):
    ctx.stage_dir = ctx.out_dir / folder
    return run_stage(stage, art, ctx)


def accuracy(model, data):
    return float(np.mean(np.argmax(model.predict(data.x_test, verbose=0), -1) == data.y_test))


def test_train_learns_the_task_and_leaves_the_input_alone(ctx, tiny_model):
    src = source(ctx, tiny_model)
    before = [w.copy() for w in ctx.keras_model(src).get_weights()]
    sha = src.sha256

    [out] = run(Train(epochs=5), src, ctx, "train")

    assert (out.name, out.kind, out.stage, out.parent) == ("trained", "keras", "train", "source")
    assert ctx.baseline == "trained"
    assert out.meta["epochs"] == 5 and out.meta["trained"] is True
    assert 0.0 <= out.meta["train_loss"] < 1.0 and out.meta["train_accuracy"] > 0.9
    # Accuracy measured on held-out data, from the file the next stage would load.
    assert accuracy(load_keras(out.path), ctx.data) > 0.9
    assert accuracy(tiny_model, ctx.data) < 0.6  # the input really was untrained
    after = ctx.keras_model(src).get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(before, after))
    assert make_artifact("x", src.path, fmt="keras", kind="keras", stage="source", config={},
                         parent=None).sha256 == sha


def test_already_trained_input_is_kept_as_baseline(ctx, tiny_model):
    src = source(ctx, tiny_model, meta={"trained": True})
    assert run(Train(), src, ctx, "train") == []
    assert ctx.baseline == "source"
    assert not (ctx.out_dir / "train").exists()
    assert any("already trained" in n for n in ctx.notes)


def test_continue_trains_an_already_trained_input(ctx, tiny_model):
    src = source(ctx, tiny_model, meta={"trained": True})
    [out] = run(Train(epochs=1, if_trained="continue"), src, ctx, "train")
    changed = [not np.array_equal(a, b) for a, b in
               zip(ctx.keras_model(src).get_weights(), ctx.keras_model(out).get_weights())]
    assert all(changed) and out.meta["epochs"] == 1


def test_zero_epochs_copies_the_model(ctx, tiny_model):
    src = source(ctx, tiny_model)
    [out] = run(Train(epochs=0), src, ctx, "train")
    copy = load_keras(out.path)
    assert copy is not tiny_model
    assert all(np.array_equal(a, b) for a, b in zip(tiny_model.get_weights(), copy.get_weights()))
    assert out.meta == {"epochs": 0, "trained": False}


@pytest.mark.parametrize("kwargs, match", [
    ({"epochs": -1}, "epochs must be an integer >= 0"),
    ({"epochs": 2.5}, "epochs must be an integer"),
    ({"batch_size": 0}, "batch_size must be an integer >= 1"),
    ({"learning_rate": 0}, "learning_rate must be a number > 0"),
    ({"learning_rate": "fast"}, "learning_rate must be a number > 0"),
    ({"if_trained": "maybe"}, "if_trained must be one of 'skip', 'continue'. Received: if_trained='maybe'"),
    ({"lr_decay": "step"}, "lr_decay must be one of 'constant', 'cosine'. Received: lr_decay='step'"),
])
def test_bad_parameters_raise_config_error(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        Train(**kwargs)


def test_loss_matches_the_output_layer():
    import tensorflow_model_optimization as tfmot
    import tf_keras as keras

    from slimpipe.pipeline.models import output_is_probabilities

    def model(*tail):
        return keras.Sequential([keras.layers.Input((3,)), *tail])

    assert not output_is_probabilities(model(keras.layers.Dense(2)))
    assert output_is_probabilities(model(keras.layers.Dense(2, activation="softmax")))
    assert output_is_probabilities(model(keras.layers.Dense(2), keras.layers.Softmax()))
    wrapped = tfmot.sparsity.keras.prune_low_magnitude(keras.layers.Dense(2, activation="softmax"))
    assert output_is_probabilities(model(wrapped))


def test_cosine_decay_anneals_the_learning_rate_to_zero(ctx, tiny_model):
    from slimpipe.stages.finetune import fit, steps_per_epoch

    model = tiny_model
    fit(model, ctx, epochs=2, batch_size=64, learning_rate=1e-3, lr_decay="cosine")
    steps = 2 * steps_per_epoch(ctx, 64)
    assert int(model.optimizer.iterations.numpy()) == steps
    # The optimizer's current rate: annealed to 0 after the last step (a constant one stays 1e-3).
    assert float(model.optimizer.learning_rate) < 1e-3 / 50
    [out] = run(Train(epochs=5, lr_decay="cosine"), source(ctx, make_tiny()), ctx, "train")
    assert accuracy(load_keras(out.path), ctx.data) > 0.9


def make_tiny():
    from tests.conftest import make_tiny_model

    return make_tiny_model()
