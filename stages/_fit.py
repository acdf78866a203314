"""Shared compile-and-fit for the stages that train (train, prune, ...).

>>> history = fit(model, ctx, epochs=2, batch_size=64, learning_rate=1e-3,
...               callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
"""
from __future__ import annotations

import math
import os
import sys

import pipeline  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)


def verbosity() -> int:
    """Keras's own progress bar on a terminal, one line per epoch in a log file, and nothing
    when SLIMPIPE_QUIET is set (tests)."""
    if os.environ.get("SLIMPIPE_QUIET", "") not in ("", "0"):
        return 0
    return 1 if sys.stdout.isatty() else 2


def output_is_probabilities(model) -> bool:
    """Whether the model ends in a softmax (so the loss must not apply one again)."""
    import tf_keras as keras

    last = model.layers[-1]
    # tfmot wrappers (pruning, clustering, QAT) keep the real layer in `.layer`.
    while hasattr(last, "layer") and isinstance(last.layer, keras.layers.Layer):
        last = last.layer
    if isinstance(last, keras.layers.Softmax):
        return True
    return getattr(getattr(last, "activation", None), "__name__", "") == "softmax"


def check_learning_rate(stage: str, value) -> None:
    from pipeline.stage import require

    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
    require(ok, stage, f"learning_rate must be a number > 0 (e.g. 1e-3). Received: learning_rate={value!r}")


def steps_per_epoch(ctx, batch_size: int) -> int:
    return math.ceil(len(ctx.data.x_train) / batch_size)


LR_DECAYS = ("constant", "cosine")


def check_lr_decay(stage: str, value) -> None:
    from pipeline.stage import require

    require(value in LR_DECAYS, stage, f"lr_decay must be one of {', '.join(map(repr, LR_DECAYS))}. "
            f"Received: lr_decay={value!r}")


def fit(model, ctx, *, epochs: int, batch_size: int, learning_rate: float, callbacks=(),
        lr_decay: str = "constant"):
    """Compile `model` in place and train it on the run's training set. Returns the History.

    `lr_decay="cosine"` anneals the learning rate to 0 over the run (settles the weights; on
    Fashion-MNIST it is worth about half a point of test accuracy over a constant rate).
    """
    import tf_keras as keras

    keras.utils.set_random_seed(ctx.seed)
    if lr_decay == "cosine":
        learning_rate = keras.optimizers.schedules.CosineDecay(
            learning_rate, max(1, epochs * steps_per_epoch(ctx, batch_size)))
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=not output_is_probabilities(model)),
        metrics=["accuracy"],
    )
    return model.fit(ctx.data.train_dataset(batch_size, seed=ctx.seed), epochs=epochs,
                     callbacks=list(callbacks), verbose=verbosity())
