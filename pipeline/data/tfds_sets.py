"""Any TensorFlow Datasets image-classification set: tfds:NAME (needs tensorflow-datasets).

>>> ds = load_tfds("rock_paper_scissors", data_dir=None, image_size=(64, 64), limit=2000, seed=0)

Images stay encoded until the subset is chosen (decoding is the cost), then are resized and
scaled to [0, 1]. A set without a test split gives its last 20% of train as the test split.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from slimpipe.pipeline.data.dataset import Dataset, stratified_subset
from slimpipe.pipeline.data.search import first_line
from slimpipe.pipeline.errors import ConfigError

_TFDS_DEFAULT_SIZE = (64, 64)


def _has_test_split(info) -> bool:
    # Mocked or not-yet-prepared builders may list no splits at all: then try "test".
    names = set(info.splits.keys())
    return not names or "test" in names


def load_tfds(name: str, *, data_dir, image_size, limit, seed) -> Dataset:
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise ConfigError(f"tfds:{name} needs tensorflow-datasets: pip install 'slimpipe[tfds]'") from None
    if not name:
        raise ConfigError("tfds: needs a data set name, e.g. tfds:rock_paper_scissors")
    data_dir = None if data_dir is None else str(Path(data_dir).expanduser())
    try:
        info, image_feature, train, test = _open(tfds, name, data_dir)
    except ConfigError:
        raise
    except Exception as exc:  # unknown name, missing download, no network, bad split ...
        raise ConfigError(f"tfds:{name} could not be loaded ({first_line(exc)}): check the name in the "
                          "TFDS catalog, or run `tfds build` on a machine with internet and pass its "
                          "data_dir") from None
    shape = tuple(image_feature.shape)
    if image_size is None:
        image_size = shape[:2] if None not in shape[:2] else _TFDS_DEFAULT_SIZE
    labels = tuple(info.features[info.supervised_keys[1]].names)

    y_train = np.fromiter(tfds.as_numpy(train.map(lambda x, y: y)), dtype=np.int64)
    if test is None:  # carve the last 20% of train, deterministic (tfds order is fixed)
        n_test = max(1, len(y_train) // 5)
        train_idx = np.arange(len(y_train) - n_test)
        test_idx, test_source = np.arange(len(y_train) - n_test, len(y_train)), train
    else:
        train_idx, test_idx, test_source = np.arange(len(y_train)), None, test
    keep = None if test_idx is None else train_idx  # None: every example
    if limit is not None and limit < len(train_idx):
        keep = train_idx[stratified_subset(y_train[train_idx], limit, seed=seed)]

    def decode(ds, indices):
        return _decode(tfds, ds, indices, len(y_train), image_feature, image_size, name)

    x_train, y_tr = decode(train, keep)
    x_test, y_te = decode(test_source, test_idx)
    return Dataset(f"tfds:{name}", x_train, y_tr, x_test, y_te, labels)


def _open(tfds, name: str, data_dir):
    """(info, image feature, train split, test split or None), images left encoded."""
    info = tfds.builder(name, data_dir=data_dir).info
    keys = info.supervised_keys
    if not keys or len(keys) != 2 or not hasattr(info.features[keys[1]], "names"):
        raise ConfigError(f"tfds:{name} is not an image-classification set (supervised keys {keys}): "
                          "pick one with (image, label) pairs, e.g. tfds:rock_paper_scissors")
    image_key = keys[0]
    image_feature = info.features[image_key]
    shape = tuple(getattr(image_feature, "shape", ()))
    if len(shape) != 3 or shape[-1] is None:
        raise ConfigError(f"tfds:{name} images have shape {shape}, expected (H, W, C) with a fixed "
                          "channel count: pick an image-classification set")

    def load(split):
        # SkipDecoding: images stay encoded until the subset is chosen (decoding is the cost).
        ds, _ = tfds.load(name, split=split, as_supervised=True, data_dir=data_dir, with_info=True,
                          decoders={image_key: tfds.decode.SkipDecoding()})
        return ds

    return info, image_feature, load("train"), load("test") if _has_test_split(info) else None


def _decode(tfds, ds, indices, n: int, image_feature, image_size, name: str):
    """float32 [0, 1] images resized to `image_size` and int64 labels of the examples at
    `indices` (every example when None), in order."""
    import tensorflow as tf

    ds = ds.enumerate()
    if indices is not None:  # keep only the chosen positions, before any image is decoded
        mask = np.zeros(n, dtype=bool)
        mask[indices] = True
        table = tf.constant(mask)
        ds = ds.filter(lambda i, xy: tf.gather(table, i))

    def to_float(i, xy):
        img = image_feature.decode_example(xy[0])
        img = tf.image.resize(tf.cast(img, tf.float32), image_size, antialias=True) / 255.0
        return tf.clip_by_value(img, 0.0, 1.0), xy[1]

    xs, ys = [], []
    for x, y in tfds.as_numpy(ds.map(to_float, num_parallel_calls=tf.data.AUTOTUNE).batch(256)):
        xs.append(x)
        ys.append(y)
    if not xs:
        raise ConfigError(f"tfds:{name} has an empty split: pick another data set")
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys).astype(np.int64)
