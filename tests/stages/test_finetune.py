"""Shared fine-tuning: the distillation loss is what it says, needs a baseline teacher, and a
distilled prune still reaches its sparsity and learns."""
import dataclasses

import numpy as np
import pytest

import slimpipe.pipeline  # noqa: F401
from slimpipe.pipeline.artifacts import make_artifact
from slimpipe.pipeline.errors import ConfigError
from slimpipe.pipeline.kerasio import save_keras
from slimpipe.stages import finetune as _fit
from slimpipe.stages.finetune import _distillation, _teacher_logits as teacher_logits, fit
from slimpipe.stages.prune import Prune
from slimpipe.pipeline.runner import run_stage
from slimpipe.stages.train import Train
from tests.conftest import make_tiny_model


@pytest.fixture(autouse=True)
def quiet(monkeypatch):
    monkeypatch.setenv("SLIMPIPE_QUIET", "1")


def test_distillation_loss_mixes_cross_entropy_and_softened_kl():
    import tensorflow as tf

    rng = np.random.default_rng(0)
    student = rng.normal(size=(8, 4)).astype("float32")
    teacher = rng.normal(size=(8, 4)).astype("float32")
    labels = rng.integers(0, 4, 8).astype("float32")
    target = np.concatenate([labels[:, None], teacher], 1)
    ce = tf.keras.losses.sparse_categorical_crossentropy(labels, student, from_logits=True).numpy()
    assert np.allclose(_distillation(False, 0.0, 4.0)(target, student).numpy(), ce, atol=1e-5)
    same = np.concatenate([labels[:, None], student], 1)
    assert np.allclose(_distillation(False, 1.0, 4.0)(same, student).numpy(), 0.0, atol=1e-5)
    t = 2.0
    p, q = tf.nn.softmax(teacher / t).numpy(), tf.nn.softmax(student / t).numpy()
    kl = (p * (np.log(p) - np.log(q))).sum(1) * t * t
    assert np.allclose(_distillation(False, 0.3, t)(target, student).numpy(), 0.7 * ce + 0.3 * kl, atol=1e-4)


def test_distill_needs_a_baseline_teacher(ctx):
    with pytest.raises(ConfigError, match="distill needs a trained dense baseline"):
        fit(make_tiny_model(), ctx, epochs=1, batch_size=64, learning_rate=1e-3, distill=0.5)


@pytest.mark.parametrize("stage", ["prune", "cluster", "quantize", "structured_prune"])
@pytest.mark.parametrize("kwargs, match", [({"distill": 1.5}, "distill must be a weight in"),
                                           ({"temperature": 0}, "temperature must be a number > 0"),
                                           ({"lr_decay": "linear"}, "lr_decay must be one of")])
def test_bad_fine_tuning_parameters(stage, kwargs, match):
    from slimpipe.stages import STAGES

    with pytest.raises(ConfigError, match=match):
        STAGES[stage](**kwargs)


def test_distilled_prune_reaches_its_sparsity_and_learns(ctx, monkeypatch):
    src = make_artifact("source", save_keras(make_tiny_model(), ctx.out_dir / "source.h5"), fmt="keras",
                        kind="keras", stage="source", config={}, parent=None)
    ctx.artifacts.append(src)
    ctx.stage_dir = ctx.out_dir / "train"
    [trained] = run_stage(Train(epochs=3), src, ctx)
    ctx.artifacts.append(trained)
    ctx.stage_dir = ctx.out_dir / "prune"
    computed = []
    monkeypatch.setattr(_fit, "_teacher_logits", lambda c: computed.append(1) or teacher_logits(c))
    [pruned] = run_stage(Prune(final_sparsity=0.7, epochs=2, distill=0.7), trained, ctx)
    assert abs(pruned.meta["achieved_sparsity"] - 0.7) < 0.03
    model = ctx.keras_model(pruned)
    acc = np.mean(np.argmax(model.predict(ctx.data.x_test, verbose=0), 1) == ctx.data.y_test)
    assert acc > 0.9

    # A later distilled stage of the run reuses the teacher's logits instead of recomputing them.
    fit(make_tiny_model(), ctx, epochs=1, batch_size=64, learning_rate=1e-3, distill=0.5)
    assert computed == [1]
    memo = ctx.memo(("teacher_logits", trained.id), lambda: None)
    assert np.allclose(memo, ctx.keras_model(trained).predict(ctx.data.x_train, verbose=0), atol=1e-5)


def test_every_epoch_is_exactly_one_pass_over_the_training_set(tmp_path):
    """fit keeps one data iterator across epochs; epochs must still be whole passes: a model
    that always predicts class 0 scores exactly the share of class 0 in every epoch."""
    import tf_keras as keras

    from slimpipe.pipeline.context import RunContext
    from slimpipe.pipeline.data import Dataset

    x = np.zeros((10, 2, 2, 1), np.float32)
    y = np.array([0, 0, 0, 1, 1, 1, 1, 1, 1, 1], np.int64)  # 30% class 0; 10 = 4 + 4 + 2
    data = Dataset("ten", x, y, x, y, ("a", "b"))
    ctx = RunContext(data=data, out_dir=tmp_path, model_name="const")
    inp = keras.Input((2, 2, 1))
    out = keras.layers.Dense(2, trainable=False, kernel_initializer="zeros",
                             bias_initializer=keras.initializers.Constant([1.0, 0.0]))(keras.layers.Flatten()(inp))
    model = keras.Model(inp, keras.layers.Dense(2, kernel_initializer="identity", bias_initializer="zeros",
                                                trainable=False)(out))
    history = fit(model, ctx, epochs=5, batch_size=4, learning_rate=1e-3).history
    assert history["accuracy"] == pytest.approx([0.3] * 5)


def _with_dropout(rate: float):
    import tf_keras as keras

    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.layers.Input((8,)),
        keras.layers.Dense(16, activation="relu", name="dense"),
        keras.layers.Dropout(rate, name="dropout"),
        keras.layers.Dense(4, name="logits"),
    ])


def _training_mode_is_deterministic(model, x) -> bool:
    return bool(np.array_equal(model(x, training=True).numpy(), model(x, training=True).numpy()))


@pytest.mark.parametrize("dropout, deterministic_in_fit", [(None, False), (0.0, True)])
def test_dropout_override_holds_only_while_fitting(ctx, monkeypatch, dropout, deterministic_in_fit):
    import tf_keras as keras

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype("float32")
    monkeypatch.setattr(ctx, "data", dataclasses.replace(
        ctx.data, x_train=x, y_train=rng.integers(0, 4, 64), x_test=x[:8], y_test=rng.integers(0, 4, 8),
        labels=tuple("abcd")))
    model, seen = _with_dropout(0.5), []

    class Probe(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append((model.get_layer("dropout").rate, _training_mode_is_deterministic(model, x)))

    fit(model, ctx, epochs=1, batch_size=16, learning_rate=1e-3, callbacks=[Probe()], dropout=dropout)
    assert seen == [(0.0 if dropout == 0.0 else 0.5, deterministic_in_fit)]
    # Put back: the saved model keeps its own dropout.
    assert model.get_layer("dropout").rate == 0.5
    assert not _training_mode_is_deterministic(model, x)


@pytest.mark.parametrize("stage", ["prune", "cluster", "quantize", "structured_prune"])
@pytest.mark.parametrize("value", [1.0, -0.1, "0", True])
def test_bad_dropout_is_a_config_error(stage, value):
    from slimpipe.stages import STAGES

    with pytest.raises(ConfigError, match=r"dropout must be a rate in \[0, 1\)"):
        STAGES[stage](dropout=value)
