"""Channel scores, and the surgery itself: a new, smaller model without the dropped channels.

Removing channel c of a group slices the producers' kernels (last axis) and biases; every
BatchNormalization on those channels (gamma, beta, moving mean and variance) and every
DepthwiseConv2D on them (kernel axis 2 and bias); every consumer's input: Conv2D kernel axis 2,
Dense kernel rows, after Flatten the rows (s * C + c) for every spatial position s, after
Concatenate the index shifted by the offset of the input's position. `prune_channels` rebuilds
the model from its config with fewer filters/units and copies the sliced weights, so the result
is an ordinary dense Keras model.
"""
from __future__ import annotations

import copy
from typing import Mapping

import numpy as np

from slimpipe.pipeline.errors import ConfigError
from slimpipe.stages.surgery.graph import Analysis, Group, analyze

CRITERIA = ("l1", "bn_scale")


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

def _resolve_keep(an: Analysis, keep: Mapping) -> dict[int, np.ndarray]:
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

    an = analyze(model)
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


