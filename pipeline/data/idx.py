"""MNIST and Fashion-MNIST from their upstream IDX files (or Keras's mnist.npz cache).

>>> read_idx("train-images-idx3-ubyte.gz").shape
(60000, 28, 28)
>>> ds = load_mnist_like("fashion_mnist", data_dir=None, system=(Path("/usr/share/datasets/fashion-mnist"),))
"""
from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path
from typing import Iterable

import numpy as np

from slimpipe.pipeline.data.dataset import Dataset, from_uint8
from slimpipe.pipeline.data.npz import read_npz
from slimpipe.pipeline.data.search import download, first_line, search_dirs
from slimpipe.pipeline.errors import ConfigError

FASHION_MNIST_LABELS = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
_DIGITS = tuple(str(i) for i in range(10))

# The four upstream IDX files, in the order (x_train, y_train, x_test, y_test).
IDX_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
# Keras caches Fashion-MNIST's four files in ~/.keras/datasets/fashion-mnist/ and MNIST as
# ~/.keras/datasets/mnist.npz.
_KERAS_FOLDER = {"fashion_mnist": "fashion-mnist", "mnist": "mnist"}

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (gzip-compressed or plain), as published by LeCun and Zalando.

    Header: two zero bytes, a type code (0x08 = uint8), the number of dimensions, then each
    dimension as a big-endian uint32; the data follows with no padding.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise ConfigError(f"IDX file '{path}' is unreadable or truncated ({first_line(exc)}): "
                          "download it again from the upstream site") from None
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise ConfigError(f"'{path}' is not an IDX file (header {raw[:4].hex() or 'empty'}, expected "
                          "00 00 <type> <ndim>, e.g. 00000803 for images): replace it with the "
                          "upstream file")
    ndim, dtype = raw[3], np.dtype(_IDX_DTYPES[raw[2]])
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ConfigError(f"IDX file '{path}' is truncated inside its header: download it again")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    expected = header + math.prod(dims) * dtype.itemsize
    if len(raw) != expected:
        raise ConfigError(f"IDX file '{path}' has {len(raw)} bytes but its header {dims} needs "
                          f"{expected}: the file is truncated or corrupt, download it again")
    return np.frombuffer(raw, dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _find_files(dirs: list[Path], names) -> list[Path] | None:
    """The first folder holding all `names` (each also accepted un-gzipped)."""
    for d in dirs:
        found = []
        for fname in names:
            options = [d / fname] + ([d / fname[:-3]] if fname.endswith(".gz") else [])
            hit = next((p for p in options if p.is_file()), None)
            if hit is None:
                break
            found.append(hit)
        else:
            return found
    return None


def load_mnist_like(name: str, data_dir, *, system: Iterable[Path] = ()) -> Dataset:
    """"fashion_mnist" or "mnist": the first folder (see `search_dirs`) with the four IDX files,
    else Keras's mnist.npz (MNIST), else Keras's download; a ConfigError saying where to put
    the files when all fail."""
    labels = FASHION_MNIST_LABELS if name == "fashion_mnist" else _DIGITS
    dirs = search_dirs(name, data_dir, keras_name=_KERAS_FOLDER[name], system=system)
    files = _find_files(dirs, IDX_FILES)
    if files is not None:
        x_train, y_train, x_test, y_test = (read_idx(p) for p in files)
        _check_mnist_arrays(name, files[0].parent, x_train, y_train, x_test, y_test)
        return from_uint8(name, x_train, y_train, x_test, y_test, labels)
    if name == "mnist":
        npz = next((d / "mnist.npz" for d in dirs if (d / "mnist.npz").is_file()), None)
        if npz is not None:
            return _load_mnist_npz(npz)
    arrays, why = download(name)
    if arrays is not None:
        (x_train, y_train), (x_test, y_test) = arrays
        return from_uint8(name, x_train, y_train, x_test, y_test, labels)
    if name == "fashion_mnist":
        where = ("in ~/.keras/datasets/fashion-mnist/ or $SLIMPIPE_DATA_DIR, "
                 "install them with `apt-get install dataset-fashion-mnist`")
    else:
        where = "(or the Keras cache mnist.npz) in ~/.keras/datasets/ or $SLIMPIPE_DATA_DIR"
    raise ConfigError(f"data set '{name}' not found offline and the download failed ({why}): "
                      f"put {', '.join(IDX_FILES)} (the upstream files) {where}, "
                      "or run on a machine with internet")


def _check_mnist_arrays(name, where, x_train, y_train, x_test, y_test) -> None:
    for split, x, y in (("train", x_train, y_train), ("t10k", x_test, y_test)):
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y) or x.dtype != np.uint8:
            raise ConfigError(f"{name} files in '{where}' do not match: {split} images "
                              f"{x.shape} {x.dtype} vs labels {y.shape}, expected uint8 (N, 28, 28) "
                              "and (N,): replace them with the upstream files")
        if len(y) and (y.min() < 0 or y.max() > 9):
            raise ConfigError(f"{name} {split} labels in '{where}' range {y.min()}..{y.max()}, "
                              "expected 0..9: replace them with the upstream files")


def _load_mnist_npz(path: Path) -> Dataset:
    """Keras's cache format: mnist.npz with x_train, y_train, x_test, y_test (uint8)."""
    arrays = read_npz(path)
    missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in arrays]
    if missing:
        raise ConfigError(f"'{path}' lacks arrays {', '.join(missing)}: delete it so Keras can "
                          "download it again, or use the four upstream IDX files")
    _check_mnist_arrays("mnist", path, *(arrays[k] for k in ("x_train", "y_train", "x_test", "y_test")))
    return from_uint8("mnist", arrays["x_train"], arrays["y_train"], arrays["x_test"],
                      arrays["y_test"], _DIGITS)


