"""Analytic model complexity: parameters and multiply-accumulates (MACs) per example.

>>> c = keras_complexity(model)
>>> c["params"], c["macs"], c["layers"][0]
(131466, 2831744, {'name': 'conv1', 'type': 'Conv2D', 'params': 320, 'macs': 194688})

What counts as a MAC (one multiply plus one add, per example, batch 1):
- Conv1D/2D/3D: out_positions * kernel_positions * (C_in / groups) * C_out
- Conv2DTranspose (and 1D/3D): in_positions * kernel_positions * C_in * C_out
- DepthwiseConv2D / DepthwiseConv1D: out_positions * kernel_positions * C_in * depth_multiplier
- SeparableConv: its depthwise part plus its 1x1 pointwise part
- Dense: (product of the non-batch, non-feature output dims) * in_features * units
Everything else (bias adds, batch norm, activations, pooling, Add, Concatenate, resizing) counts
0 MACs: those are cheap elementwise ops that inference engines fuse or that are memory bound,
and they are not reported separately. `params` counts every weight, trainable or not (batch
norm's moving statistics included), as `model.count_params()` does. A nested model is counted
through its layers; a layer called several times is counted once per call.
"""
from __future__ import annotations

import math

import slimpipe.pipeline  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)


def keras_complexity(model) -> dict:
    """{"params": int, "macs": int, "layers": [{"name", "type", "params", "macs"}]}."""
    rows: list[dict] = []
    _collect(model, rows, prefix="")
    return {"params": int(model.count_params()), "macs": int(sum(r["macs"] for r in rows)),
            "layers": rows}


def _collect(model, rows: list[dict], prefix: str) -> None:
    for layer in model.layers:
        if hasattr(layer, "layers") and hasattr(layer, "count_params") and _is_model(layer):
            _collect(layer, rows, prefix=f"{prefix}{layer.name}/")
            continue
        macs = sum(layer_macs(layer, i, o) for i, o in _call_shapes(layer))
        rows.append({"name": prefix + layer.name, "type": type(layer).__name__,
                     "params": int(layer.count_params()) if layer.built else 0, "macs": int(macs)})


def _is_model(layer) -> bool:
    import tf_keras as keras

    return isinstance(layer, keras.Model)


def _call_shapes(layer) -> list[tuple[tuple, tuple]]:
    """(input_shape, output_shape) of every call of `layer` (usually one)."""
    try:
        return [(_shape(layer.input_shape), _shape(layer.output_shape))]
    except (AttributeError, RuntimeError):  # several inbound nodes, or never called
        pass
    shapes = []
    for node in getattr(layer, "inbound_nodes", []):
        shapes.append((_shape(node.input_shapes), _shape(node.output_shapes)))
    return shapes


def _shape(shape):
    """A single shape tuple; for multi-input layers the first input's shape."""
    if isinstance(shape, list):
        shape = shape[0] if shape else ()
    return tuple(shape) if shape is not None else ()


def layer_macs(layer, input_shape: tuple, output_shape: tuple) -> int:
    """MACs per example of one call of `layer` (0 for layers without multiplications)."""
    import tf_keras as keras

    L = keras.layers
    if not output_shape or any(d is None for d in output_shape[1:]):
        return 0
    conv_base = L.Conv2D.__mro__[1]  # keras' private Conv base class (Conv1D/2D/3D derive from it)
    if isinstance(layer, (L.DepthwiseConv2D, getattr(L, "DepthwiseConv1D", L.DepthwiseConv2D))):
        c_in = _channels(layer, input_shape)
        return _positions(layer, output_shape) * math.prod(layer.kernel_size) * c_in * layer.depth_multiplier
    if isinstance(layer, (L.SeparableConv1D, L.SeparableConv2D)):
        c_in = _channels(layer, input_shape)
        positions = _positions(layer, output_shape)
        depthwise = positions * math.prod(layer.kernel_size) * c_in * layer.depth_multiplier
        return depthwise + positions * c_in * layer.depth_multiplier * layer.filters
    if isinstance(layer, (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose)):
        c_in = _channels(layer, input_shape)
        return _positions(layer, input_shape) * math.prod(layer.kernel_size) * c_in * layer.filters
    if isinstance(layer, conv_base) and hasattr(layer, "filters"):
        c_in = _channels(layer, input_shape)
        groups = getattr(layer, "groups", 1) or 1
        return _positions(layer, output_shape) * math.prod(layer.kernel_size) * (c_in // groups) * layer.filters
    if isinstance(layer, L.Dense):
        return math.prod(output_shape[1:-1]) * int(input_shape[-1]) * layer.units
    return 0


def _channels(layer, shape) -> int:
    return int(shape[1] if getattr(layer, "data_format", "channels_last") == "channels_first" else shape[-1])


def _positions(layer, shape) -> int:
    """Spatial positions of a conv's input or output tensor (batch and channels left out)."""
    spatial = shape[2:] if getattr(layer, "data_format", "channels_last") == "channels_first" else shape[1:-1]
    return math.prod(int(d) for d in spatial)
