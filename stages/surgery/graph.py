"""The channel graph of a Keras model: which output channels must be pruned together.

A *group* is the output channels of one Conv2D/Dense layer (its *producer*), or of several
producers tied together by an elementwise merge (Add, Multiply, ...): a residual Add needs the
same channel indices removed from every branch. Activations, dropout, pooling, padding, resizing
and global pooling pass channels through; batch norms and depthwise convs on a group's channels
are its *members*; the layers reading them are its *consumers*. A group whose channels reach a
layer this module does not know (Reshape, custom, shared layers, ...) or the model's output (the
logits) is not prunable; `analyze_groups` says why.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

import slimpipe.pipeline  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

_INPUT = "__input__"


@dataclass(frozen=True)
class Group:
    """Output channels pruned together. `id` is the first producer's name."""

    id: str
    producers: tuple[str, ...]
    size: int
    bn: Mapping[str, str | None]  # producer -> the BatchNormalization right after it (or None)
    members: tuple[str, ...]  # BatchNormalization / DepthwiseConv2D layers on these channels
    consumers: tuple[str, ...]  # Conv2D / Dense layers whose input channels are sliced
    reason: str | None = None  # why the group cannot be pruned; None when it can

    @property
    def prunable(self) -> bool:
        return self.reason is None


@dataclass(frozen=True)
class Channels:
    """What is known about a tensor's last axis: consecutive channel segments."""

    segs: tuple[tuple[int | None, int], ...]  # (group, channels); group None = fixed channels
    flat: int = 0  # > 0: flattened over this many spatial positions, index = s * C + c
    origin: str | None = None  # the producer this tensor comes from through pass-through layers

    @property
    def channels(self) -> int:
        return sum(n for _, n in self.segs)


def fixed(channels) -> Channels:
    return Channels(((None, int(channels or 0)),))


@dataclass
class Analysis:
    model: object
    parent: list[int] = field(default_factory=list)  # union-find over group numbers
    size: list[int] = field(default_factory=list)
    producers: list[list[str]] = field(default_factory=list)
    members: list[list[str]] = field(default_factory=list)
    consumers: list[list[str]] = field(default_factory=list)
    reasons: dict[int, list[str]] = field(default_factory=dict)
    kind: dict[str, str] = field(default_factory=dict)  # weighted layer -> producer|depthwise|bn
    inputs: dict[str, Channels] = field(default_factory=dict)  # weighted layer -> its input
    out_group: dict[str, int] = field(default_factory=dict)  # producer -> group number
    bn_of: dict[str, str] = field(default_factory=dict)

    def find(self, g: int) -> int:
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def new_group(self, producer: str, size: int) -> int:
        g = len(self.parent)
        self.parent.append(g)
        self.size.append(size)
        self.producers.append([producer])
        self.members.append([])
        self.consumers.append([])
        return g

    def union(self, a: int, b: int) -> None:
        a, b = self.find(a), self.find(b)
        if a == b:
            return
        a, b = min(a, b), max(a, b)  # the earlier group (first producer) stays the root
        self.parent[b] = a
        for lists in (self.producers, self.members, self.consumers):
            lists[a] += lists[b]
        self.reasons.setdefault(a, []).extend(self.reasons.pop(b, []))

    def fix(self, t: Channels, reason: str) -> None:
        for g, _ in t.segs:
            if g is not None:
                self.reasons.setdefault(self.find(g), []).append(reason)

    def groups(self) -> list[Group]:
        out = []
        for g in range(len(self.parent)):
            if self.find(g) != g:
                continue
            reasons = list(dict.fromkeys(self.reasons.get(g, [])))
            prods = tuple(self.producers[g])
            out.append(Group(id=prods[0], producers=prods, size=self.size[g],
                             bn={p: self.bn_of.get(p) for p in prods},
                             members=tuple(dict.fromkeys(self.members[g])),
                             consumers=tuple(dict.fromkeys(self.consumers[g])),
                             reason="; ".join(reasons) if reasons else None))
        return out

    def group_of(self, producer: str) -> int:
        return self.find(self.out_group[producer])

    def index(self, t: Channels, kept: Mapping[int, np.ndarray]) -> np.ndarray | None:
        """Indices into `t`'s last axis (flattened axis for Flatten output) that survive."""
        parts, offset, pruned = [], 0, False
        for g, n in t.segs:
            k = kept.get(self.find(g)) if g is not None else None
            pruned |= k is not None
            parts.append(offset + (np.asarray(k) if k is not None else np.arange(n)))
            offset += n
        if not pruned:
            return None
        idx = np.concatenate(parts).astype(np.int64)
        if t.flat:
            idx = (np.arange(t.flat)[:, None] * offset + idx[None, :]).ravel()
        return idx

    def count(self, t: Channels, counts: Mapping[int, int]) -> int:
        n = sum(counts.get(self.find(g), s) if g is not None else s for g, s in t.segs)
        return n * max(t.flat, 1)


# ---- graph analysis -------------------------------------------------------------------------

def layer_kind(layer, calls: int) -> str:
    """producer | depthwise | bn | flatten | merge | concat | pass | flatpass | input | unknown:why"""
    import tf_keras as keras

    L = keras.layers
    cls = type(layer).__name__
    if calls > 1:
        return f"unknown:{layer.name} ({cls}) is called {calls} times (shared weights)"
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        return f"unknown:{layer.name} ({cls}) is channels_first"
    if isinstance(layer, L.InputLayer):
        return "input"
    if type(layer) is L.Conv2D or type(layer) is L.Dense:
        if getattr(layer, "groups", 1) != 1:
            return f"unknown:{layer.name} (Conv2D) is a grouped convolution"
        return "producer"
    if type(layer) is L.DepthwiseConv2D:
        if layer.depth_multiplier != 1:
            return f"unknown:{layer.name} (DepthwiseConv2D) has depth_multiplier {layer.depth_multiplier}"
        return "depthwise"
    if type(layer) is L.BatchNormalization:
        axis = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
        rank = len(layer.input_shape) if layer.built else 0
        if len(axis) != 1 or axis[0] not in (-1, rank - 1):
            return f"unknown:{layer.name} (BatchNormalization) does not normalize the last axis"
        return "bn"
    if type(layer) is L.Flatten:
        return "flatten"
    if isinstance(layer, (L.Add, L.Subtract, L.Multiply, L.Average, L.Maximum, L.Minimum)):
        return "merge"
    if type(layer) is L.Concatenate:
        return "concat" if layer.axis == -1 else f"unknown:{layer.name} (Concatenate) joins axis {layer.axis}"
    if isinstance(layer, L.Activation):
        act = getattr(layer.activation, "__name__", str(layer.activation))
        return f"unknown:{layer.name} (softmax) mixes channels" if act in ("softmax", "log_softmax") else "flatpass"
    flatpass = (L.ReLU, L.LeakyReLU, L.ELU, L.ThresholdedReLU, L.Dropout, L.GaussianNoise,
                L.GaussianDropout, L.AlphaDropout, L.ActivityRegularization)
    if type(layer) in flatpass or type(layer) is getattr(L, "Identity", None):
        return "flatpass"
    spatial = (L.MaxPooling1D, L.MaxPooling2D, L.MaxPooling3D, L.AveragePooling1D, L.AveragePooling2D,
               L.AveragePooling3D, L.GlobalAveragePooling1D, L.GlobalAveragePooling2D,
               L.GlobalMaxPooling1D, L.GlobalMaxPooling2D, L.ZeroPadding2D, L.Cropping2D,
               L.UpSampling2D, L.Resizing, L.SpatialDropout1D, L.SpatialDropout2D)
    if type(layer) in spatial:
        return "pass"
    if type(layer) is L.Rescaling and np.ndim(layer.scale) == 0 and np.ndim(layer.offset) == 0:
        return "pass"
    return f"unknown:{layer.name} ({cls}) is a layer type structured pruning does not handle"


def _key(tensor) -> tuple:
    layer, node_index, tensor_index = tensor._keras_history
    return (layer.name, node_index, tensor_index)


def _graph(model):
    """[(layer, input keys, input shapes, output keys, output shapes)] in topological order,
    the input tensors' keys and channels, and the model's output keys."""
    import tensorflow as tf
    import tf_keras as keras

    if isinstance(model, keras.Sequential):
        steps, prev = [], _INPUT
        for layer in model.layers:
            steps.append((layer, [prev], [tuple(layer.input_shape)], [layer.name], [tuple(layer.output_shape)]))
            prev = layer.name
        return steps, {_INPUT: model.input_shape[-1]}, [prev], {layer.name: 1 for layer in model.layers}
    nodes = getattr(model, "_network_nodes", set())
    steps, calls = [], {}
    for layer in model.layers:
        mine = [(i, node) for i, node in enumerate(layer.inbound_nodes) if f"{layer.name}_ib-{i}" in nodes]
        calls[layer.name] = len(mine)
        for i, node in mine:
            outs = tf.nest.flatten(node.outputs)
            steps.append((layer, [_key(t) for t in node.keras_inputs], [tuple(t.shape) for t in node.keras_inputs],
                          [(layer.name, i, j) for j in range(len(outs))], [tuple(t.shape) for t in outs]))
    return steps, {}, [_key(t) for t in model.outputs], calls


def analyze(model) -> Analysis:
    an = Analysis(model)
    steps, given, outputs, calls = _graph(model)
    tensors: dict = {k: fixed(c) for k, c in given.items()}
    for layer, in_keys, in_shapes, out_keys, out_shapes in steps:
        kind = layer_kind(layer, calls.get(layer.name, 1))
        ins = [tensors.get(k, fixed(s[-1] if s else 0)) for k, s in zip(in_keys, in_shapes)]
        outs = _visit(an, layer, kind, ins, in_shapes, out_shapes)
        tensors.update(zip(out_keys, outs))
    for key in outputs:
        an.fix(tensors[key], "feeds the model output")
    return an


def _visit(an: Analysis, layer, kind: str, ins: list[Channels], in_shapes, out_shapes) -> list[Channels]:
    """What one layer does to the channel layout of its inputs (and to the groups)."""
    name, cls = layer.name, type(layer).__name__
    inp = ins[0] if ins else None
    out_c = int(out_shapes[0][-1]) if out_shapes and out_shapes[0] else 0

    def unknown(why: str) -> list[Channels]:
        for t in ins:
            an.fix(t, f"consumed by {why}")
        return [fixed(s[-1] if s else 0) for s in out_shapes]

    if kind.startswith("unknown:"):
        return unknown(kind[len("unknown:"):])
    if kind == "input":
        return [fixed(out_c)]
    if kind in ("producer", "depthwise", "bn", "pass", "flatten") and len(ins) != 1:
        return unknown(f"{name} ({cls}) with {len(ins)} inputs")
    if kind not in ("merge", "concat", "flatten", "producer") and inp is not None and inp.flat and kind != "flatpass":
        return unknown(f"{name} ({cls}) after Flatten")
    if kind == "producer":
        return unknown(f"{name} after Flatten") if inp.flat and cls != "Dense" else [_producer(an, layer, inp, out_c)]
    if kind in ("depthwise", "bn"):
        return [_member(an, name, kind, inp)]
    if kind in ("pass", "flatpass"):
        # a pass-through layer keeps the channel count (a safety net for odd configurations)
        if out_c != inp.channels * max(inp.flat, 1):
            return unknown(f"{name} ({cls}), which changes the channel count")
        return [inp]
    if kind == "flatten":
        if inp.flat:
            return [inp]
        spatial = in_shapes[0][1:-1]
        if any(d is None for d in spatial):
            return unknown(f"{name} (Flatten) of an input with unknown spatial size")
        return [Channels(inp.segs, flat=math.prod(spatial) if spatial else 1)]
    if kind == "concat":
        if any(t.flat for t in ins):
            return unknown(f"{name} (Concatenate) of flattened tensors")
        return [Channels(tuple(s for t in ins for s in t.segs))]
    # merge: elementwise, every input must line up channel for channel
    layout = [tuple(n for _, n in t.segs) for t in ins]
    if len(set(layout)) != 1 or len({t.flat for t in ins}) != 1:
        return unknown(f"{name} ({cls}) of inputs whose channels do not line up")
    _tie(an, f"{name} ({cls})", ins)
    return [Channels(ins[0].segs, flat=ins[0].flat)]


def _producer(an: Analysis, layer, inp: Channels, out_c: int) -> Channels:
    """A Conv2D/Dense: consumes its input's groups and starts a group of its own."""
    name = layer.name
    an.kind[name], an.inputs[name] = "producer", inp
    for g, _ in inp.segs:
        if g is not None:
            an.consumers[g].append(name)
    g = an.new_group(name, out_c)
    an.out_group[name] = g
    act = getattr(getattr(layer, "activation", None), "__name__", "")
    out = Channels(((g, out_c),), origin=name)
    if act in ("softmax", "log_softmax"):
        an.fix(out, f"{name} has a softmax activation, which mixes channels")
    return out


def _member(an: Analysis, name: str, kind: str, inp: Channels) -> Channels:
    """A BatchNormalization or DepthwiseConv2D: works on its input's channels one by one."""
    an.kind[name], an.inputs[name] = kind, inp
    for g, _ in inp.segs:
        if g is not None:
            an.members[g].append(name)
    if kind == "bn":
        if inp.origin and inp.origin not in an.bn_of:
            an.bn_of[inp.origin] = name
        return inp
    return Channels(inp.segs)


def _tie(an: Analysis, what: str, ins: list[Channels]) -> None:
    """An elementwise merge: the i-th channel of every input goes together."""
    for t in ins[1:]:
        for (a, _), (b, _) in zip(ins[0].segs, t.segs):
            if a is not None and b is not None:
                an.union(a, b)
            elif a is not None or b is not None:
                an.fix(Channels(((a if a is not None else b, 0),)),
                       f"tied by {what} to channels that cannot be pruned")


def analyze_groups(model) -> list[Group]:
    """Every channel group of `model`, prunable or not (`Group.reason` says why not)."""
    return analyze(model).groups()


def prunable_groups(model) -> list[Group]:
    """The channel groups of `model` that structured pruning can shrink."""
    return [g for g in analyze_groups(model) if g.prunable]


