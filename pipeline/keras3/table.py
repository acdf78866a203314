"""What translates between Keras 3 and tf_keras, and how a layer's config changes on the way.

Layers are mapped by class; a class in `LAYERS` exists in both Keras versions with the same
computation. Config keys are mapped by a generic rule (`convert_config`): a key the target class
accepts is kept (dtype policies, initializers, regularizers and constraints rewritten); a key it
does not accept is dropped only when it holds the source class's default (or None, or
`data_format="channels_last"`), otherwise the layer is refused by name: an option slimpipe
cannot carry over is never silently lost. Activations are mapped by what they compute, not by
name: Keras 3's `hard_sigmoid` is relu6(x + 3) / 6 while tf_keras's is clip(0.2 x + 0.5), so
`hard_sigmoid` and `hard_silu` become standard layers (`DECOMPOSED`).
"""
from __future__ import annotations

import inspect
import json
from typing import Any

from slimpipe.pipeline.errors import ConfigError

# Same class name, same computation in Keras 3 (keras.layers) and tf_keras; each one is
# exercised by tests/pipeline/keras3/test_translate.py (every_layer).
LAYERS = frozenset({
    "InputLayer", "Dense", "Identity", "Activation", "ReLU", "LeakyReLU", "PReLU", "ELU", "Softmax",
    "Conv1D", "Conv2D", "DepthwiseConv1D", "DepthwiseConv2D", "SeparableConv1D", "SeparableConv2D",
    "Conv1DTranspose", "Conv2DTranspose",
    "BatchNormalization", "LayerNormalization", "GroupNormalization", "UnitNormalization",
    "MaxPooling1D", "MaxPooling2D", "AveragePooling1D", "AveragePooling2D", "GlobalAveragePooling1D",
    "GlobalAveragePooling2D", "GlobalMaxPooling1D", "GlobalMaxPooling2D",
    "Flatten", "Reshape", "Permute", "UpSampling2D",
    "Dropout", "SpatialDropout1D", "SpatialDropout2D", "GaussianNoise", "GaussianDropout",
    "ZeroPadding1D", "ZeroPadding2D", "Cropping1D", "Cropping2D",
    "Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate",
    "Rescaling", "Normalization", "Resizing", "CenterCrop",
    "RandomFlip", "RandomRotation", "RandomZoom", "RandomTranslation", "RandomContrast",
})

# Layers of keras.applications' own modules: Keras 3 (module, class) <-> tf_keras registered name.
APPLICATION_LAYERS = {
    ("keras.src.applications.convnext", "LayerScale"): "slimpipe>LayerScale",
    ("keras.src.applications.convnext", "StochasticDepth"): "slimpipe>StochasticDepth",
}

# keras.ops calls that Keras 3 functional models store as graph nodes (the arithmetic that
# MobileNetV3's hard-swish and ConvNeXt's residuals are written with). With two tensors they
# become merge layers; with a tensor and a number, a Rescaling layer (x * scale + offset).
OPS = {"Add": "Add", "Subtract": "Subtract", "Multiply": "Multiply", "Divide": None, "TrueDivide": None}

# Activation names that compute the same function in both versions (Keras 3 name -> tf_keras).
ACTIVATIONS_IN = {a: a for a in (
    "linear", "relu", "relu6", "elu", "selu", "softplus", "softsign", "tanh", "sigmoid",
    "exponential", "softmax", "gelu", "mish", "leaky_relu", "swish")} | {"silu": "swish"}
ACTIVATIONS_OUT = {v: ("silu" if v == "swish" else v) for v in ACTIVATIONS_IN.values()}
DECOMPOSED = frozenset({"hard_sigmoid", "hard_silu", "hard_swish"})

RENAMES_IN = {("LeakyReLU", "negative_slope"): "alpha", ("InputLayer", "batch_shape"): "batch_input_shape"}
RENAMES_OUT = {(cls, new): old for (cls, old), new in RENAMES_IN.items()}
# tf_keras options that change nothing a Keras 3 model computes: the plain conv options its
# separable convs store but do not use, and its augmentation layers' choice of random generator.
UNUSED_OUT = {"SeparableConv1D": {"kernel_initializer", "kernel_regularizer", "kernel_constraint", "groups"},
              "SeparableConv2D": {"kernel_initializer", "kernel_regularizer", "kernel_constraint", "groups"},
              **{f"Random{k}": {"rng_type"} for k in ("Flip", "Rotation", "Zoom", "Translation", "Contrast")}}

# What the base Layer of each version accepts besides the named arguments of __init__.
_BASE_KWARGS = {"tf_keras": {"name", "dtype", "trainable", "input_dim", "input_shape", "batch_input_shape",
                             "batch_size", "weights", "activity_regularizer", "autocast", "dynamic"},
                "keras": {"name", "dtype", "trainable", "activity_regularizer", "autocast", "input_shape",
                          "input_dim"}}
_OBJECT_MODULES = ("initializers", "regularizers", "constraints")


def activation_name(value) -> str | None:
    """The activation name of a config value ('relu', {'class_name': 'relu', ...}), or None for a
    function object that is not a plain name (a custom activation)."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and value.get("module") == "keras.activations":
        inner = value.get("config")
        return inner if isinstance(inner, str) else value.get("class_name")
    return None


def policy_name(value) -> str:
    """The dtype policy's name ('float32', 'mixed_float16', ...) of a config's dtype value."""
    if isinstance(value, dict):
        inner = value.get("config") or {}
        if inner.get("mode"):  # Keras 3's quantized policies: {"mode": "int8", "source_name": ...}
            return f"{inner['mode']}_from_{inner.get('source_name', 'float32')}"
        return str(inner.get("name") or value.get("class_name"))
    return "float32" if value is None else str(value)


def _params(cls, framework: str) -> dict[str, Any]:
    """{argument: default} that `cls(...)` accepts (inspect.Parameter.empty when required):
    the named arguments of its __init__ and of the bases it forwards **kwargs to, and the
    keyword arguments the framework's base Layer takes."""
    base = __import__(framework).layers.Layer
    params: dict[str, Any] = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        if klass is base:
            return {**{k: None for k in _BASE_KWARGS[framework]}, **params}
        try:
            parameters = inspect.signature(init).parameters.values()
        except (TypeError, ValueError):
            return params
        for p in parameters:
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self":
                params.setdefault(p.name, p.default)
        if not any(p.kind == p.VAR_KEYWORD for p in parameters):
            return params
    return params


def convert_config(entry_name: str, class_name: str, config: dict, src_cls, dst_cls, *,
                   direction: str, dtype: str = "float32") -> dict:
    """`config` of layer `entry_name` rewritten for `dst_cls`; ConfigError naming the options
    that have no equivalent. direction: "in" (Keras 3 -> tf_keras) or "out"."""
    src_fw, dst_fw = ("keras", "tf_keras") if direction == "in" else ("tf_keras", "keras")
    renames = RENAMES_IN if direction == "in" else RENAMES_OUT
    accepted, defaults = _params(dst_cls, dst_fw), _params(src_cls, src_fw)
    unused = UNUSED_OUT.get(class_name, set()) if direction == "out" else set()
    out, lost = {}, []
    for key, value in json.loads(json.dumps(config, default=_plain)).items():
        new = renames.get((class_name, key), key)
        if key == "dtype" and "dtype" in accepted:
            out[new] = dtype
        elif new in accepted and key not in unused:
            out[new] = _convert_value(value, dst_fw)
        elif not _droppable(key, value, defaults, unused):
            lost.append(f"{key}={value!r}")
    if direction == "out" and class_name == "BatchNormalization" and isinstance(out.get("axis"), list):
        if len(out["axis"]) != 1:
            lost.append(f"axis={out['axis']!r}")
        else:  # tf_keras stores the axis as a list, Keras 3 takes one int
            out["axis"] = out["axis"][0]
    if lost:
        raise ConfigError(f"layer '{entry_name}' ({class_name}) has options with no "
                          f"{'tf_keras' if direction == 'in' else 'Keras 3'} equivalent: {', '.join(lost)}; "
                          "rebuild the layer without them")
    return out


def _plain(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (tuple, set)):
        return list(value)
    raise TypeError(f"cannot convert {type(value).__name__} in a layer config")


def _droppable(key: str, value, defaults: dict, unused: set) -> bool:
    if key in unused or value is None or value is False or (key, value) in (("trainable", True), ("dtype", "float32")):
        return True
    if key == "data_format" and value == "channels_last":
        return True
    default = defaults.get(key, inspect.Parameter.empty)
    return default is not inspect.Parameter.empty and _same(value, default)


def _same(value, default) -> bool:
    try:
        return json.dumps(value, default=_plain) == json.dumps(default, default=_plain)
    except TypeError:
        return False


def _convert_value(value, framework: str):
    """Initializer/regularizer/constraint configs: drop inner keys the target class lacks
    (when unset), refuse others; everything else passes through."""
    if not (isinstance(value, dict) and "class_name" in value and isinstance(value.get("config"), dict)):
        return value
    module = str(value.get("module") or "")
    kind = next((m for m in _OBJECT_MODULES if module.endswith(m)), None)
    if kind is None:
        return value
    namespace = getattr(__import__(framework), kind)
    cls = getattr(namespace, value["class_name"], None)
    if cls is None:
        raise ConfigError(f"{kind[:-1]} {value['class_name']!r} has no "
                          f"{'tf_keras' if framework == 'tf_keras' else 'Keras 3'} equivalent: "
                          "use a built-in one")
    accepted = {p for p in inspect.signature(cls.__init__).parameters if p != "self"}
    inner = {}
    for key, v in value["config"].items():
        if key in accepted:
            inner[key] = v
        elif v is not None:
            raise ConfigError(f"{kind[:-1]} {value['class_name']} option {key}={v!r} has no equivalent "
                              "in the other Keras version: use the default")
    return {"module": f"keras.{kind}", "class_name": value["class_name"], "config": inner,
            "registered_name": None}
