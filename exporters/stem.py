"""Export-time rewrite of a model's stem: a stride-1 conv followed by a 2x2 max pool, computed
on a space-to-depth view of the input. Same function, different kernels.

A conv on a one-channel input has a tiny reduction depth (3x3x1 = 9), which XNNPACK's int8
kernels pad to their tile: the speed recipe's CNN's int8 conv1 on the 26x26 map took
5.6 us of a 9 us call, whatever its filter count. Rearranging the input into 2x2 blocks
(SPACE_TO_DEPTH: 28x28x1 -> 14x14x4) turns "k x k conv, stride 1, then 2x2/2 max pool" into

    SPACE_TO_DEPTH(2) -> CONV (kernel k//2 + 1, 4 x Cin inputs, 4 x C outputs: one group of
    C filters per position (a, b) of the 2x2 pool window) -> max over the 4 groups

with the same activation inside the conv ("same" padding: a ZeroPadding2D of k//2 first).
Every original output pixel (2i+a, 2j+b) is computed by group (a, b) at (i, j) from the same
input pixels and weights (the new kernel holds each weight once per group and zeros
elsewhere), so the max over the groups is the pool's output.
The new conv does more multiply-adds (16/9 as many for k = 3: the zeros) on a shape the kernels
run well: the CNN's whole int8 call took 7.7 instead of 10.5 us here. The report counts the
file's own MACs and parameters.

>>> rewritten, info = space_to_depth_stem(model)   # (None, "why not") where it does not apply
>>> info
{'conv': 'conv1', 'pool': 'pool1', 'block': 2, 'filters': 8, 'new_kernel': [2, 2, 4, 32], ...}
"""
from __future__ import annotations

import functools

import numpy as np

import slimpipe.pipeline  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from slimpipe.pipeline.errors import ExportValidationError
from slimpipe.pipeline.kerasio import clone_with_weights

BLOCK = 2
# The rewritten model must reproduce the original's outputs to float32 round-off.
RTOL, ATOL = 1e-4, 1e-4


def space_to_depth_stem(model, *, check_inputs: np.ndarray | None = None):
    """(a NEW model computing the same function with the stem rewritten, a JSON-ready record)
    or (None, a sentence saying why the rewrite does not apply). `model` is not modified.

    Applies when the model has one image input (NHWC) of even height and width, feeding only a
    Conv2D (stride 1, no dilation or groups, odd kernel, padding "valid" or "same") whose output
    feeds only a MaxPooling2D (pool 2x2, stride 2). `check_inputs` (a few model inputs, default
    4 seeded uniform [0, 1) images) are run through both models: outputs that differ by more than
    float round-off raise ExportValidationError (a bug here, never silently a wrong file).
    """
    import tf_keras as keras

    names, reason = _stem_layers(model)
    if reason:
        return None, reason
    source = clone_with_weights(model)  # new layer objects: calling them again touches no input
    conv, pool = (source.get_layer(name) for name in names)
    try:
        rest = keras.Model(pool.output, source.outputs, name=f"{source.name}_after_stem")
    except ValueError as exc:  # "Graph disconnected": a later layer reads the input itself
        return None, f"a layer after {pool.name!r} reads something before it ({exc})"

    kernel, bias = _stem_weights(conv)
    SpaceToDepth, GroupMax = _layers()  # noqa: N806
    x = inp = keras.Input(shape=source.input_shape[1:], dtype=source.inputs[0].dtype,
                          name=source.inputs[0].name.split(":")[0])
    if conv.padding == "same":
        (kh, kw) = conv.kernel_size
        x = keras.layers.ZeroPadding2D(((kh // 2, kh // 2), (kw // 2, kw // 2)), name=f"{conv.name}_pad")(x)
    x = SpaceToDepth(BLOCK, name=f"{conv.name}_space_to_depth")(x)
    new_conv = keras.layers.Conv2D(kernel.shape[-1], kernel.shape[:2], padding="valid",
                                   activation=conv.activation, use_bias=True, name=f"{conv.name}_s2d")
    x = new_conv(x)
    x = GroupMax(BLOCK * BLOCK, name=f"{pool.name}_s2d")(x)
    outputs = rest(x)
    new = keras.Model(inp, outputs, name=source.name)
    new_conv.set_weights([kernel, bias])

    if check_inputs is None:
        check_inputs = np.random.default_rng(0).random((4, *source.input_shape[1:]), dtype=np.float32)
    want = np.asarray(model(check_inputs, training=False))
    got = np.asarray(new(check_inputs, training=False))
    if want.shape != got.shape or not np.allclose(got, want, rtol=RTOL, atol=ATOL):
        raise ExportValidationError(
            f"space_to_depth_stem: the rewritten {model.name!r} differs from the original (max |diff| "
            f"{np.max(np.abs(got - want)) if want.shape == got.shape else 'shape ' + str(got.shape)}). "
            f"Expected the same outputs; fix: set space_to_depth_stem = false and report this model")
    info = {"conv": conv.name, "pool": pool.name, "block": BLOCK, "filters": int(conv.filters),
            "new_kernel": [int(v) for v in kernel.shape],  # (kh, kw, in, out) of the conv run instead
            "max_abs_diff": float(np.max(np.abs(got - want)))}
    return new, info


def _stem_layers(model) -> tuple[tuple[str, str] | None, str | None]:
    """((conv name, pool name), None) for a stem the rewrite applies to, else (None, why not)."""
    import tf_keras as keras

    def no(reason: str):
        return None, reason

    if len(model.inputs) != 1 or len(model.outputs) != 1:
        return no(f"the model has {len(model.inputs)} inputs and {len(model.outputs)} outputs (needs one of each)")
    shape = tuple(model.input_shape)
    if len(shape) != 4 or any(d is None for d in shape[1:3]):
        return no(f"the input is not an image of fixed size (shape {shape})")
    first = _consumers(model, model.inputs[0])
    if len(first) != 1 or type(first[0]) is not keras.layers.Conv2D:  # not its subclasses
        names = ", ".join(f"{layer.name} ({type(layer).__name__})" for layer in first)
        return no(f"the input feeds {names or 'no layer'}, not one Conv2D")
    conv = first[0]
    if conv.data_format != "channels_last":
        return no(f"{conv.name} is channels_first")
    if tuple(conv.strides) != (1, 1) or tuple(conv.dilation_rate) != (1, 1) or conv.groups != 1:
        return no(f"{conv.name} has strides {tuple(conv.strides)}, dilation {tuple(conv.dilation_rate)}, "
                  f"groups {conv.groups} (needs 1, 1, 1)")
    if conv.padding not in ("valid", "same") or any(k % 2 == 0 for k in conv.kernel_size):
        return no(f"{conv.name} has kernel {tuple(conv.kernel_size)}, padding {conv.padding!r} (needs an odd kernel)")
    if any(d % BLOCK for d in shape[1:3]):
        return no(f"the input is {shape[1]}x{shape[2]} (needs even height and width)")
    after = _consumers(model, conv.output)
    if len(after) != 1 or type(after[0]) is not keras.layers.MaxPooling2D:
        names = ", ".join(f"{layer.name} ({type(layer).__name__})" for layer in after)
        return no(f"{conv.name} feeds {names or 'nothing'}, not one MaxPooling2D")
    pool = after[0]
    if tuple(pool.pool_size) != (BLOCK, BLOCK) or tuple(pool.strides) != (BLOCK, BLOCK) \
            or pool.data_format != "channels_last":
        return no(f"{pool.name} pools {tuple(pool.pool_size)} with strides {tuple(pool.strides)} (needs 2x2, stride 2)")
    return (conv.name, pool.name), None


def _consumers(model, tensor) -> list:
    """The model's layers called on `tensor` (for a Sequential: the next layer)."""
    import tf_keras as keras

    if isinstance(model, keras.Sequential):
        layers = model.layers
        if tensor is model.inputs[0]:
            return layers[:1]
        for i, layer in enumerate(layers[:-1]):
            if layer.output is tensor:
                return [layers[i + 1]]
        return []
    nodes = getattr(model, "_network_nodes", set())
    out = []
    for layer in model.layers:
        for i, node in enumerate(layer.inbound_nodes):
            if f"{layer.name}_ib-{i}" in nodes and any(t is tensor for t in node.keras_inputs):
                out.append(layer)
    return out


def _stem_weights(conv) -> tuple[np.ndarray, np.ndarray]:
    """The space-to-depth conv's kernel and bias. Output group g = 2a + b computes the original
    output pixel (2i+a, 2j+b) at (i, j): the input pixel (2i + a + ky, 2j + b + kx) lies in block
    (i + u, j + v) at offset (dy, dx), with (u, dy) = divmod(a + ky, 2), likewise (v, dx); the
    block's channels are ordered (dy, dx, c) (tf.nn.space_to_depth)."""
    weights = conv.get_weights()
    w = weights[0]
    kh, kw, cin, filters = w.shape
    bias = weights[1] if conv.use_bias else np.zeros(filters, w.dtype)
    # u = (a + ky) // 2 <= (1 + kh - 1) // 2: kh // 2 + 1 taps (2 for a 3x3 kernel)
    new = np.zeros((kh // BLOCK + 1, kw // BLOCK + 1, BLOCK * BLOCK * cin, BLOCK * BLOCK * filters), w.dtype)
    for a in range(BLOCK):
        for b in range(BLOCK):
            group = slice((a * BLOCK + b) * filters, (a * BLOCK + b + 1) * filters)
            for ky in range(kh):
                u, dy = divmod(a + ky, BLOCK)
                for kx in range(kw):
                    v, dx = divmod(b + kx, BLOCK)
                    block = (dy * BLOCK + dx) * cin
                    new[u, v, block:block + cin, group] = w[ky, kx]
    return new, np.tile(bias, BLOCK * BLOCK)


@functools.lru_cache(maxsize=None)
def _layers():
    """The two layer classes (built on first use: TensorFlow loads lazily)."""
    import tensorflow as tf
    import tf_keras as keras

    class SpaceToDepth(keras.layers.Layer):
        """tf.nn.space_to_depth (TFLite SPACE_TO_DEPTH, which XNNPACK runs)."""

        def __init__(self, block: int, **kwargs):
            super().__init__(**kwargs)
            self.block = block

        def call(self, x):
            return tf.nn.space_to_depth(x, self.block)

        def get_config(self):
            return {**super().get_config(), "block": self.block}

    class GroupMax(keras.layers.Layer):
        """Max over `groups` equal channel groups: (N, H, W, g*C) -> (N, H, W, C), as a 1 x g max
        pool on a (N, H*W, g, C) view, so the file keeps to RESHAPE and MAX_POOL_2D (a fixed
        -1 batch: Keras' Reshape would add SHAPE/PACK ops that split XNNPACK's graph)."""

        def __init__(self, groups: int, **kwargs):
            super().__init__(**kwargs)
            self.groups = groups

        def call(self, x):
            h, w, c = x.shape[1], x.shape[2], x.shape[3] // self.groups
            x = tf.reshape(x, (-1, h * w, self.groups, c))
            x = tf.nn.max_pool2d(x, (1, self.groups), (1, self.groups), "VALID")
            return tf.reshape(x, (-1, h, w, c))

        def get_config(self):
            return {**super().get_config(), "groups": self.groups}

    return SpaceToDepth, GroupMax

