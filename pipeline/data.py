"""Data sets: real files in their upstream formats, turned into normalized NHWC arrays.

>>> ds = load_dataset("fashion_mnist", limit=2000)
>>> ds.x_train.shape, ds.num_classes
((2000, 28, 28, 1), 10)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Dataset:
    name: str
    x_train: np.ndarray  # float32, NHWC, normalized as `normalization` says
    y_train: np.ndarray  # int64 class indices
    x_test: np.ndarray
    y_test: np.ndarray
    labels: tuple[str, ...]
    # How raw pixels become model input: x = raw * scale + offset (recorded in bundles).
    normalization: dict[str, Any] = field(default_factory=lambda: {"scale": 1 / 255.0, "offset": 0.0})

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def train_dataset(self, batch_size: int, *, shuffle: bool = True, seed: int = 0):
        """A tf.data pipeline over the training arrays (cached, shuffled, prefetched)."""
        import tensorflow as tf

        ds = tf.data.Dataset.from_tensor_slices((self.x_train, self.y_train)).cache()
        if shuffle:
            ds = ds.shuffle(min(len(self.x_train), 10_000), seed=seed, reshuffle_each_iteration=True)
        return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)

    def test_dataset(self, batch_size: int):
        import tensorflow as tf

        ds = tf.data.Dataset.from_tensor_slices((self.x_test, self.y_test)).cache()
        return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
