"""Shared fixtures: a tiny learnable data set and a tiny CNN, so stage tests run in seconds.

The tiny data set is synthetic on purpose (a bright square whose position is the class, plus
noise): unit tests check mechanics such as sparsity, parity and file formats. Accuracy claims
are only made by the end-to-end tests, on real Fashion-MNIST.
"""
import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"

import numpy as np
import pytest

from slimpipe.pipeline.context import RunContext
from slimpipe.pipeline.data import Dataset

TINY_SHAPE = (12, 12, 1)
TINY_CLASSES = 4


def make_tiny_data(n_train: int = 512, n_test: int = 128, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)

    def split(n):
        y = rng.integers(0, TINY_CLASSES, n)
        x = rng.normal(0.0, 0.15, (n, *TINY_SHAPE)).astype("float32")
        for i, cls in enumerate(y):
            r, c = divmod(int(cls), 2)
            x[i, 1 + 6 * r: 5 + 6 * r, 1 + 6 * c: 5 + 6 * c, 0] += 1.0
        return x, y.astype("int64")

    x_train, y_train = split(n_train)
    x_test, y_test = split(n_test)
    return Dataset("tiny", x_train, y_train, x_test, y_test,
                   labels=tuple(f"corner{i}" for i in range(TINY_CLASSES)))


def make_tiny_model(seed: int = 0):
    import tf_keras as keras

    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.layers.Input(TINY_SHAPE),
        keras.layers.Conv2D(8, 3, activation="relu", name="conv"),
        keras.layers.MaxPooling2D(name="pool"),
        keras.layers.Flatten(name="flatten"),
        keras.layers.Dense(32, activation="relu", name="dense"),
        keras.layers.Dense(TINY_CLASSES, name="logits"),
    ], name="tiny")


@pytest.fixture(scope="session")
def tiny_data() -> Dataset:
    return make_tiny_data()


@pytest.fixture
def tiny_model():
    return make_tiny_model()


@pytest.fixture
def ctx(tmp_path, tiny_data) -> RunContext:
    c = RunContext(data=tiny_data, out_dir=tmp_path, model_name="tiny")
    c.stage_dir = tmp_path / "stage"
    return c
