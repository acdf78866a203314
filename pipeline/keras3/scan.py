"""Read a Keras 3 model config, before Keras deserializes anything, and refuse what cannot be
translated to tf_keras: one line naming every such layer, its class, and what to do.

Refused: custom layers not registered with `--custom-objects`, Lambda layers without
`--allow-unsafe-model` (their Python code runs when the model is loaded), layers and keras.ops
calls with no tf_keras equivalent, activations that compute something else in tf_keras,
`channels_first` layers (slimpipe feeds NHWC images), and dtype policies other than float32
and mixed precision (float16/bfloat16/float64 models, and Keras 3's quantized int8/float8/int4
layers). Mixed precision (`mixed_float16`, `mixed_bfloat16`) keeps float32 weights, so it is
translated to a float32 model (`mixed_policies` names the layers that had it).
"""
from __future__ import annotations

from slimpipe.pipeline.errors import ConfigError
from slimpipe.pipeline.keras3.graph import MODEL_CLASSES, Entry, Graph, parse, refs_in
from slimpipe.pipeline.keras3.table import (ACTIVATIONS_IN, APPLICATION_LAYERS, DECOMPOSED, LAYERS, OPS,
                                            activation_name, policy_name)

MIXED = ("mixed_float16", "mixed_bfloat16")
CUSTOM_FIX = "register it in both Keras versions with --custom-objects FILE.py"
LAMBDA_FIX = "its Python code runs when the model is loaded; pass --allow-unsafe-model if you trust the file"
_SHOWN = 6  # names listed per kind of problem


def walk(graph: Graph):
    """Every entry of the graph and of the models nested in it, depth first."""
    for entry in graph.entries:
        yield entry
        if entry.is_model:
            yield from walk(parse(entry.class_name, entry.config))


def is_op(entry: Entry) -> bool:
    """A keras.ops call stored as a graph node. In .h5 files Keras 3 stores no module; an op is
    then told by its config, which holds only a name (a layer's holds its dtype too)."""
    if entry.module is None:
        return entry.class_name != "InputLayer" and set(entry.config) <= {"name"}
    return str(entry.module).startswith("keras.src.ops")


def application_layer(entry: Entry) -> str | None:
    """The tf_keras registered name for a keras.applications layer (ConvNeXt's LayerScale)."""
    return APPLICATION_LAYERS.get((str(entry.module or ""), entry.class_name))


def is_standard(entry: Entry) -> bool:
    module = str(entry.module or "keras.layers")
    return entry.class_name in LAYERS and module.startswith("keras")


def scan(graph: Graph, *, custom: frozenset[str] = frozenset(), allow_unsafe: bool = False) -> list[str]:
    """ConfigError listing everything untranslatable; else the names of mixed-precision layers."""
    problems: dict[str, list[str]] = {}
    mixed: list[str] = []

    def add(kind: str, text: str) -> None:
        problems.setdefault(kind, []).append(text)

    for entry in walk(graph):
        _check_entry(entry, custom, allow_unsafe, add)
        policy = policy_name(entry.config.get("dtype"))
        if entry.class_name == "InputLayer":
            continue
        if policy in MIXED:
            mixed.append(entry.name)
        elif "_from_" in policy:
            add("quantized", f"'{entry.name}' ({entry.class_name}, {policy})")
        elif policy != "float32":
            add("dtype", f"'{entry.name}' ({entry.class_name}, dtype policy {policy})")
        if entry.config.get("data_format") == "channels_first":
            add("channels_first", f"'{entry.name}' ({entry.class_name})")
    if problems:
        raise ConfigError(f"model '{graph.name}' cannot be translated from Keras 3 to tf_keras: "
                          + "; ".join(_sentence(kind, items) for kind, items in problems.items()))
    return mixed


def _check_entry(entry: Entry, custom, allow_unsafe: bool, add) -> None:
    if entry.key in custom or entry.class_name in custom:
        return
    if entry.is_model:
        if entry.class_name in MODEL_CLASSES and str(entry.module or "keras").startswith("keras"):
            return
        add("custom", f"'{entry.name}' ({entry.key})")
    elif entry.class_name == "Lambda":
        if not allow_unsafe:
            add("lambda", f"'{entry.name}' (Lambda)")
    elif is_op(entry) and entry.module is None:
        add("h5ops", f"'{entry.name}' ({entry.class_name})")
    elif is_op(entry):
        _check_op(entry, add)
    elif application_layer(entry) is not None:
        return
    elif is_standard(entry):
        _check_activation(entry, add)
    elif str(entry.module or "").startswith("keras"):
        add("unsupported", f"'{entry.name}' ({entry.class_name})")
    else:
        add("custom", f"'{entry.name}' ({entry.key}, from {entry.module or 'an unknown module'})")


def _check_op(entry: Entry, add) -> None:
    name = f"'{entry.name}' (keras.ops {entry.class_name})"
    if entry.class_name not in OPS:
        add("unsupported", name)
        return
    for call in entry.calls:
        if not _op_arguments_ok(entry.class_name, call.args) or any(v is not None for v in call.kwargs.values()):
            add("unsupported", f"{name} on these arguments (slimpipe maps two tensors, or a tensor and "
                               "a number, but not a number divided by a tensor)")
            return


def _op_arguments_ok(op: str, args: list) -> bool:
    if len(args) != 2:
        return False
    tensor = [bool(refs_in(a)) for a in args]
    number = [isinstance(a, (int, float)) and not isinstance(a, bool) for a in args]
    if all(tensor):
        return OPS[op] is not None  # a merge layer exists (Divide has none)
    if tensor[0] and number[1]:
        return True
    return number[0] and tensor[1] and OPS[op] is not None  # c - x, but not c / x


def _check_activation(entry: Entry, add) -> None:
    value = entry.config.get("activation")
    if value is None:
        return
    name = activation_name(value)
    if name is None or (name not in ACTIVATIONS_IN and name not in DECOMPOSED):
        add("activation", f"'{entry.name}' ({entry.class_name}, activation {name or value!r})")


_FIXES = {
    "custom": ("custom layers", CUSTOM_FIX),
    "lambda": ("Lambda layers", LAMBDA_FIX),
    "unsupported": ("layers with no tf_keras equivalent", "rebuild them from standard keras.layers"),
    "h5ops": ("keras.ops calls", "Keras 3 cannot load those from .h5 files (its legacy format); save "
              "the model as .keras"),
    "activation": ("activations with no tf_keras equivalent",
                   "use relu, relu6, gelu, silu, sigmoid, tanh, softmax, hard_silu or hard_sigmoid"),
    "channels_first": ("channels_first layers",
                       "slimpipe feeds images as (height, width, channels): rebuild the model with "
                       "data_format='channels_last' (the weights stay the same)"),
    "dtype": ("layers that do not compute in float32 or mixed precision",
              "rebuild the model with the float32 policy (keras.config.set_dtype_policy('float32')) "
              "and copy the weights over"),
    "quantized": ("layers quantized by Keras 3's model.quantize()",
                  "slimpipe compresses float models: pass the model as saved before model.quantize()"),
}


def _sentence(kind: str, items: list[str]) -> str:
    what, fix = _FIXES[kind]
    shown = ", ".join(items[:_SHOWN]) + (f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else "")
    return f"{what} {shown}: {fix}"
