"""Read a model file saved by Keras 3 into an equivalent, checked tf_keras model.

>>> model, info = load_keras3_file(Path("model.keras"), "keras")
>>> info["keras_version"], info["max_abs_diff"]
('3.15.1', 2.4e-07)

Steps: the stored config is scanned before Keras reads the file (`scan`: custom layers,
Lambda, unsupported layers, dtypes and data formats are refused in one line); Keras 3 loads the
file with `safe_mode` on (off only with `allow_unsafe`); `build_in` rebuilds it in tf_keras and
copies the weights; both models run on the same sample inputs and must agree (`check`).
Mixed-precision models are translated to float32 (their weights are float32 already) and
checked against the Keras 3 model recomputed in float32.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from slimpipe.pipeline.errors import ConfigError
from slimpipe.pipeline.keras3.build_in import TfKerasBuilder
from slimpipe.pipeline.keras3.check import TOLERANCE, max_abs_diff, outputs, require_match, sample_inputs
from slimpipe.pipeline.keras3.custom import NONE, CustomObjects
from slimpipe.pipeline.keras3.detect import read_config
from slimpipe.pipeline.keras3.graph import MODEL_CLASSES, parse
from slimpipe.pipeline.keras3.scan import MIXED, scan


def load_keras3_file(path: Path, kind: str, *, version: str = "3", allow_unsafe: bool = False,
                     custom: CustomObjects = NONE) -> tuple[Any, dict[str, Any]]:
    """(tf_keras model, info) for a .keras or .h5 file saved by Keras 3; ConfigError when the
    model cannot be translated exactly."""
    started = time.perf_counter()
    stored = read_config(path, kind)
    top = stored.get("class_name")
    if top not in MODEL_CLASSES:
        raise ConfigError(f"'{path.name}' holds a model of class {top!r}, a subclassed model: slimpipe "
                          "translates Sequential and functional Keras 3 models; rebuild it with "
                          "keras.Model(inputs, outputs) or keras.Sequential")
    mixed = scan(parse(top, stored.get("config") or {}), custom=custom.names(), allow_unsafe=allow_unsafe)
    import keras

    try:
        source = keras.saving.load_model(path, compile=False, safe_mode=not allow_unsafe,
                                         custom_objects=custom.keras3_objects())
    except Exception as exc:
        text = str(exc).strip().splitlines()
        raise ConfigError(f"Keras {keras.__version__} could not load '{path}' ({type(exc).__name__}: "
                          f"{text[0] if text else ''}): re-save the model with Keras 3") from None
    notes = []
    reference = float32_twin(source, custom) if mixed else source
    model = TfKerasBuilder(reference, custom=dict(custom.tf_keras)).build()
    if int(model.count_params()) != int(reference.count_params()):
        raise ConfigError(f"'{path.name}': the tf_keras translation holds {model.count_params()} weights, "
                          f"the Keras 3 model {reference.count_params()}: the model cannot be translated")
    x = sample_inputs(model)
    expected = outputs(reference, x)
    diff = require_match(expected, outputs(model, x), f"the tf_keras translation of '{path.name}'")
    if mixed:
        own, _ = max_abs_diff(outputs(source, x), expected)
        policies = sorted({str(getattr(layer.dtype_policy, "name", "")) for layer in _layers(source)} & set(MIXED))
        notes.append(f"model: '{path.name}' computes in mixed precision ({', '.join(policies)}, "
                     f"{len(mixed)} layers); slimpipe translated it to float32 (its weights were float32 "
                     f"already), which differs from its own reduced-precision outputs by up to {own:.3g}")
    info = {"keras_version": version if version != "3" else "3 (no version recorded)", "format": kind,
            "layers": len(model.layers), "params": int(model.count_params()),
            "max_abs_diff": diff, "tolerance": TOLERANCE, "seconds": round(time.perf_counter() - started, 2),
            "notes": notes}
    return model, info


def _layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _layers(layer)


def float32_twin(model, custom: CustomObjects = NONE):
    """The same Keras 3 model with every mixed-precision policy set to float32, same weights."""
    import keras

    config = _float32(model.get_config())
    cls = keras.Sequential if isinstance(model, keras.Sequential) else keras.Model
    twin = cls.from_config(config, custom_objects=custom.keras3_objects())
    twin.set_weights(model.get_weights())
    return twin


def _float32(node):
    if isinstance(node, dict):
        if node.get("class_name") == "DTypePolicy" and (node.get("config") or {}).get("name") in MIXED:
            return {**node, "config": {**node["config"], "name": "float32"}}
        return {k: ("float32" if k == "dtype" and v in MIXED else _float32(v)) for k, v in node.items()}
    if isinstance(node, list):
        return [_float32(v) for v in node]
    return node
