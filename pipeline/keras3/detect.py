"""Which Keras saved a model file, read without importing either Keras.

- `.keras` (a zip): `metadata.json` holds `keras_version`; tf_keras writes 2.x, Keras 3 writes 3.x.
- `.h5`: the root attribute `keras_version` (3.x from Keras 3), and the config's format:
  Keras 3 stores layer calls as {"args", "kwargs"} and an input's shape as `batch_shape`,
  tf_keras as lists and `batch_input_shape`; a file without the attribute is told by that.
- SavedModel folder: tf_keras writes `keras_metadata.pb` beside `saved_model.pb`. Keras 3
  cannot save a model as a SavedModel (`model.save` takes .keras or .h5 only); its
  `model.export(path)` writes an inference-only SavedModel without Keras metadata, i.e. no
  layers to compress. `SAVEDMODEL_HINT` says so.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

from slimpipe.pipeline.errors import ConfigError

SAVEDMODEL_HINT = ("Keras 3's model.export() and tf.saved_model.save write such folders for "
                   "serving, without the layers slimpipe compresses: save the model itself with "
                   "model.save('model.keras')")


def read_config(path: Path, kind: str) -> dict:
    """The model config stored in a .keras or .h5 file; ConfigError for a weights-only .h5."""
    if kind == "keras":
        with zipfile.ZipFile(path) as zf:
            return json.loads(zf.read("config.json"))
    import h5py

    with h5py.File(path, "r") as f:
        raw = f.attrs.get("model_config")
    if raw is None:
        raise ConfigError(f"'{path}' is an HDF5 file without a model config (weights only?): "
                          "save the whole model with model.save(path)")
    return json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)


def keras3_version(path: Path, kind: str) -> str | None:
    """The Keras 3 version that saved the file ('3.15.1'; '3' when only the format tells),
    or None for a tf_keras / Keras 2 file (or a file that cannot be read)."""
    path = Path(path)
    try:
        if kind == "keras":
            with zipfile.ZipFile(path) as zf:
                version = str(json.loads(zf.read("metadata.json")).get("keras_version", ""))
            return version if version.startswith("3") else None
        if kind == "h5":
            return _h5_version(path)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None
    return None


def _h5_version(path: Path) -> str | None:
    import h5py

    with h5py.File(path, "r") as f:
        version = f.attrs.get("keras_version")
        raw = f.attrs.get("model_config")
    version = version.decode() if isinstance(version, bytes) else (str(version) if version is not None else "")
    if version:
        return version if version.startswith("3") else None
    if raw is None:
        return None
    text = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
    return "3" if looks_like_keras3(json.loads(text)) else None


def looks_like_keras3(config: dict) -> bool:
    """True when a model config is in Keras 3's format (see the module docstring)."""
    text = json.dumps(config)
    return '"__keras_tensor__"' in text or ('"batch_shape"' in text and '"batch_input_shape"' not in text)
