"""Your own images: dir:PATH, a folder of class subfolders, as
`keras.utils.image_dataset_from_directory` reads it.

    PATH/cat/*.jpg  PATH/dog/*.png ...              one folder: a seeded, stratified split
    PATH/train/cat/...  PATH/test/cat/...           train/ and test/: they are the splits

Class names are the subfolder names, sorted (class i = the i-th name, as Keras numbers them).
Files ending in .jpg, .jpeg, .png, .bmp or .gif (any case) are images, searched recursively
within each class folder; other files and hidden files and folders are ignored.

>>> ds = load_image_folder("photos", image_size=(64, 64), channels=None, seed=0)
>>> ds.labels, ds.x_train.shape
(('cat', 'dog'), (160, 64, 64, 3))
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from slimpipe.pipeline.data.dataset import Dataset, stratified_split, stratified_subset
from slimpipe.pipeline.data.image_array import ImageArray
from slimpipe.pipeline.data.image_store import open_store
from slimpipe.pipeline.errors import ConfigError

IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")
DEFAULT_TEST_SPLIT = 0.2
DEFAULT_IMAGE_SIZE = (64, 64)  # for built-in models; a model file's own input size wins
_LAYOUT = "PATH/<class>/<images>, or PATH/train/<class>/... and PATH/test/<class>/..."


@dataclass(frozen=True)
class Listing:
    root: Path
    classes: tuple[str, ...]
    files: tuple[Path, ...]  # class by class, each class's files sorted by path
    labels: np.ndarray  # int64 class index of each file
    test: np.ndarray | None  # bool per file when train/ and test/ folders give the split
    ignored: int  # non-image files (by extension) left out


def list_image_folder(path: str | Path) -> Listing:
    """The images of a class-folder tree, and which are test images if train/ and test/ exist."""
    root = Path(path).expanduser()
    if not str(path) or not root.is_dir():
        raise ConfigError(f"dir:{path} is not a folder: pass dir:PATH with a folder of class "
                          f"subfolders of images ({_LAYOUT})")
    root = root.resolve()
    subdirs = _subfolders(root)
    if "train" in subdirs or "test" in subdirs:
        if not {"train", "test"} <= set(subdirs):
            have, lack = ("train", "test") if "train" in subdirs else ("test", "train")
            raise ConfigError(f"'{root}' has {have}/ but no {lack}/: give it both, with the same "
                              f"class folders, or point dir: at {have}/ to split it by --test-split")
        train, test = (_list_classes(root / s) for s in ("train", "test"))
        if train[0] != test[0]:
            only_train = sorted(set(train[0]) - set(test[0]))
            only_test = sorted(set(test[0]) - set(train[0]))
            raise ConfigError(f"'{root}': train/ and test/ have different class folders (only in "
                              f"train/: {', '.join(only_train) or 'none'}; only in test/: "
                              f"{', '.join(only_test) or 'none'}): give both the same class folders")
        classes, files, labels = train[0], train[1] + test[1], np.concatenate([train[2], test[2]])
        is_test = np.arange(len(files)) >= len(train[1])
        return Listing(root, classes, files, labels, is_test, train[3] + test[3])
    classes, files, labels, ignored = _list_classes(root)
    return Listing(root, classes, files, labels, None, ignored)


def _subfolders(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def _list_classes(folder: Path):
    """(class names, files, labels, ignored count) of one folder of class folders."""
    classes = tuple(_subfolders(folder))
    if len(classes) < 2:
        raise ConfigError(f"'{folder}' has {len(classes)} class folder{'s' if len(classes) != 1 else ''}"
                          f"{': ' + classes[0] if classes else ''}, expected at least 2 (one subfolder "
                          f"of images per class: {_LAYOUT})")
    files, labels, ignored = [], [], 0
    for index, name in enumerate(classes):
        found, skipped = _images_in(folder / name)
        if not found:
            raise ConfigError(f"class folder '{folder / name}' has no images "
                              f"({', '.join(IMAGE_EXTENSIONS)}): add images or remove the folder")
        files += found
        labels += [index] * len(found)
        ignored += skipped
    return classes, tuple(files), np.asarray(labels, dtype=np.int64), ignored


def _images_in(folder: Path) -> tuple[list[Path], int]:
    """Image files under `folder`, recursively, in Keras's order (folders by path, then names)."""
    found, ignored = [], 0
    for dirpath, dirnames, filenames in sorted(os.walk(folder), key=lambda w: w[0]):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            if name.lower().endswith(IMAGE_EXTENSIONS):
                found.append(Path(dirpath) / name)
            else:
                ignored += 1
    return found, ignored


def load_image_folder(path: str | Path, *, image_size=None, channels: int | None = None,
                      test_split: float | None = None, seed: int = 0, limit: int | None = None,
                      skip_bad_images: bool = False, cache_dir=None,
                      log: Callable[[str], None] | None = None) -> Dataset:
    """dir:PATH as a Dataset whose x_train and x_test are ImageArrays over a decoded store.

    `image_size` (height, width) defaults to DEFAULT_IMAGE_SIZE; `channels` None takes 1 when
    every image is grayscale, else 3. Without train/ and test/ folders, `test_split` (default
    DEFAULT_TEST_SPLIT) of each class is the test split, chosen by `seed`.
    """
    split = _check_test_split(test_split)
    listing = list_image_folder(path)
    if test_split is not None and listing.test is not None:
        raise ConfigError(f"'{listing.root}' has train/ and test/ folders, which are the splits, "
                          f"but --test-split {test_split} was given too: drop --test-split")
    size = tuple(image_size or DEFAULT_IMAGE_SIZE)
    if channels not in (None, 1, 3, 4):
        raise ConfigError(f"the model takes {channels}-channel images; images from a folder can be "
                          "given 1 (gray), 3 (RGB) or 4 (RGBA) channels: use a model for one of those")
    store = open_store(listing.files, listing.root, size=size, channels=channels,
                       skip_bad=skip_bad_images, cache_dir=cache_dir, log=log)
    kept = store.kept
    labels = listing.labels[kept]
    for index, name in enumerate(listing.classes):
        if not (labels == index).any():
            raise ConfigError(f"class folder '{name}' in '{listing.root}' has no decodable images "
                              "left after skipping bad ones: add images or remove the folder")
    is_test = listing.test[kept] if listing.test is not None else stratified_split(labels, split, seed=seed)
    train, test = np.flatnonzero(~is_test), np.flatnonzero(is_test)
    if limit is not None and limit < len(train):
        train = train[stratified_subset(labels[train], limit, seed=seed)]

    def split_of(rows):
        return ImageArray(store.images, kept[rows], divisor=255.0, digest=store.digest), labels[rows]

    (x_train, y_train), (x_test, y_test) = split_of(train), split_of(test)
    if len(y_test) == 0:
        raise ConfigError(f"'{listing.root}' gives no test images (each class has one image): add "
                          "images, or a test/ folder beside train/")
    details = {"source": str(listing.root), "images": len(listing.files),
               "split": "train/ and test/ folders" if listing.test is not None
               else f"seeded stratified split: test_split={split}, seed={seed}",
               "skipped_images": len(store.skipped), "ignored_files": listing.ignored,
               "cache": str(store.folder)}
    if store.skipped:
        details["skipped"] = [f"{name} ({why})" for name, why in store.skipped[:20]]
    if store.built_seconds is not None:
        details["decode_seconds"] = store.built_seconds
    return Dataset(f"dir:{path}", x_train, y_train, x_test, y_test, listing.classes, details=details)


def _check_test_split(test_split) -> float:
    if test_split is None:
        return DEFAULT_TEST_SPLIT
    ok = isinstance(test_split, (int, float)) and not isinstance(test_split, bool) and 0 < test_split < 1
    if not ok:
        raise ConfigError(f"--test-split must be a fraction between 0 and 1, e.g. 0.2. Received: "
                          f"{test_split!r}")
    return float(test_split)
