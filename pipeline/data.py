"""Data sets: real files in their upstream formats, turned into normalized NHWC arrays.

>>> ds = load_dataset("fashion_mnist", limit=2000)
>>> ds.x_train.shape, ds.num_classes
((2000, 28, 28, 1), 10)
"""
from __future__ import annotations

import dataclasses
import difflib
import gzip
import io
import math
import os
import pickle
import tarfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from slimpipe.pipeline.errors import ConfigError


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
        """A tf.data pipeline over the training arrays (shuffled, batched, prefetched)."""
        import tensorflow as tf

        ds = tf.data.Dataset.from_tensor_slices((self.x_train, self.y_train))
        if shuffle:
            ds = ds.shuffle(min(len(self.x_train), 10_000), seed=seed, reshuffle_each_iteration=True)
        return batched(ds, batch_size)

    def test_dataset(self, batch_size: int):
        import tensorflow as tf

        return batched(tf.data.Dataset.from_tensor_slices((self.x_test, self.y_test)), batch_size)


def batched(ds, batch_size: int):
    """Batch and prefetch an in-memory dataset, with tf.data's autotuning off.

    With autotuning on, destroying a shuffled dataset's iterator at the end of `model.fit`
    stalled the process, idle, for 2 to 45 s in about half of the runs measured here (TF 2.21;
    the default recipe's train stage: 205 s for 160 s of epochs); with it off, never. Autotuning
    has nothing to tune here: the arrays are in memory, and two prefetched batches keep the
    model fed (the same epoch times)."""
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.batch(batch_size).prefetch(2).with_options(options)


DATASETS: dict[str, str] = {
    "fashion_mnist": "Fashion-MNIST: 28x28x1 clothing images, 10 classes, 60k train / 10k test (default)",
    "mnist": "MNIST: 28x28x1 handwritten digits, 10 classes, 60k train / 10k test",
    "cifar10": "CIFAR-10: 32x32x3 photos, 10 classes, 50k train / 10k test",
    "npz:PATH": "your own .npz with arrays x_train, y_train, x_test, y_test (optional labels)",
    "tfds:NAME": "any TensorFlow Datasets image-classification set, e.g. tfds:rock_paper_scissors "
                 "(needs tensorflow-datasets)",
}

FASHION_MNIST_LABELS = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
CIFAR10_LABELS = ("airplane", "automobile", "bird", "cat", "deer",
                  "dog", "frog", "horse", "ship", "truck")
_DIGITS = tuple(str(i) for i in range(10))

# The four upstream IDX files, in the order (x_train, y_train, x_test, y_test).
IDX_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
# Keras caches Fashion-MNIST's four files in ~/.keras/datasets/fashion-mnist/, MNIST as
# ~/.keras/datasets/mnist.npz and CIFAR-10 as the extracted ~/.keras/datasets/cifar-10-batches-py/.
_KERAS_FOLDER = {"fashion_mnist": "fashion-mnist", "mnist": "mnist"}
# Distribution packages (Debian: dataset-fashion-mnist). Module-level so tests can replace it.
SYSTEM_DATA_DIRS: dict[str, tuple[Path, ...]] = {
    "fashion_mnist": (Path("/usr/share/datasets/fashion-mnist"),),
}
CIFAR_ARCHIVES = ("cifar-10-python.tar.gz", "cifar-10-batches-py.tar.gz")  # upstream, Keras's name


def load_dataset(spec: str = "fashion_mnist", *, limit: int | None = None,
                 data_dir: str | Path | None = None, image_size: tuple[int, int] | None = None,
                 seed: int = 0) -> Dataset:
    """Load a data set by name (see `DATASETS`) as float32 NHWC arrays with int64 labels.

    `limit` keeps a deterministic, class-stratified subset of that many training examples
    (the test set stays whole). `image_size` (height, width) resizes all images.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, np.integer))
                              or limit < 1):
        raise ConfigError(f"limit must be a whole number >= 1, got {limit!r}: "
                          "pass e.g. limit=2000, or leave it unset for the whole training set")
    if image_size is not None:
        image_size = _check_image_size(image_size)
    spec = str(spec).strip()
    if spec.startswith("npz:"):
        ds = _load_npz(spec[len("npz:"):], name=spec)
    elif spec.startswith("tfds:"):
        # tfds reads lazily, so it subsets and resizes while reading instead of afterwards.
        return _load_tfds(spec[len("tfds:"):], data_dir=data_dir, image_size=image_size,
                          limit=limit, seed=seed)
    elif spec in ("fashion_mnist", "mnist"):
        ds = _load_mnist_like(spec, data_dir)
    elif spec == "cifar10":
        ds = _load_cifar10(data_dir)
    else:
        raise ConfigError(_unknown_dataset_message(spec))
    if limit is not None and limit < len(ds.y_train):
        keep = stratified_subset(ds.y_train, limit, seed=seed)
        ds = _replace(ds, x_train=ds.x_train[keep], y_train=ds.y_train[keep])
    if image_size is not None and ds.input_shape[:2] != image_size:
        ds = _replace(ds, x_train=_resize(ds.x_train, image_size), x_test=_resize(ds.x_test, image_size))
    return ds


def _replace(ds: Dataset, **changes) -> Dataset:
    return dataclasses.replace(ds, **changes)


def _unknown_dataset_message(spec: str) -> str:
    known = [k for k in DATASETS if ":" not in k]
    close = difflib.get_close_matches(spec, known, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return (f"unknown data set '{spec}': {hint}expected one of {', '.join(known)}, "
            "npz:PATH or tfds:NAME (see `slimpipe list`)")


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


def _resize(x: np.ndarray, size: tuple[int, int], batch: int = 1024) -> np.ndarray:
    import tensorflow as tf

    # Bilinear/antialias weights are non-negative, so values stay within the input's range.
    out = [tf.image.resize(x[i:i + batch], size, antialias=True).numpy()
           for i in range(0, len(x), batch)]
    return np.concatenate(out).astype(np.float32)


def _from_uint8(name, x_train, y_train, x_test, y_test, labels) -> Dataset:
    """uint8 images (N,H,W) or (N,H,W,C) -> float32 [0,1] NHWC; labels -> int64."""
    def prep(x):
        x = np.asarray(x)
        if x.ndim == 3:
            x = x[..., None]
        return x.astype(np.float32) / np.float32(255.0)

    return Dataset(name, prep(x_train), np.asarray(y_train).reshape(-1).astype(np.int64),
                   prep(x_test), np.asarray(y_test).reshape(-1).astype(np.int64), tuple(labels))


def _search_dirs(name: str, data_dir) -> list[Path]:
    """Candidate folders, in priority order: data_dir, $SLIMPIPE_DATA_DIR, system, Keras cache."""
    dirs: list[Path] = []
    for base in (data_dir, os.environ.get("SLIMPIPE_DATA_DIR") or None):
        if base is not None:
            base = Path(base).expanduser()
            dirs += [base, base / name, base / _KERAS_FOLDER[name]]
    dirs += list(SYSTEM_DATA_DIRS.get(name, ()))
    keras_datasets = _keras_datasets_dir()
    dirs += [keras_datasets / _KERAS_FOLDER[name], keras_datasets / name, keras_datasets]
    return list(dict.fromkeys(dirs))  # drop duplicates, keep order


def _keras_datasets_dir() -> Path:
    # Same rule as tf_keras.utils.get_file: $KERAS_HOME, else ~/.keras.
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "datasets"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _download(name: str):
    """Let Keras download (and cache) the set; None if that fails, e.g. offline."""
    import tf_keras as keras

    try:
        return getattr(keras.datasets, name).load_data(), None
    except Exception as exc:  # any network/IO failure: we report our own instructions instead
        return None, _first_line(exc)


# ---- MNIST / Fashion-MNIST: IDX files -------------------------------------------------------

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
        raise ConfigError(f"IDX file '{path}' is unreadable or truncated ({_first_line(exc)}): "
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


def _load_mnist_like(name: str, data_dir) -> Dataset:
    labels = FASHION_MNIST_LABELS if name == "fashion_mnist" else _DIGITS
    dirs = _search_dirs(name, data_dir)
    files = _find_files(dirs, IDX_FILES)
    if files is not None:
        x_train, y_train, x_test, y_test = (read_idx(p) for p in files)
        _check_mnist_arrays(name, files[0].parent, x_train, y_train, x_test, y_test)
        return _from_uint8(name, x_train, y_train, x_test, y_test, labels)
    if name == "mnist":
        npz = next((d / "mnist.npz" for d in dirs if (d / "mnist.npz").is_file()), None)
        if npz is not None:
            return _load_mnist_npz(npz)
    arrays, why = _download(name)
    if arrays is not None:
        (x_train, y_train), (x_test, y_test) = arrays
        return _from_uint8(name, x_train, y_train, x_test, y_test, labels)
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
    arrays = _read_npz(path)
    missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in arrays]
    if missing:
        raise ConfigError(f"'{path}' lacks arrays {', '.join(missing)}: delete it so Keras can "
                          "download it again, or use the four upstream IDX files")
    _check_mnist_arrays("mnist", path, *(arrays[k] for k in ("x_train", "y_train", "x_test", "y_test")))
    return _from_uint8("mnist", arrays["x_train"], arrays["y_train"], arrays["x_test"],
                       arrays["y_test"], _DIGITS)


# ---- CIFAR-10: pickled batches -------------------------------------------------------------

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
                          f"({_first_line(exc)}); nothing in it was run: replace it with the upstream "
                          "cifar-10-python.tar.gz") from None
    if not isinstance(obj, dict):
        raise ConfigError(f"CIFAR-10 batch '{where}' holds a {type(obj).__name__}, expected a dict: "
                          "replace it with the upstream cifar-10-python.tar.gz")
    return obj


_CIFAR_MEMBERS = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")


def _cifar_sources(data_dir) -> list[Path]:
    """Folders holding the extracted batches, or archives, in search order."""
    dirs = []
    for base in (data_dir, os.environ.get("SLIMPIPE_DATA_DIR") or None):
        if base is not None:
            base = Path(base).expanduser()
            dirs += [base, base / "cifar10"]
    dirs.append(_keras_datasets_dir())
    found = []
    for d in dict.fromkeys(dirs):
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
                          f"({_first_line(exc)}): download cifar-10-python.tar.gz again") from None
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


def _load_cifar10(data_dir) -> Dataset:
    sources = _cifar_sources(data_dir)
    if not sources:
        arrays, why = _download("cifar10")
        if arrays is None:
            raise ConfigError(
                f"data set 'cifar10' not found offline and the download failed ({why}): put "
                "cifar-10-python.tar.gz (the upstream archive) or its extracted cifar-10-batches-py/ "
                "in ~/.keras/datasets/ or $SLIMPIPE_DATA_DIR, or run on a machine with internet")
        (x_train, y_train), (x_test, y_test) = arrays
        return _from_uint8("cifar10", x_train, y_train, x_test, y_test, CIFAR10_LABELS)
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
    return _from_uint8("cifar10", x_train, y_train, x_test, y_test, labels)


# ---- npz:PATH ------------------------------------------------------------------------------

_NPZ_FIX = "save it with np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)"


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    with open(path, "rb") as f:
        head = f.read(6)
    if head == b"\x93NUMPY":
        raise ConfigError(f"'{path}' is a single .npy array, expected an .npz archive: {_NPZ_FIX}")
    if not head.startswith(b"PK"):
        raise ConfigError(f"'{path}' is not an .npz archive (no zip header): {_NPZ_FIX}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except ValueError as exc:
        if "pickle" in str(exc):  # allow_pickle=False refuses object arrays
            raise ConfigError(f"'{path}' holds object arrays, which would need pickle to load: "
                              f"store plain numeric/string arrays ({_NPZ_FIX})") from None
        raise ConfigError(f"'{path}' is not a valid .npz ({_first_line(exc)}): {_NPZ_FIX}") from None
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise ConfigError(f"'{path}' is not a readable .npz ({_first_line(exc)}): {_NPZ_FIX}") from None


def _load_npz(path_text: str, *, name: str) -> Dataset:
    path = Path(path_text).expanduser()
    if not path_text or not path.is_file():
        raise ConfigError(f"npz file '{path_text}' not found: pass npz:PATH with the path of an existing "
                          f".npz ({_NPZ_FIX})")
    arrays = _read_npz(path)
    missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in arrays]
    if missing:
        raise ConfigError(f"'{path}' lacks array(s) {', '.join(missing)} (it has "
                          f"{', '.join(sorted(arrays)) or 'none'}): {_NPZ_FIX}")
    xs, ys = {}, {}
    for split in ("train", "test"):
        xs[split], ys[split] = _npz_split(path, split, arrays[f"x_{split}"], arrays[f"y_{split}"])
    if xs["train"].shape[1:] != xs["test"].shape[1:] or xs["train"].dtype.kind != xs["test"].dtype.kind:
        raise ConfigError(f"'{path}': x_train is {xs['train'].dtype} {xs['train'].shape[1:]} but x_test is "
                          f"{xs['test'].dtype} {xs['test'].shape[1:]}: store both splits with one "
                          "image shape and dtype")
    num_classes = int(max(ys["train"].max(initial=0), ys["test"].max(initial=0))) + 1
    labels = _npz_labels(path, arrays, num_classes)
    if xs["train"].dtype == np.uint8:
        ds = _from_uint8(name, xs["train"], ys["train"], xs["test"], ys["test"], labels)
    else:  # float images are used as stored: raw = model input
        ds = Dataset(name, xs["train"].astype(np.float32), ys["train"], xs["test"].astype(np.float32),
                     ys["test"], labels, normalization={"scale": 1.0, "offset": 0.0})
    return ds


def _npz_split(path, split, x, y) -> tuple[np.ndarray, np.ndarray]:
    xk, yk = f"x_{split}", f"y_{split}"
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or 0 in x.shape:
        raise ConfigError(f"'{path}': {xk} has shape {x.shape}, expected (N, H, W) or (N, H, W, C) with "
                          "N >= 1: store images as a 3-D or 4-D array")
    if x.dtype != np.uint8 and x.dtype.kind != "f":
        raise ConfigError(f"'{path}': {xk} has dtype {x.dtype}, expected uint8 (0-255) or float: convert "
                          f"it, e.g. {xk}.astype('float32') / 255")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise ConfigError(f"'{path}': {xk} contains NaN or infinite values: clean or drop those images")
    if y.ndim == 2 and y.shape[1] == 1:  # (N, 1), as Keras's CIFAR loader returns
        y = y[:, 0]
    if y.ndim != 1:
        raise ConfigError(f"'{path}': {yk} has shape {y.shape}, expected (N,) integer class ids: store "
                          f"class indices, e.g. {yk}.argmax(axis=1) for one-hot labels")
    if y.dtype.kind not in "iu":
        raise ConfigError(f"'{path}': {yk} has dtype {y.dtype}, expected integer class ids 0..K-1: "
                          f"store them as integers, e.g. {yk}.astype('int64')")
    if len(x) != len(y):
        raise ConfigError(f"'{path}': {xk} has {len(x)} images but {yk} has {len(y)} labels: store one "
                          "label per image")
    if y.min() < 0:
        raise ConfigError(f"'{path}': {yk} contains negative class id {y.min()}, expected 0..K-1: "
                          "renumber the classes from 0")
    return x, y.astype(np.int64)


def _npz_labels(path, arrays, num_classes) -> tuple[str, ...]:
    key = next((k for k in ("labels", "class_names") if k in arrays), None)
    if key is None:
        return tuple(str(i) for i in range(num_classes))
    names = arrays[key]
    if names.ndim != 1 or names.dtype.kind not in "US":
        raise ConfigError(f"'{path}': {key} has dtype {names.dtype} shape {names.shape}, expected a 1-D "
                          f"array of strings: save it as np.array(['cat', 'dog', ...])")
    if len(names) < num_classes:
        raise ConfigError(f"'{path}': {key} names {len(names)} classes but the labels go up to "
                          f"{num_classes - 1}: give one name per class id")
    return tuple(n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names.tolist())


# ---- tfds:NAME -----------------------------------------------------------------------------

_TFDS_DEFAULT_SIZE = (64, 64)


def _has_test_split(info) -> bool:
    # Mocked or not-yet-prepared builders may list no splits at all: then try "test".
    names = set(info.splits.keys())
    return not names or "test" in names


def _load_tfds(name: str, *, data_dir, image_size, limit, seed) -> Dataset:
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise ConfigError(f"tfds:{name} needs tensorflow-datasets: pip install 'slimpipe[tfds]'") from None
    import tensorflow as tf

    if not name:
        raise ConfigError("tfds: needs a data set name, e.g. tfds:rock_paper_scissors")
    data_dir = None if data_dir is None else str(Path(data_dir).expanduser())

    try:
        info = tfds.builder(name, data_dir=data_dir).info
        keys = info.supervised_keys
        if not keys or len(keys) != 2 or not hasattr(info.features[keys[1]], "names"):
            raise ConfigError(f"tfds:{name} is not an image-classification set (supervised keys {keys}): "
                              "pick one with (image, label) pairs, e.g. tfds:rock_paper_scissors")
        image_key, label_key = keys
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

        train = load("train")
        test = load("test") if _has_test_split(info) else None
    except ConfigError:
        raise
    except Exception as exc:  # unknown name, missing download, no network, bad split ...
        raise ConfigError(f"tfds:{name} could not be loaded ({_first_line(exc)}): check the name in the "
                          "TFDS catalog, or run `tfds build` on a machine with internet and pass its "
                          "data_dir") from None

    if image_size is None:
        image_size = shape[:2] if None not in shape[:2] else _TFDS_DEFAULT_SIZE
    labels = tuple(info.features[label_key].names)

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
        ds = ds.enumerate()
        if indices is not None:  # keep only the chosen positions, before any image is decoded
            mask = np.zeros(len(y_train), dtype=bool)
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

    x_train, y_tr = decode(train, keep)
    x_test, y_te = decode(test_source, test_idx)
    return Dataset(f"tfds:{name}", x_train, y_tr, x_test, y_te, labels)
