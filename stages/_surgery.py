"""Model surgery: physically remove whole filters (Conv2D) and neurons (Dense).

>>> groups = prunable_groups(model)                     # channel sets pruned together
>>> scores = channel_scores(model, groups[0], "l1")     # one score per channel
>>> small = prune_channels(model, {groups[0].id: np.argsort(scores)[4:]})

A *group* is the output channels of one Conv2D/Dense layer (its *producer*), or of several
producers tied together by an elementwise merge (Add, Multiply, ...): a residual Add needs the
same channel indices removed from every branch. Removing channel c of a group slices

- the producers' kernels (last axis) and biases;
- every BatchNormalization on those channels (gamma, beta, moving mean and variance) and every
  DepthwiseConv2D on them (kernel axis 2 and bias; its outputs are the same channels);
- every consumer's input: Conv2D kernel axis 2, Dense kernel rows; after Flatten the rows
  (s * C + c) for every spatial position s; after Concatenate the index shifted by the offset
  of the input's position.

Activations, dropout, pooling, padding, resizing and global pooling pass channels through. A
group whose channels reach a layer this module does not know (Reshape, custom, shared layers,
...) or the model's output (the logits) is not prunable; `analyze_groups` says why.
`prune_channels` rebuilds the model from its config with fewer filters/units and copies the
sliced weights, so the result is an ordinary dense Keras model.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np

import slimpipe.pipeline  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from slimpipe.pipeline.errors import ConfigError

CRITERIA = ("l1", "bn_scale")
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
class _T:
    """What is known about a tensor's last axis: consecutive channel segments."""

    segs: tuple[tuple[int | None, int], ...]  # (group, channels); group None = fixed channels
    flat: int = 0  # > 0: flattened over this many spatial positions, index = s * C + c
    origin: str | None = None  # the producer this tensor comes from through pass-through layers

    @property
    def channels(self) -> int:
        return sum(n for _, n in self.segs)


def _fixed(channels) -> _T:
    return _T(((None, int(channels or 0)),))


@dataclass
class _Analysis:
    model: object
    parent: list[int] = field(default_factory=list)  # union-find over group numbers
    size: list[int] = field(default_factory=list)
    producers: list[list[str]] = field(default_factory=list)
    members: list[list[str]] = field(default_factory=list)
    consumers: list[list[str]] = field(default_factory=list)
    reasons: dict[int, list[str]] = field(default_factory=dict)
    kind: dict[str, str] = field(default_factory=dict)  # weighted layer -> producer|depthwise|bn
    inputs: dict[str, _T] = field(default_factory=dict)  # weighted layer -> its input
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

    def fix(self, t: _T, reason: str) -> None:
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

    def index(self, t: _T, kept: Mapping[int, np.ndarray]) -> np.ndarray | None:
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

    def count(self, t: _T, counts: Mapping[int, int]) -> int:
        n = sum(counts.get(self.find(g), s) if g is not None else s for g, s in t.segs)
        return n * max(t.flat, 1)


# ---- graph analysis -------------------------------------------------------------------------

def _kind(layer, calls: int) -> str:
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


def _analyze(model) -> _Analysis:
    an = _Analysis(model)
    steps, given, outputs, calls = _graph(model)
    tensors: dict = {k: _fixed(c) for k, c in given.items()}
    for layer, in_keys, in_shapes, out_keys, out_shapes in steps:
        kind = _kind(layer, calls.get(layer.name, 1))
        ins = [tensors.get(k, _fixed(s[-1] if s else 0)) for k, s in zip(in_keys, in_shapes)]
        outs = _visit(an, layer, kind, ins, in_shapes, out_shapes)
        tensors.update(zip(out_keys, outs))
    for key in outputs:
        an.fix(tensors[key], "feeds the model output")
    return an


def _visit(an: _Analysis, layer, kind: str, ins: list[_T], in_shapes, out_shapes) -> list[_T]:
    name = layer.name
    inp = ins[0] if ins else None
    out_c = out_shapes[0][-1] if out_shapes and out_shapes[0] else 0

    def unknown(why: str) -> list[_T]:
        for t in ins:
            an.fix(t, f"consumed by {why}")
        return [_fixed(s[-1] if s else 0) for s in out_shapes]

    if kind.startswith("unknown:"):
        return unknown(kind[len("unknown:"):])
    if kind == "input":
        return [_fixed(out_c)]
    if kind in ("producer", "depthwise", "bn", "pass", "flatten") and len(ins) != 1:
        return unknown(f"{name} ({type(layer).__name__}) with {len(ins)} inputs")
    if kind not in ("merge", "concat", "flatten", "producer") and inp is not None and inp.flat and kind != "flatpass":
        return unknown(f"{name} ({type(layer).__name__}) after Flatten")
    if kind == "producer":
        if inp.flat and type(layer).__name__ != "Dense":
            return unknown(f"{name} after Flatten")
        an.kind[name], an.inputs[name] = kind, inp
        for g, _ in inp.segs:
            if g is not None:
                an.consumers[g].append(name)
        g = an.new_group(name, int(out_c))
        an.out_group[name] = g
        act = getattr(getattr(layer, "activation", None), "__name__", "")
        out = _T(((g, int(out_c)),), origin=name)
        if act in ("softmax", "log_softmax"):
            an.fix(out, f"{name} has a softmax activation, which mixes channels")
        return [out]
    if kind in ("depthwise", "bn"):
        an.kind[name], an.inputs[name] = kind, inp
        for g, _ in inp.segs:
            if g is not None:
                an.members[g].append(name)
        if kind == "bn":
            if inp.origin and inp.origin not in an.bn_of:
                an.bn_of[inp.origin] = name
            return [inp]
        return [_T(inp.segs)]
    if kind in ("pass", "flatpass"):
        # a pass-through layer keeps the channel count (a safety net for odd configurations)
        if out_c != inp.channels * max(inp.flat, 1):
            return unknown(f"{name} ({type(layer).__name__}), which changes the channel count")
        return [inp]
    if kind == "flatten":
        if inp.flat:
            return [inp]
        spatial = in_shapes[0][1:-1]
        if any(d is None for d in spatial):
            return unknown(f"{name} (Flatten) of an input with unknown spatial size")
        return [_T(inp.segs, flat=math.prod(spatial) if spatial else 1)]
    if kind == "concat":
        if any(t.flat for t in ins):
            return unknown(f"{name} (Concatenate) of flattened tensors")
        return [_T(tuple(s for t in ins for s in t.segs))]
    # merge: elementwise, every input must line up channel for channel
    layout = [tuple(n for _, n in t.segs) for t in ins]
    if len(set(layout)) != 1 or len({t.flat for t in ins}) != 1:
        return unknown(f"{name} ({type(layer).__name__}) of inputs whose channels do not line up")
    for t in ins[1:]:
        for (a, _), (b, _) in zip(ins[0].segs, t.segs):
            if a is not None and b is not None:
                an.union(a, b)
            elif a is not None or b is not None:
                an.fix(_T(((a if a is not None else b, 0),)),
                       f"tied by {name} ({type(layer).__name__}) to channels that cannot be pruned")
    return [_T(ins[0].segs, flat=ins[0].flat)]


def analyze_groups(model) -> list[Group]:
    """Every channel group of `model`, prunable or not (`Group.reason` says why not)."""
    return _analyze(model).groups()


def prunable_groups(model) -> list[Group]:
    """The channel groups of `model` that structured pruning can shrink."""
    return [g for g in analyze_groups(model) if g.prunable]


# ---- scores -------------------------------------------------------------------------------

def channel_scores(model, group: Group, criterion: str) -> np.ndarray:
    """One importance score per channel of `group` (higher = keep).

    "l1": L1 norm of each filter/neuron (Li et al. 2017), summed over a tied group's producers.
    "bn_scale": |gamma| of the BatchNormalization right after each producer (Liu et al. 2017,
    Network Slimming), summed over producers.
    """
    if criterion not in CRITERIA:
        raise ConfigError(f"criterion must be one of {', '.join(CRITERIA)}. Received: criterion={criterion!r}")
    if criterion == "bn_scale":
        missing = [p for p in group.producers
                   if group.bn.get(p) is None or not model.get_layer(group.bn[p]).scale]
        if missing:
            raise ConfigError(
                f"criterion 'bn_scale' expects a BatchNormalization (with scale=True) right after every "
                f"pruned layer; received {', '.join(missing)} without one: use criterion 'l1' or prune "
                f"only layers followed by batch norm")
    total = np.zeros(group.size, dtype=np.float64)
    for p in group.producers:
        if criterion == "bn_scale":
            total += np.abs(model.get_layer(group.bn[p]).gamma.numpy())
        else:
            kernel = model.get_layer(p).get_weights()[0]
            total += np.abs(kernel).reshape(-1, kernel.shape[-1]).sum(axis=0)
    return total


# ---- surgery ------------------------------------------------------------------------------

def _resolve_keep(an: _Analysis, keep: Mapping) -> dict[int, np.ndarray]:
    groups = {g.id: g for g in an.groups()}
    kept: dict[int, np.ndarray] = {}
    for key, idx in keep.items():
        if key not in an.out_group:
            raise ConfigError(f"prune_channels expects group ids ({', '.join(groups) or 'none'}); "
                              f"received {key!r}: pass ids from prunable_groups(model)")
        g = an.group_of(key)
        group = groups[an.producers[g][0]]
        if not group.prunable:
            raise ConfigError(f"prune_channels expects a prunable group; received {key!r}, which "
                              f"{group.reason}: leave it out of keep")
        idx = np.unique(np.asarray(idx, dtype=np.int64).ravel())
        if idx.size == 0 or idx[0] < 0 or idx[-1] >= group.size:
            raise ConfigError(f"prune_channels expects 1 to {group.size} channel indices in "
                              f"[0, {group.size}) for {key!r}; received {idx.size} in "
                              f"[{idx.min() if idx.size else '-'}, {idx.max() if idx.size else '-'}]: "
                              "keep at least one valid channel")
        if idx.size < group.size:
            kept[g] = idx
    return kept


def _slice_weight(w: np.ndarray, kind: str, in_idx, out_idx) -> np.ndarray:
    axes = {("producer", 4): (2, 3), ("producer", 2): (0, 1), ("producer", 1): (None, 0),
            ("depthwise", 4): (2, None), ("depthwise", 1): (0, None), ("bn", 1): (0, None)}
    in_axis, out_axis = axes[(kind, w.ndim)]
    if in_axis is not None and in_idx is not None:
        w = np.take(w, in_idx, axis=in_axis)
    if out_axis is not None and out_idx is not None:
        w = np.take(w, out_idx, axis=out_axis)
    return w


def prune_channels(model, keep: Mapping[str, np.ndarray]):
    """A NEW, smaller model keeping only the channels `keep[group_id]` of each group named.

    Groups left out of `keep` keep every channel. `model` is not modified.
    """
    import tf_keras as keras

    an = _analyze(model)
    kept = _resolve_keep(an, keep)
    config = copy.deepcopy(model.get_config())
    for entry in config["layers"]:
        name = entry["config"]["name"]
        if name in an.out_group and an.group_of(name) in kept:
            width = int(len(kept[an.group_of(name)]))
            entry["config"]["filters" if "filters" in entry["config"] else "units"] = width
    if isinstance(model, keras.Sequential):
        new = keras.Sequential.from_config(config)
    else:
        new = keras.Model.from_config(config)
    for layer in model.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        kind = an.kind.get(layer.name)
        if kind is not None:
            in_idx = an.index(an.inputs[layer.name], kept)
            g = an.group_of(layer.name) if kind == "producer" else None
            out_idx = kept.get(g) if g is not None else None
            weights = [_slice_weight(w, kind, in_idx, out_idx) for w in weights]
        new.get_layer(layer.name).set_weights(weights)
    return new


def complexity_model(model) -> Callable[[Mapping[str, int]], dict[str, int]]:
    """A function {group_id: kept channels} -> {"params", "macs"} of the pruned model, computed
    without building it (equal to benchmarks.complexity.keras_complexity of the result)."""
    from slimpipe.benchmarks.complexity import keras_complexity

    an = _analyze(model)
    total = keras_complexity(model)
    rows = {r["name"]: r for r in total["layers"]}
    fixed_params, fixed_macs = total["params"], total["macs"]  # minus the layers that shrink
    terms = []  # (kind, input tensor, in0, group, out0, weight (rank, size)s, macs0)
    for layer in model.layers:
        kind = an.kind.get(layer.name)
        if kind is None:
            continue
        row = rows[layer.name]
        fixed_params, fixed_macs = fixed_params - row["params"], fixed_macs - row["macs"]
        t = an.inputs[layer.name]
        g = an.out_group.get(layer.name)
        out0 = an.size[g] if g is not None else 0
        terms.append((kind, t, an.count(t, {}), g, out0,
                      [(w.shape.rank, int(np.prod(w.shape))) for w in layer.weights], row["macs"]))
    ids = {g.id: an.group_of(g.id) for g in an.groups()}

    def cost(counts: Mapping[str, int]) -> dict[str, int]:
        by_group = {ids[k]: int(v) for k, v in counts.items()}
        params, macs = fixed_params, fixed_macs
        for kind, t, in0, g, out0, weights, macs0 in terms:
            n_in = an.count(t, by_group)
            n_out = by_group.get(an.find(g), out0) if g is not None else 0
            for rank, size in weights:
                if kind != "producer":
                    params += size // in0 * n_in
                elif rank == 1:
                    params += size // out0 * n_out
                else:
                    params += size // (in0 * out0) * n_in * n_out
            macs += macs0 // (in0 * out0) * n_in * n_out if kind == "producer" else macs0 // in0 * n_in
        return {"params": int(params), "macs": int(macs)}

    return cost


# ---- allocation ---------------------------------------------------------------------------

def round_up(n: int, size: int, *, min_channels: int, round_to: int) -> int:
    """Channels kept: at least min_channels, a multiple of round_to, at most the original size."""
    n = max(n, min_channels)
    return min(size, -(-n // round_to) * round_to)


def select_channels(groups: list[Group], scores: Mapping[str, np.ndarray],
                    cost: Callable[[Mapping[str, int]], float], budget: float, *,
                    sizes: Mapping[str, int] | None = None, min_channels: int = 4,
                    round_to: int = 1, cost_exponent: float = 0.0,
                    floors: Mapping[str, int] | None = None) -> tuple[dict[str, np.ndarray], bool]:
    """Global ranking: drop the channels with the lowest normalized score, across all groups,
    until cost(kept channel counts) <= budget. Returns ({group id: kept indices}, reached).

    Scores are divided by their group's mean so that layers of different fan-in compare;
    kept counts are rounded up to multiples of `round_to` and never go below `min_channels`.
    With `cost_exponent` e > 0 the ranking is cost-aware: one channel at a time goes from the
    group whose next channel has the lowest score / saving**e, where saving is what removing it
    takes off the cost right now (e = 1: score per unit of cost saved). A MAC budget then cuts
    the wide-map convs, where a channel saves most, before the dense layers, where it saves little.
    `floors` ({group id: channels}) raises min_channels for the groups it names.
    """
    sizes = dict(sizes or {g.id: g.size for g in groups})
    floor = {g.id: max(min_channels, int((floors or {}).get(g.id, 0))) for g in groups}
    if cost_exponent > 0:
        return _select_cost_aware(groups, scores, cost, budget, sizes, floor, round_to, cost_exponent)
    order, owner = [], []
    for gi, g in enumerate(groups):
        s = np.asarray(scores[g.id], dtype=np.float64)
        mean = float(s.mean()) if s.size and s.mean() > 0 else 1.0
        removable = max(0, sizes[g.id] - min(sizes[g.id], floor[g.id]))
        lowest = np.sort(s)[:removable] / mean
        order.extend(lowest)
        owner.extend([gi] * len(lowest))
    rank = np.argsort(np.asarray(order), kind="stable")
    owner_sorted = np.asarray(owner, dtype=np.int64)[rank]

    def counts_at(k: int) -> dict[str, int]:
        removed = np.bincount(owner_sorted[:k], minlength=len(groups))
        return {g.id: round_up(sizes[g.id] - int(removed[i]), sizes[g.id], min_channels=floor[g.id],
                               round_to=round_to) for i, g in enumerate(groups)}

    lo, hi = 0, len(rank)
    if cost(counts_at(hi)) > budget:
        lo = hi
    while lo < hi:  # the smallest k that meets the budget (cost only falls as k grows)
        mid = (lo + hi) // 2
        if cost(counts_at(mid)) <= budget:
            hi = mid
        else:
            lo = mid + 1
    counts = counts_at(lo)
    return _highest(groups, scores, counts, sizes), cost(counts) <= budget


def _highest(groups, scores, counts, sizes) -> dict[str, np.ndarray]:
    """{group id: indices of its counts[id] highest-scoring channels, sorted} for the groups
    that lose channels."""
    return {g.id: np.sort(np.argsort(-np.asarray(scores[g.id]), kind="stable")[:counts[g.id]])
            for g in groups if counts[g.id] < sizes[g.id]}


def _select_cost_aware(groups, scores, cost, budget, sizes, floor, round_to, exponent):
    ranked = {}  # group id -> its normalized scores, lowest first
    for g in groups:
        s = np.asarray(scores[g.id], dtype=np.float64)
        mean = float(s.mean()) if s.size and s.mean() > 0 else 1.0
        ranked[g.id] = np.sort(s) / mean
    counts = dict(sizes)  # unrounded counts; the budget is checked on the rounded ones

    def rounded(c):
        return {g.id: round_up(c[g.id], sizes[g.id], min_channels=floor[g.id], round_to=round_to)
                for g in groups}

    while cost(rounded(counts)) > budget:
        now = cost(counts)
        best, best_priority = None, np.inf
        for g in groups:
            n = counts[g.id]
            if n <= min(sizes[g.id], floor[g.id]):
                continue
            saving = now - cost({**counts, g.id: n - 1})
            priority = ranked[g.id][sizes[g.id] - n] / max(float(saving), 1e-12) ** exponent
            if priority < best_priority:
                best, best_priority = g.id, priority
        if best is None:
            break
        counts[best] -= 1
    final = rounded(counts)
    return _highest(groups, scores, final, sizes), cost(final) <= budget
