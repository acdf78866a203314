"""CIFAR-10 from the upstream archive (or its extracted batches), read without running code.

The upstream batches are Python pickles; a pickle can call any importable function while
loading, so they are read by an unpickler that lets through only what rebuilds a NumPy array.

>>> ds = load_cifar10(data_dir="~/downloads")   # holds cifar-10-python.tar.gz
"""
from __future__ import annotations

import io
import pickle
import tarfile
import zlib
from pathlib import Path

import numpy as np

from slimpipe.pipeline.data.dataset import Dataset, from_uint8
from slimpipe.pipeline.data.search import download, first_line, search_dirs
from slimpipe.pipeline.errors import ConfigError

CIFAR10_LABELS = ("airplane", "automobile", "bird", "cat", "deer",
                  "dog", "frog", "horse", "ship", "truck")
CIFAR_ARCHIVES = ("cifar-10-python.tar.gz", "cifar-10-batches-py.tar.gz")  # upstream, Keras's name

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct as _np_reconstruct

# The only globals an upstream CIFAR batch refers to: what numpy needs to rebuild an array.
# (Upstream pickles name numpy.core; numpy 2 writes numpy._core.)
_PICKLE_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, bytes and numpy arrays; refuses every other global.

    A pickle can call any importable function while loading (that is how the numpy arrays get
    rebuilt), so a tampered file could run code. Only numpy's array rebuilders get through.
    """

    def find_class(self, module, name):
        try:
            return _PICKLE_ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing global {module}.{name}") from None

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("refusing persistent id")


def _unpickle_batch(raw: bytes, where: str) -> dict:
    try:
        # Upstream batches are Python 2 pickles: keep their str values as bytes.
        obj = _BatchUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as exc:  # pickle raises many types on bad input
        raise ConfigError(f"CIFAR-10 batch '{where}' is not a plain upstream batch "
                          f"({first_line(exc)}); nothing in it was run: replace it with the upstream "
                          "cifar-10-python.tar.gz") from None
    if not isinstance(obj, dict):
        raise ConfigError(f"CIFAR-10 batch '{where}' holds a {type(obj).__name__}, expected a dict: "
                          "replace it with the upstream cifar-10-python.tar.gz")
    return obj


_CIFAR_MEMBERS = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")


def _cifar_sources(data_dir) -> list[Path]:
    """Folders holding the extracted batches, or archives, in search order."""
    found = []
    for d in search_dirs("cifar10", data_dir):
        for folder in (d, d / "cifar-10-batches-py"):
            if (folder / "data_batch_1").is_file():
                found.append(folder)
        found += [d / a for a in CIFAR_ARCHIVES if (d / a).is_file()]
    return found


def _read_cifar_members(source: Path) -> dict[str, bytes]:
    """Raw bytes of the batch files, from a folder or straight out of the tar (no extraction)."""
    if source.is_dir():
        missing = [m for m in _CIFAR_MEMBERS if not (source / m).is_file()]
        if missing:
            raise ConfigError(f"CIFAR-10 folder '{source}' lacks {', '.join(missing)}: "
                              "extract the whole upstream cifar-10-python.tar.gz there")
        return {m: (source / m).read_bytes() for m in _CIFAR_MEMBERS}
    members: dict[str, bytes] = {}
    try:
        with tarfile.open(source, "r:gz") as tar:
            for info in tar:
                base = info.name.rsplit("/", 1)[-1]
                if info.isfile() and base in _CIFAR_MEMBERS and base not in members:
                    members[base] = tar.extractfile(info).read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise ConfigError(f"CIFAR-10 archive '{source}' is unreadable or truncated "
                          f"({first_line(exc)}): download cifar-10-python.tar.gz again") from None
    missing = [m for m in _CIFAR_MEMBERS if m not in members]
    if missing:
        raise ConfigError(f"CIFAR-10 archive '{source}' lacks {', '.join(missing)}: "
                          "use the upstream cifar-10-python.tar.gz")
    return members


def _cifar_batch_arrays(batch: dict, where: str) -> tuple[np.ndarray, np.ndarray]:
    data, labels = batch.get(b"data"), batch.get(b"labels")
    if (not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2
            or data.shape[1] != 3072 or labels is None or len(labels) != len(data)):
        raise ConfigError(f"CIFAR-10 batch '{where}' does not hold b'data' uint8 (N, 3072) and "
                          "N b'labels': replace it with the upstream cifar-10-python.tar.gz")
    # Each row: 1024 red, then 1024 green, then 1024 blue bytes, row-major 32x32 planes.
    x = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    try:
        y = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        raise ConfigError(f"CIFAR-10 batch '{where}' has non-integer b'labels': replace it with the "
                          "upstream cifar-10-python.tar.gz") from None
    return x, y


def load_cifar10(data_dir) -> Dataset:
    """The first source found (see `search_dirs`; extracted batches or the archive), else Keras's
    download; a ConfigError saying where to put the archive when all fail."""
    sources = _cifar_sources(data_dir)
    if not sources:
        arrays, why = download("cifar10")
        if arrays is None:
            raise ConfigError(
                f"data set 'cifar10' not found offline and the download failed ({why}): put "
                "cifar-10-python.tar.gz (the upstream archive) or its extracted cifar-10-batches-py/ "
                "in ~/.keras/datasets/ or $SLIMPIPE_DATA_DIR, or run on a machine with internet")
        (x_train, y_train), (x_test, y_test) = arrays
        return from_uint8("cifar10", x_train, y_train, x_test, y_test, CIFAR10_LABELS)
    source = sources[0]
    raw = _read_cifar_members(source)
    batches = {m: _unpickle_batch(raw[m], f"{source}/{m}") for m in _CIFAR_MEMBERS}
    train = [_cifar_batch_arrays(batches[f"data_batch_{i}"], f"data_batch_{i}") for i in range(1, 6)]
    x_test, y_test = _cifar_batch_arrays(batches["test_batch"], "test_batch")
    names = batches["batches.meta"].get(b"label_names")
    if not isinstance(names, list) or not names:
        raise ConfigError(f"CIFAR-10 batches.meta in '{source}' has no b'label_names' list: "
                          "replace it with the upstream file")
    labels = tuple(n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names)
    x_train = np.concatenate([x for x, _ in train])
    y_train = np.concatenate([y for _, y in train])
    for split, y in (("train", y_train), ("test", y_test)):
        if len(y) and (y.min() < 0 or y.max() >= len(labels)):
            raise ConfigError(f"CIFAR-10 {split} labels in '{source}' range {y.min()}..{y.max()} but "
                              f"batches.meta names {len(labels)} classes: use the upstream archive")
    return from_uint8("cifar10", x_train, y_train, x_test, y_test, labels)


