"""Data sets: real files in their upstream formats, or your own images, as normalized NHWC data.

>>> ds = load_dataset("fashion_mnist", limit=2000)
>>> ds.x_train.shape, ds.num_classes
((2000, 28, 28, 1), 10)
>>> ds = load_dataset("dir:photos", image_size=(64, 64))    # photos/cat/*.jpg, photos/dog/*.jpg

One module per source: `idx` (MNIST, Fashion-MNIST), `cifar` (CIFAR-10), `npz`, `tfds_sets`,
`folder` (image folders, decoded once by `image_store` and read per batch through
`image_array`); `search` finds the files of the named sets; `dataset` is the Dataset type
every loader returns; `input_range` matches a model's expected pixel range.
"""
from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path
from typing import Callable

import numpy as np

from slimpipe.pipeline.data.cifar import CIFAR10_LABELS, CIFAR_ARCHIVES, load_cifar10
from slimpipe.pipeline.data.dataset import (AS_STORED, INPUT_RANGES, Dataset, batched, from_uint8,
                                            hash_array, resize_images, stratified_split,
                                            stratified_subset)
from slimpipe.pipeline.data.folder import DEFAULT_IMAGE_SIZE, DEFAULT_TEST_SPLIT, load_image_folder
from slimpipe.pipeline.data.idx import FASHION_MNIST_LABELS, IDX_FILES, load_mnist_like, read_idx
from slimpipe.pipeline.data.image_array import ImageArray
from slimpipe.pipeline.data.npz import load_npz
from slimpipe.pipeline.data.tfds_sets import load_tfds
from slimpipe.pipeline.errors import ConfigError

__all__ = ["AS_STORED", "CIFAR10_LABELS", "CIFAR_ARCHIVES", "DATASETS", "DEFAULT_IMAGE_SIZE",
           "DEFAULT_TEST_SPLIT", "FASHION_MNIST_LABELS", "IDX_FILES", "INPUT_RANGES",
           "SYSTEM_DATA_DIRS", "Dataset", "ImageArray", "batched", "from_uint8", "hash_array",
           "load_dataset", "read_idx", "resize_images", "stratified_split", "stratified_subset"]

DATASETS: dict[str, str] = {
    "fashion_mnist": "Fashion-MNIST: 28x28x1 clothing images, 10 classes, 60k train / 10k test (default)",
    "mnist": "MNIST: 28x28x1 handwritten digits, 10 classes, 60k train / 10k test",
    "cifar10": "CIFAR-10: 32x32x3 photos, 10 classes, 50k train / 10k test",
    "npz:PATH": "your own .npz with arrays x_train, y_train, x_test, y_test (optional labels)",
    "dir:PATH": "your own images (JPEG, PNG, BMP, GIF), one subfolder per class (or train/ and test/ of them)",
    "tfds:NAME": "any TensorFlow Datasets image-classification set, e.g. tfds:rock_paper_scissors "
                 "(needs tensorflow-datasets)",
}

# Distribution packages (Debian: dataset-fashion-mnist). Module-level so tests can replace it.
SYSTEM_DATA_DIRS: dict[str, tuple[Path, ...]] = {
    "fashion_mnist": (Path("/usr/share/datasets/fashion-mnist"),),
}


def load_dataset(spec: str = "fashion_mnist", *, limit: int | None = None,
                 data_dir: str | Path | None = None, image_size: tuple[int, int] | None = None,
                 seed: int = 0, channels: int | None = None, test_split: float | None = None,
                 skip_bad_images: bool = False, log: Callable[[str], None] | None = None) -> Dataset:
    """Load a data set by name (see `DATASETS`) as float32 NHWC images with int64 labels.

    `limit` keeps a deterministic, class-stratified subset of that many training examples
    (the test set stays whole). `image_size` (height, width) resizes all images. For dir:PATH
    only: `channels` (None: 1 if every image is gray, else 3), `test_split`, `skip_bad_images`
    and `log` (told when a folder is decoded); see `folder.load_image_folder`.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, np.integer))
                              or limit < 1):
        raise ConfigError(f"limit must be a whole number >= 1, got {limit!r}: "
                          "pass e.g. limit=2000, or leave it unset for the whole training set")
    if image_size is not None:
        image_size = _check_image_size(image_size)
    spec = str(spec).strip()
    if spec.startswith("dir:"):
        return load_image_folder(spec[len("dir:"):], image_size=image_size, channels=channels,
                                 test_split=test_split, seed=seed, limit=limit,
                                 skip_bad_images=skip_bad_images, log=log)
    if test_split is not None or skip_bad_images:
        option = "--test-split" if test_split is not None else "--skip-bad-images"
        raise ConfigError(f"{option} applies to image folders (dir:PATH), not to data set '{spec}': "
                          f"drop {option}")
    if spec.startswith("npz:"):
        ds = load_npz(spec[len("npz:"):], name=spec)
    elif spec.startswith("tfds:"):
        # tfds reads lazily, so it subsets and resizes while reading instead of afterwards.
        return load_tfds(spec[len("tfds:"):], data_dir=data_dir, image_size=image_size,
                         limit=limit, seed=seed)
    elif spec in ("fashion_mnist", "mnist"):
        ds = load_mnist_like(spec, data_dir, system=SYSTEM_DATA_DIRS.get(spec, ()))
    elif spec == "cifar10":
        ds = load_cifar10(data_dir)
    else:
        raise ConfigError(_unknown_dataset_message(spec))
    if limit is not None and limit < len(ds.y_train):
        keep = stratified_subset(ds.y_train, limit, seed=seed)
        ds = dataclasses.replace(ds, x_train=ds.x_train[keep], y_train=ds.y_train[keep])
    if image_size is not None and ds.input_shape[:2] != image_size:
        ds = dataclasses.replace(ds, x_train=resize_images(ds.x_train, image_size),
                                 x_test=resize_images(ds.x_test, image_size))
    return ds


def _unknown_dataset_message(spec: str) -> str:
    known = [k for k in DATASETS if ":" not in k]
    close = difflib.get_close_matches(spec, known, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return (f"unknown data set '{spec}': {hint}expected one of {', '.join(known)}, "
            "npz:PATH, dir:PATH or tfds:NAME (see `slimpipe list`)")


def _check_image_size(image_size) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in image_size)
        ok = h >= 1 and w >= 1 and (h, w) == tuple(image_size)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ConfigError(f"image_size must be (height, width) with whole numbers >= 1, "
                          f"got {image_size!r}: pass e.g. image_size=(64, 64)")
    return h, w
