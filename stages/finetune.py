"""Fine-tuning: the parameters every training stage shares, and one compile-and-fit for all.

A training stage (train, prune, cluster, the QAT modes of quantize, structured_prune) derives
from `FineTune`, so its recipe parameters `epochs`, `batch_size`, `learning_rate`, `lr_decay`,
`distill`, `temperature` and `dropout` are declared and checked in one place; a stage changes
only their defaults:

>>> @dataclass(frozen=True)
... class Cluster(FineTune):
...     name: ClassVar[str] = "cluster"
...     learning_rate: float = 1e-5
>>> Cluster(epochs=1).fit(model, ctx)            # compile and fit with the stage's settings
>>> fit(model, ctx, epochs=2, batch_size=64, learning_rate=1e-3,
...     callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
"""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from typing import ClassVar

import slimpipe.pipeline  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from slimpipe.pipeline.models import output_is_probabilities
from slimpipe.pipeline.stage import check_choice, check_count, is_number, require
from slimpipe.stages import replicas

LR_DECAYS = ("constant", "cosine")


@dataclass(frozen=True)
class FineTune:
    """The fine-tuning parameters of a training stage (see `fit` for what each does)."""

    name: ClassVar[str] = "fine-tune"
    min_epochs: ClassVar[int] = 0  # a stage that must train at least this many epochs raises it
    trains: ClassVar[bool] = True  # under --distribute, runs inside the strategy (pipeline.distribute)

    epochs: int = 1
    batch_size: int = 64
    learning_rate: float = 1e-3
    lr_decay: str = "constant"
    distill: float = 0.0
    temperature: float = 4.0
    dropout: float | None = None

    def __post_init__(self):
        n = self.name
        check_count(n, "epochs", self.epochs, minimum=self.min_epochs)
        check_count(n, "batch_size", self.batch_size, minimum=1)
        require(is_number(self.learning_rate) and self.learning_rate > 0, n, "learning_rate must be a "
                f"number > 0 (e.g. 1e-3). Received: learning_rate={self.learning_rate!r}")
        check_choice(n, "lr_decay", self.lr_decay, LR_DECAYS)
        require(is_number(self.distill) and 0 <= self.distill <= 1, n, "distill must be a weight in [0, 1] "
                f"for the teacher's soft targets (0 = off). Received: distill={self.distill!r}")
        require(is_number(self.temperature) and self.temperature > 0, n, "temperature must be a number > 0 "
                f"(e.g. 4). Received: temperature={self.temperature!r}")
        require(self.dropout is None or is_number(self.dropout) and 0 <= self.dropout < 1, n,
                "dropout must be a rate in [0, 1) for this stage's fine-tuning, or unset to keep the "
                f"model's own. Received: dropout={self.dropout!r}")

    def fit(self, model, ctx, *, epochs: int | None = None, callbacks=(), lr_decay: str | None = None):
        """Compile `model` in place and fit it with this stage's settings (`epochs` and
        `lr_decay` may be given for one phase of the stage, e.g. a structured pruning round)."""
        return fit(model, ctx, epochs=self.epochs if epochs is None else epochs, batch_size=self.batch_size,
                   learning_rate=self.learning_rate, callbacks=callbacks,
                   lr_decay=self.lr_decay if lr_decay is None else lr_decay, distill=self.distill,
                   temperature=self.temperature, dropout=self.dropout)


def verbosity() -> int:
    """Keras's own progress bar on a terminal, one line per epoch in a log file, and nothing
    when SLIMPIPE_QUIET is set (tests)."""
    if os.environ.get("SLIMPIPE_QUIET", "") not in ("", "0"):
        return 0
    return 1 if sys.stdout.isatty() else 2


def steps_per_epoch(ctx, batch_size: int) -> int:
    return math.ceil(len(ctx.data.x_train) / batch_size)


def fit(model, ctx, *, epochs: int, batch_size: int, learning_rate: float, callbacks=(),
        lr_decay: str = "constant", distill: float = 0.0, temperature: float = 4.0,
        dropout: float | None = None):
    """Compile `model` in place and train it on the run's training set. Returns the History.

    `lr_decay="cosine"` anneals the learning rate to 0 over the run (settles the weights; on
    Fashion-MNIST it is worth about half a point of test accuracy over a constant rate).
    `distill` > 0 fine-tunes against the run's dense baseline as a teacher as well (Hinton et
    al., "Distilling the Knowledge in a Neural Network"): the loss is
    (1 - distill) * cross-entropy(labels) + distill * T^2 * KL(teacher_T || student_T), with both
    logit sets softened by `temperature` T. It is what lets a heavily compressed model recover
    the accuracy the teacher had.
    `dropout` (when not None) sets the rate of every Dropout layer for this fit only; the rates
    are put back afterwards, so the saved model's architecture is unchanged. A heavily pruned
    student underfits (its training accuracy is no higher than its test accuracy), and the
    baseline's dropout then only slows its recovery.
    """
    import tf_keras as keras

    keras.utils.set_random_seed(ctx.seed)
    if lr_decay == "cosine":
        learning_rate = keras.optimizers.schedules.CosineDecay(
            learning_rate, max(1, epochs * steps_per_epoch(ctx, batch_size)))
    loss, metric, data = objective(model, ctx, batch_size, distill=distill, temperature=temperature)
    rates = _set_dropout(model, dropout) if dropout is not None else []
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss, metrics=[metric])
    # One iterator for the whole run: Keras otherwise makes a new one per epoch, and destroying
    # the old one (mid-prefetch, shuffle buffer full) stalled for up to 9 s per epoch here (the
    # default recipe's 20-epoch train stage: 317 s before, 267 s after). Each pass reshuffles.
    data, callbacks = data.repeat(), list(callbacks)
    dist = replicas.active(ctx)  # under --distribute: sharded data, backups, replicas checked
    if dist is not None:
        data, callbacks = replicas.prepare_fit(model, data, dist, callbacks)
    try:
        history = model.fit(data, epochs=epochs, steps_per_epoch=steps_per_epoch(ctx, batch_size),
                            callbacks=callbacks, verbose=verbosity())
    finally:
        for layer, rate in rates:
            layer.rate = rate
    if dist is not None:
        replicas.finish_fit(model, dist)
    return history


def objective(model, ctx, batch_size: int, *, distill: float = 0.0, temperature: float = 4.0):
    """(loss, metric, training batches) of a fit: cross-entropy on the labels, or with `distill`
    the distillation loss on batches whose targets carry the teacher's logits. The loss is
    per example and Keras reduces it, so under tf.distribute it is scaled for the number of
    replicas like any compiled loss."""
    import tf_keras as keras

    probabilities = output_is_probabilities(model)
    if distill:
        return _distillation(probabilities, distill, temperature), accuracy, _with_teacher(ctx, batch_size)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=not probabilities)
    return loss, "accuracy", ctx.data.train_dataset(batch_size, seed=ctx.seed)


def _set_dropout(model, rate: float) -> list:
    """Set every Dropout layer's rate (nested models and tfmot wrappers included); returns
    [(layer, its old rate)]."""
    import tf_keras as keras

    old = []

    def visit(layer):
        inner = getattr(layer, "layer", None)
        if isinstance(inner, keras.layers.Layer):
            visit(inner)
        for sub in getattr(layer, "layers", None) or ():
            visit(sub)
        if isinstance(layer, keras.layers.Dropout) and all(layer is not seen for seen, _ in old):
            old.append((layer, layer.rate))
            layer.rate = float(rate)

    visit(model)
    return old


def _with_teacher(ctx, batch_size: int):
    """The training set with targets [label, teacher logits...] (one float row per example)."""
    import numpy as np

    from slimpipe.pipeline.errors import ConfigError

    if not ctx.baseline:
        raise ConfigError("distill needs a trained dense baseline as the teacher: put 'train' before "
                          "this stage, or set distill = 0")
    logits = ctx.memo(("teacher_logits", ctx.find(ctx.baseline).id), lambda: _teacher_logits(ctx))
    labels = np.asarray(ctx.data.y_train, dtype=np.float32).reshape(-1, 1)
    return ctx.data.train_dataset(batch_size, seed=ctx.seed, targets=np.concatenate([labels, logits], 1))


def _teacher_logits(ctx):
    """The baseline's logits on the training set (3.5-6 s for the CNN on 60k images here; a
    run's distilled stages share them through ctx.memo)."""
    import numpy as np

    teacher = ctx.keras_model(ctx.find(ctx.baseline))
    logits = ctx.data.predict(teacher, "train", batch_size=512).astype(np.float32)
    return np.log(np.clip(logits, 1e-7, 1.0)) if output_is_probabilities(teacher) else logits


def _distillation(probabilities: bool, weight: float, temperature: float):
    import tensorflow as tf

    def loss(target, output):
        labels, teacher = tf.cast(target[:, 0], tf.int32), target[:, 1:]
        student = tf.math.log(tf.clip_by_value(output, 1e-7, 1.0)) if probabilities else output
        hard = tf.keras.losses.sparse_categorical_crossentropy(labels, student, from_logits=True)
        soft_teacher = tf.nn.softmax(teacher / temperature)
        soft = tf.reduce_sum(soft_teacher * (tf.nn.log_softmax(teacher / temperature)
                                             - tf.nn.log_softmax(student / temperature)), axis=-1)
        return (1 - weight) * hard + weight * temperature ** 2 * soft

    return loss


def accuracy(target, output):  # named so that logs and History say 'accuracy'
    import tensorflow as tf

    labels = tf.cast(target[:, 0], tf.int64)
    return tf.cast(tf.equal(tf.argmax(output, axis=-1), labels), tf.float32)
