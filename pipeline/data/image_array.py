"""A float32 view of uint8 images kept on disk: read and normalized a batch at a time.

A folder of images is decoded once into a uint8 file (see `image_store`); the data set's
`x_train` and `x_test` are `ImageArray`s over its rows. Indexing one returns a float32 NumPy
array, as indexing the in-memory arrays of the other data sets does, so `x[:256]`, `x[[3, 7]]`
and `len(x)` work unchanged; nothing holds the whole split as float32 unless asked to with
`np.asarray(x)`.

>>> x = ImageArray(images, rows=np.arange(1000), divisor=255.0, digest=store_sha256)
>>> x.shape, x.dtype
((1000, 64, 64, 3), dtype('float32'))
>>> x[:32].max() <= 1.0
True
"""
from __future__ import annotations

import numpy as np


class ImageArray:
    """Rows `rows` of the uint8 array `images` (N, H, W, C), as float32 `pixel / divisor`."""

    def __init__(self, images: np.ndarray, rows, *, divisor: float, digest: str):
        self.images = images
        self.rows = np.asarray(rows, dtype=np.int64)
        self.divisor = float(divisor)
        self.digest = digest  # sha256 of `images`' content, for cache keys

    dtype = np.dtype(np.float32)
    ndim = 4

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.rows), *self.images.shape[1:])

    def __len__(self) -> int:
        return len(self.rows)

    def __repr__(self) -> str:
        return f"ImageArray(shape={self.shape}, divisor={self.divisor:g})"

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, tuple):  # x[i, ...]: pick images first, then index within them
            first, rest = key[0], key[1:]
            x = self[first]
            return x[rest] if np.ndim(self.rows[first]) == 0 else x[(slice(None), *rest)]
        rows = self.rows[key]
        return np.asarray(self.images[rows]).astype(np.float32) / np.float32(self.divisor)

    def __array__(self, dtype=None, copy=None):
        x = self[:]
        return x if dtype is None else x.astype(dtype)

    def __iter__(self):
        for start in range(0, len(self), 256):
            yield from self[start:start + 256]

    def take(self, indices) -> "ImageArray":
        """The rows at `indices`, still on disk (no pixels are read)."""
        return ImageArray(self.images, self.rows[np.asarray(indices, dtype=np.int64)],
                          divisor=self.divisor, digest=self.digest)

    def with_divisor(self, divisor: float) -> "ImageArray":
        return ImageArray(self.images, self.rows, divisor=divisor, digest=self.digest)

    def update_hash(self, h) -> None:
        """Feed what determines these values into hashlib object `h` (not the pixels: the
        store's content digest stands for them)."""
        h.update(str((self.shape, self.dtype)).encode())
        h.update(f"image-store {self.digest} / {self.divisor!r}".encode())
        h.update(memoryview(np.ascontiguousarray(self.rows)).cast("B"))

    def tf_dataset(self, targets, batch_size: int, *, shuffle: bool, seed: int):
        """A tf.data pipeline of (x, targets) batches (x alone when `targets` is None) that
        reads each batch from disk when it is needed. Shuffling permutes row numbers (8 bytes
        each), so the whole split is shuffled, not a window of it; up to 10,000 examples the
        batches are those of the same arrays held in memory (`Dataset.train_dataset`)."""
        import tensorflow as tf

        n = len(self)
        ds = tf.data.Dataset.range(n)
        if targets is not None:
            ds = tf.data.Dataset.zip((ds, tf.data.Dataset.from_tensor_slices(targets)))
        if shuffle:
            ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
        ds = ds.batch(batch_size)
        shape = (None, *self.shape[1:])

        def load(index):
            x = tf.numpy_function(lambda i: self[i], [index], tf.float32, stateful=False)
            x.set_shape(shape)
            return x

        if targets is None:
            return ds.map(load)
        return ds.map(lambda index, target: (load(index), target))
