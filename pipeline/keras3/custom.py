"""`--custom-objects FILE.py`: a user's own layer classes, in both Keras versions.

slimpipe imports the file (running it: the user's own code, by their choice) and reads one
dict from it:

    # my_layers.py
    import keras, tf_keras

    class Scale3(keras.layers.Layer): ...          # the class the model was built with
    class Scale2(tf_keras.layers.Layer): ...       # the same computation for tf_keras

    CUSTOM_OBJECTS = {"Scale": (Scale3, Scale2)}

Keys are the names the model file stores: the class name, or "package>Name" for a class
registered with `keras.saving.register_keras_serializable(package=...)`. Values are
(Keras 3 class, tf_keras class); either may be None when one Keras is not involved (a
tf_keras model's custom layer needs only its tf_keras class). Both classes must take the same
config (`get_config()` keys) and hold the same weights in the same order; slimpipe checks the
translated model's outputs against the original's either way. The tf_keras classes are
registered for the whole run, so every stage can reload the models that hold them.
"""
from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from slimpipe.pipeline.errors import ConfigError

EXAMPLE = 'CUSTOM_OBJECTS = {"MyLayer": (MyLayerKeras3, MyLayerTfKeras)}'


@dataclass(frozen=True)
class CustomObjects:
    keras3: Mapping[str, type] = field(default_factory=dict)
    tf_keras: Mapping[str, type] = field(default_factory=dict)
    path: str | None = None

    def names(self) -> frozenset[str]:
        return frozenset(self.keras3) | frozenset(self.tf_keras)

    def keras3_objects(self) -> dict[str, type]:
        """custom_objects for Keras 3's loader: each class under its key and its registered name."""
        if not self.keras3:
            return {}
        import keras

        return {**{keras.saving.get_registered_name(c): c for c in self.keras3.values()}, **self.keras3}


NONE = CustomObjects()


def load_custom_objects(path: str | Path | None) -> CustomObjects:
    """Import `path` and read its CUSTOM_OBJECTS; registers the tf_keras classes globally."""
    if path is None:
        return NONE
    path = Path(path).expanduser()
    if path.suffix != ".py" or not path.is_file():
        raise ConfigError(f"--custom-objects expected an existing Python file (.py) defining {EXAMPLE}. "
                          f"Received: {str(path)!r}")
    name = f"slimpipe_custom_objects_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look classes up by module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise ConfigError(f"--custom-objects {path.name} failed to import ({type(exc).__name__}: "
                          f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}): fix the file") from None
    table = getattr(module, "CUSTOM_OBJECTS", None)
    if not isinstance(table, dict) or not table:
        raise ConfigError(f"--custom-objects {path.name} must define a non-empty dict {EXAMPLE}. "
                          f"Received: CUSTOM_OBJECTS={table!r}"[:400])
    keras3, tf_keras = {}, {}
    for key, value in table.items():
        pair = value if isinstance(value, tuple) and len(value) == 2 else None
        if not isinstance(key, str) or pair is None or pair == (None, None) or not all(
                c is None or isinstance(c, type) for c in pair):
            raise ConfigError(f"--custom-objects {path.name}: each entry must be \"Name\": (Keras 3 class "
                              f"or None, tf_keras class or None), not both None. Received: {key!r}: {value!r}"[:400])
        if pair[0] is not None:
            keras3[key] = pair[0]
        if pair[1] is not None:
            tf_keras[key] = pair[1]
    _check_bases(path, keras3, tf_keras)
    _register_tf_keras(tf_keras)
    return CustomObjects(keras3, tf_keras, str(path))


def _check_bases(path: Path, keras3: dict, tf_keras: dict) -> None:
    if keras3:
        import keras

        wrong = [k for k, c in keras3.items() if not issubclass(c, keras.layers.Layer)]
        if wrong:
            raise ConfigError(f"--custom-objects {path.name}: the first class of {wrong} is not a Keras 3 "
                              "layer (keras.layers.Layer): put the Keras 3 class first, the tf_keras one second")
    if tf_keras:
        import tf_keras as tfk

        wrong = [k for k, c in tf_keras.items() if not issubclass(c, tfk.layers.Layer)]
        if wrong:
            raise ConfigError(f"--custom-objects {path.name}: the second class of {wrong} is not a tf_keras "
                              "layer (tf_keras.layers.Layer): put the tf_keras class second")


def _register_tf_keras(classes: dict) -> None:
    import tf_keras as keras

    registry = keras.saving.get_custom_objects()
    for key, cls in classes.items():
        registry[key] = cls
        registry[keras.saving.get_registered_name(cls)] = cls
