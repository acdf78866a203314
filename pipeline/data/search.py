"""Where the files of a known data set are looked for, and how a failed download is told.

>>> search_dirs("fashion_mnist", None, keras_name="fashion-mnist")[-1]
PosixPath('/home/me/.keras/datasets')
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable


def search_dirs(name: str, data_dir, *, keras_name: str | None = None,
                system: Iterable[Path] = ()) -> list[Path]:
    """Candidate folders for data set `name`, in priority order, duplicates dropped.

    `data_dir`, then $SLIMPIPE_DATA_DIR (each as is, then its `name` and `keras_name`
    subfolders), then the `system` folders (distribution packages), then the Keras cache
    (its `keras_name` and `name` subfolders, then the cache itself).
    """
    keras_name = keras_name or name
    dirs: list[Path] = []
    for base in (data_dir, os.environ.get("SLIMPIPE_DATA_DIR") or None):
        if base is not None:
            base = Path(base).expanduser()
            dirs += [base, base / name, base / keras_name]
    dirs += list(system)
    cache = keras_datasets_dir()
    dirs += [cache / keras_name, cache / name, cache]
    return list(dict.fromkeys(dirs))


def keras_datasets_dir() -> Path:
    """Where Keras caches downloads: same rule as tf_keras.utils.get_file ($KERAS_HOME, else ~/.keras)."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "datasets"


def first_line(exc: BaseException) -> str:
    """`Type: first line of the message`, for one-line error messages."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def download(name: str):
    """(arrays, None) from Keras's downloader (which caches), or (None, why) when it fails, e.g. offline."""
    import tf_keras as keras

    try:
        return getattr(keras.datasets, name).load_data(), None
    except Exception as exc:  # any network/IO failure: the caller reports its own instructions
        return None, first_line(exc)
