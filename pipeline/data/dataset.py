"""The data set a run uses: train and test images (NHWC float32), labels, and how pixels
became model input.

>>> ds = Dataset("toy", x_train, y_train, x_test, y_test, labels=("cat", "dog"))
>>> for x, y in ds.train_dataset(64, seed=0): ...
>>> logits = ds.predict(model, "test", batch_size=256)
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from slimpipe.pipeline.data.image_array import ImageArray
from slimpipe.pipeline.errors import ConfigError

# How the model input relates to 8-bit pixels: "0-1" is pixel / 255, "0-255" the pixel itself.
INPUT_RANGES = ("0-1", "0-255")
AS_STORED = "as stored"  # float images from the user's file, used unchanged
_NORMALIZATION = {"0-1": {"scale": 1 / 255.0, "offset": 0.0}, "0-255": {"scale": 1.0, "offset": 0.0},
                  AS_STORED: {"scale": 1.0, "offset": 0.0}}


@dataclass(frozen=True)
class Dataset:
    name: str
    x_train: Any  # float32 NHWC: an np.ndarray, or an ImageArray read from disk per batch
    y_train: np.ndarray  # int64 class indices
    x_test: Any
    y_test: np.ndarray
    labels: tuple[str, ...]
    # How raw pixels become model input: x = raw * scale + offset (recorded in bundles).
    normalization: dict[str, Any] = field(default_factory=lambda: dict(_NORMALIZATION["0-1"]))
    input_range: str = "0-1"  # one of INPUT_RANGES, or AS_STORED
    details: Mapping[str, Any] = field(default_factory=dict)  # for the report: source, skipped files...

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def train_dataset(self, batch_size: int, *, shuffle: bool = True, seed: int = 0, targets=None):
        """A tf.data pipeline of (x, y) training batches, shuffled and prefetched. `targets`
        replaces y (one row per training example), e.g. labels with a teacher's logits."""
        import tensorflow as tf

        y = self.y_train if targets is None else targets
        if isinstance(self.x_train, ImageArray):
            return prefetched(self.x_train.tf_dataset(y, batch_size, shuffle=shuffle, seed=seed))
        ds = tf.data.Dataset.from_tensor_slices((self.x_train, y))
        if shuffle:
            ds = ds.shuffle(min(len(self.x_train), 10_000), seed=seed, reshuffle_each_iteration=True)
        return batched(ds, batch_size)

    def test_dataset(self, batch_size: int):
        import tensorflow as tf

        if isinstance(self.x_test, ImageArray):
            return prefetched(self.x_test.tf_dataset(self.y_test, batch_size, shuffle=False, seed=0))
        return batched(tf.data.Dataset.from_tensor_slices((self.x_test, self.y_test)), batch_size)

    def predict(self, model, split: str, *, batch_size: int = 256) -> np.ndarray:
        """`model.predict` on every example of `split` ("train" or "test"), a batch at a time."""
        x = {"train": self.x_train, "test": self.x_test}[split]
        if isinstance(x, ImageArray):
            return model.predict(prefetched(x.tf_dataset(None, batch_size, shuffle=False, seed=0)),
                                 verbose=0)
        return model.predict(x, batch_size=batch_size, verbose=0)

    def with_input_range(self, input_range: str, reason: str) -> "Dataset":
        """The same images scaled for a model that expects `input_range` ("0-1" or "0-255")."""
        if input_range not in INPUT_RANGES:
            raise ConfigError(f"input range must be one of {', '.join(INPUT_RANGES)}. Received: "
                              f"{input_range!r}")
        details = {**self.details, "input_range_source": reason}
        if input_range == self.input_range:
            return dataclasses.replace(self, details=details)
        if self.input_range == AS_STORED:
            raise ConfigError(f"data set '{self.name}' holds float images, which are used as stored, "
                              f"so input range {input_range} ({reason}) cannot be applied: store "
                              "8-bit images (uint8), or scale the floats for the model yourself")
        return dataclasses.replace(
            self, x_train=rescale(self.x_train, input_range), x_test=rescale(self.x_test, input_range),
            normalization=dict(_NORMALIZATION[input_range]), input_range=input_range, details=details)

    def with_details(self, **details) -> "Dataset":
        return dataclasses.replace(self, details={**self.details, **details})

    def record(self) -> dict[str, Any]:
        """What the report says about the data (plain JSON types)."""
        return {"name": self.name, "classes": self.num_classes, "labels": list(self.labels),
                "input_shape": list(self.input_shape), "train_examples": len(self.y_train),
                "test_examples": len(self.y_test), "input_range": self.input_range,
                "normalization": dict(self.normalization), **self.details}


def rescale(x, input_range: str):
    """Images in [0, 1] to `input_range` and back: x * 255 for "0-255", x / 255 for "0-1"."""
    if isinstance(x, ImageArray):
        return x.with_divisor(255.0 if input_range == "0-1" else 1.0)
    return x * np.float32(255.0) if input_range == "0-255" else x / np.float32(255.0)


def _tf_options():
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    return options


def batched(ds, batch_size: int):
    """Batch and prefetch an in-memory dataset, with tf.data's autotuning off.

    With autotuning on, destroying a shuffled dataset's iterator at the end of `model.fit`
    stalled the process, idle, for 2 to 45 s in about half of the runs measured here (TF 2.21;
    the default recipe's train stage: 205 s for 160 s of epochs); with it off, never. Autotuning
    has nothing to tune here: the arrays are in memory, and two prefetched batches keep the
    model fed (the same epoch times)."""
    return ds.batch(batch_size).prefetch(2).with_options(_tf_options())


def prefetched(ds):
    """An already batched dataset, prefetched two batches ahead, autotuning off (see `batched`)."""
    return ds.prefetch(2).with_options(_tf_options())


def from_uint8(name, x_train, y_train, x_test, y_test, labels) -> Dataset:
    """uint8 images (N,H,W) or (N,H,W,C) -> float32 [0,1] NHWC; labels -> int64."""
    def prep(x):
        x = np.asarray(x)
        if x.ndim == 3:
            x = x[..., None]
        return x.astype(np.float32) / np.float32(255.0)

    return Dataset(name, prep(x_train), np.asarray(y_train).reshape(-1).astype(np.int64),
                   prep(x_test), np.asarray(y_test).reshape(-1).astype(np.int64), tuple(labels))


def stratified_subset(y: np.ndarray, limit: int, *, seed: int = 0) -> np.ndarray:
    """Sorted indices of `limit` examples, classes as balanced as `y` allows; same seed, same set.

    A seeded shuffle orders each class; examples are then taken by rank within their class,
    so every class contributes ~limit/K examples (all of a class's examples if it has fewer).
    """
    y = np.asarray(y)
    if limit >= len(y):
        return np.arange(len(y))
    perm = np.random.default_rng(seed).permutation(len(y))
    ys = y[perm]
    rank = np.empty(len(y), dtype=np.int64)
    for cls in np.unique(ys):
        members = ys == cls
        rank[members] = np.arange(members.sum())
    chosen = perm[np.lexsort((np.arange(len(y)), rank))[:limit]]
    return np.sort(chosen)


def stratified_split(y: np.ndarray, fraction: float, *, seed: int = 0) -> np.ndarray:
    """A boolean mask of the test examples: `fraction` of each class (rounded, at least one
    when the class has two or more), chosen by a seeded shuffle; same seed, same split."""
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), dtype=bool)
    for cls in np.unique(y):
        members = np.flatnonzero(y == cls)
        n = len(members)
        k = min(max(int(round(n * fraction)), 1), n - 1) if n >= 2 else 0
        test[rng.permutation(members)[:k]] = True
    return test


def hold_out(data: Dataset, fraction: float, *, seed: int = 0) -> tuple[Dataset, Dataset]:
    """(fit, search): `fraction` of each class of the training split held out as a validation
    split, chosen by `seed`. `fit` trains on the rest and keeps the test split; `search` trains
    on the same rest and evaluates on the validation split instead of the test split, so that
    every decision a search makes is made without the test set.

    >>> fit, search = hold_out(data, 0.1, seed=0)
    >>> len(fit.y_train) + len(search.y_test) == len(data.y_train)
    True
    """
    if not (isinstance(fraction, (int, float)) and 0 < fraction < 1):
        raise ConfigError(f"the validation split must be a fraction in (0, 1). Received: {fraction!r}")
    held = stratified_split(data.y_train, fraction, seed=seed)
    if held.sum() == 0 or held.all():
        raise ConfigError(f"data set '{data.name}' has {len(data.y_train)} training examples: too few to "
                          f"hold out {fraction:g} of each class for validation; use more data")
    rest, val = np.flatnonzero(~held), np.flatnonzero(held)
    record = {"fraction": fraction, "seed": seed, "examples": int(len(val)), "of": int(len(held))}
    x_rest, y_rest = _rows(data.x_train, rest), data.y_train[rest]
    fit = dataclasses.replace(data, x_train=x_rest, y_train=y_rest,
                              details={**data.details, "validation": record})
    search = dataclasses.replace(data, name=f"{data.name}[validation]", x_train=x_rest, y_train=y_rest,
                                 x_test=_rows(data.x_train, val), y_test=data.y_train[val],
                                 details={**data.details, "validation": record, "evaluated_on": "validation"})
    return fit, search


def _rows(x, idx: np.ndarray):
    return x.take(idx) if isinstance(x, ImageArray) else x[idx]


def resize_images(x: np.ndarray, size: tuple[int, int], batch: int = 1024) -> np.ndarray:
    """float32 NHWC images resized to `size` (bilinear, antialiased), `batch` at a time."""
    import tensorflow as tf

    # Bilinear/antialias weights are non-negative, so values stay within the input's range.
    out = [tf.image.resize(x[i:i + batch], size, antialias=True).numpy()
           for i in range(0, len(x), batch)]
    return np.concatenate(out).astype(np.float32)


def hash_array(h, arr) -> None:
    """Feed an array's shape, dtype and content into hashlib object `h`. An ImageArray feeds
    its store's digest instead of reading every pixel."""
    if isinstance(arr, ImageArray):
        arr.update_hash(h)
        return
    h.update(str((arr.shape, arr.dtype)).encode())
    h.update(memoryview(arr).cast("B") if arr.flags.c_contiguous else arr.tobytes())
