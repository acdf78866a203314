"""Your own data set as an .npz archive: npz:PATH with x_train, y_train, x_test, y_test
(and optional labels).

>>> np.savez("data.npz", x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te,
...          labels=np.array(["cat", "dog"]))
>>> ds = load_npz("data.npz", name="npz:data.npz")
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from slimpipe.pipeline.data.dataset import AS_STORED, Dataset, from_uint8
from slimpipe.pipeline.data.search import first_line
from slimpipe.pipeline.errors import ConfigError

_NPZ_FIX = "save it with np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)"


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an .npz file, refusing object arrays (they would need pickle)."""
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
        raise ConfigError(f"'{path}' is not a valid .npz ({first_line(exc)}): {_NPZ_FIX}") from None
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise ConfigError(f"'{path}' is not a readable .npz ({first_line(exc)}): {_NPZ_FIX}") from None


def load_npz(path_text: str, *, name: str) -> Dataset:
    """uint8 images become [0, 1] floats; float images are used as stored."""
    path = Path(path_text).expanduser()
    if not path_text or not path.is_file():
        raise ConfigError(f"npz file '{path_text}' not found: pass npz:PATH with the path of an existing "
                          f".npz ({_NPZ_FIX})")
    arrays = read_npz(path)
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
        ds = from_uint8(name, xs["train"], ys["train"], xs["test"], ys["test"], labels)
    else:  # float images are used as stored: raw = model input
        ds = Dataset(name, xs["train"].astype(np.float32), ys["train"], xs["test"].astype(np.float32),
                     ys["test"], labels, normalization={"scale": 1.0, "offset": 0.0},
                     input_range=AS_STORED)
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


