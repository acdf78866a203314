"""Low-rank factorization of Dense and Conv2D layers by truncated SVD, as model surgery.

>>> plan = plan_layer(model.get_layer("fc1"), conv="spatial")      # shapes, costs, singular values
>>> plan.rank_for_energy(0.9), plan.pays(rank=16)
(37, True)
>>> small = factorize(model, {"fc1": 16}, conv="spatial")          # a new model; `model` is unchanged

A Dense kernel W (in x out) becomes U_r S_r V_r^T: a Dense layer `NAME_lr` of r units without bias
or activation (kernel U_r sqrt(S_r)), then the original layer with kernel sqrt(S_r) V_r^T, its bias
and activation. A Conv2D kernel (kh, kw, cin, cout) is factorized one of two ways:

- `spatial` (spatial SVD, Jaderberg et al. 2014): the kernel as a (kh cin) x (kw cout) matrix,
  a kh x 1 conv to r channels (stride (sh, 1)) then a 1 x kw conv (stride (1, sw)). Padding is
  per dimension in TensorFlow, so `same` and `valid` padding and any stride give the original
  outputs at full rank.
- `channel`: the kernel as a (kh kw cin) x cout matrix, a kh x kw conv to r channels (the
  original strides and padding) then a 1x1 conv.

The first layer is inserted before the original, which keeps its name (so every layer reading
it is unchanged) and its bias and activation. Shared layers, grouped or dilated convolutions and
channels_first layers are not factorized.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

CONV_MODES = ("spatial", "channel")
SUFFIX = "_lr"


@dataclass(frozen=True)
class LayerPlan:
    """One layer's factorization: the matrix to factorize and the cost at each rank. The SVD is
    computed on first use (checking a recipe needs only the shapes) and once."""

    name: str
    kind: str  # "dense", "conv-spatial" or "conv-channel"
    shape: tuple[int, ...]  # the kernel's
    matrix: np.ndarray | None  # the kernel as the matrix to factorize (None: `reason`)
    params: int  # the original kernel's weights
    macs: int  # the original layer's multiply-accumulates per example
    per_rank_params: int  # weights the two factors need per unit of rank
    per_rank_macs: int
    reason: str | None = None  # why the layer cannot be factorized at all

    @cached_property
    def _svd(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return np.linalg.svd(self.matrix.astype(np.float64), full_matrices=False)

    @property
    def singular(self) -> np.ndarray:
        """The singular values, descending."""
        return np.zeros(0) if self.matrix is None else self._svd[1]

    @property
    def max_rank(self) -> int:
        return 0 if self.matrix is None else min(self.matrix.shape)

    def factors(self, rank: int) -> tuple[np.ndarray, np.ndarray]:
        """U_r sqrt(S_r) and sqrt(S_r) V_r^T of the truncated SVD (the scale split evenly)."""
        u, s, vt = self._svd
        root = np.sqrt(s[:rank])
        return (u[:, :rank] * root).astype(np.float32), (root[:, None] * vt[:rank]).astype(np.float32)

    def rank_for_energy(self, energy: float) -> int:
        """The smallest rank keeping `energy` of the sum of squared singular values."""
        kept = np.cumsum(self.singular ** 2) / max(float(np.sum(self.singular ** 2)), 1e-30)
        return int(min(self.max_rank, np.searchsorted(kept, energy - 1e-12) + 1))

    def rank_for_ratio(self, ratio: float) -> int:
        """The largest rank whose factors hold at most 1/ratio of the original weights."""
        return max(1, min(self.max_rank, math.floor(self.params / (ratio * self.per_rank_params))))

    def energy_kept(self, rank: int) -> float:
        total = float(np.sum(self.singular ** 2))
        return float(np.sum(self.singular[:rank] ** 2) / total) if total else 1.0

    def pays(self, rank: int) -> bool:
        """Fewer weights and fewer MACs than the original layer."""
        return rank * self.per_rank_params < self.params and rank * self.per_rank_macs < self.macs

    def record(self, rank: int) -> dict:
        return {"layer": self.name, "kind": self.kind, "rank": rank, "max_rank": self.max_rank,
                "energy_kept": round(self.energy_kept(rank), 4),
                "params_before": self.params, "params_after": rank * self.per_rank_params,
                "macs_before": self.macs, "macs_after": rank * self.per_rank_macs}


def plan_layer(layer, conv: str = "spatial") -> LayerPlan:
    """The factorization plan of a built Dense or Conv2D layer (`reason` says why there is none)."""
    cls = type(layer).__name__
    kernel = layer.get_weights()[0]
    name, shape = layer.name, tuple(kernel.shape)
    nothing = dict(name=name, shape=shape, matrix=None, params=int(kernel.size), macs=0,
                   per_rank_params=0, per_rank_macs=0)
    if len(getattr(layer, "inbound_nodes", [])) > 1:
        return LayerPlan(kind=cls, reason="shared by several calls", **nothing)
    if cls == "Dense":
        if len(layer.input_shape) != 2:
            return LayerPlan(kind="dense", reason="applied to a tensor of rank > 2", **nothing)
        n_in, n_out = shape
        return LayerPlan(name, "dense", shape, kernel, n_in * n_out, n_in * n_out,
                         n_in + n_out, n_in + n_out)
    config = layer.get_config()
    if config.get("data_format", "channels_last") != "channels_last":
        return LayerPlan(kind="conv", reason="channels_first", **nothing)
    if tuple(config.get("dilation_rate", (1, 1))) != (1, 1) or config.get("groups", 1) != 1:
        return LayerPlan(kind="conv", reason="dilated or grouped convolution", **nothing)
    kh, kw, cin, cout = shape
    _, h_out, w_out, _ = layer.output_shape
    w_in = layer.input_shape[2]
    if conv == "spatial":
        matrix = kernel.transpose(0, 2, 1, 3).reshape(kh * cin, kw * cout)
        per_params, per_macs = kh * cin + kw * cout, h_out * w_in * kh * cin + h_out * w_out * kw * cout
    else:
        matrix = kernel.reshape(kh * kw * cin, cout)
        per_params, per_macs = kh * kw * cin + cout, h_out * w_out * (kh * kw * cin + cout)
    return LayerPlan(name, f"conv-{conv}", shape, matrix, kernel.size,
                     h_out * w_out * kh * kw * cin * cout, per_params, per_macs)


def factorize(model, ranks: dict[str, int], conv: str = "spatial", plans: dict[str, LayerPlan] | None = None):
    """A new tf_keras model in which each layer named in `ranks` is factorized at its rank, with
    every other weight copied. `model` is not changed. `plans` (by layer name) reuses the SVDs
    already computed to choose the ranks."""
    import tf_keras as keras

    config = model.get_config()
    sequential = type(model).__name__ == "Sequential"
    weights = {layer.name: layer.get_weights() for layer in model.layers}
    layers_out, new_weights = [], {}
    for entry in config["layers"]:
        name = entry["config"]["name"]
        if name not in ranks:
            layers_out.append(entry)
            continue
        layer = model.get_layer(name)
        plan = (plans or {}).get(name) or plan_layer(layer, conv)
        first, second, w_first, w_second = _split(layer, weights[name], plan, ranks[name])
        first_entry = {"class_name": entry["class_name"], "config": first}
        second_entry = {k: v for k, v in entry.items() if k != "build_config"}  # its input shrinks
        second_entry["config"] = second
        if not sequential:
            first_entry.update(name=first["name"], inbound_nodes=entry["inbound_nodes"])
            second_entry["inbound_nodes"] = [[[first["name"], 0, 0, {}]]]
        layers_out += [first_entry, second_entry]
        new_weights[first["name"]], new_weights[name] = w_first, w_second
    config = {**config, "layers": layers_out}
    cls = keras.Sequential if sequential else keras.Model
    new = cls.from_config(config)
    for layer in new.layers:
        source = new_weights.get(layer.name, weights.get(layer.name))
        if source:
            layer.set_weights(source)
    return new


def _split(layer, weights, plan: LayerPlan, rank: int):
    """The two layers' configs and weights replacing `layer` at `rank`."""
    kernel, bias = weights[0], weights[1:]
    config = layer.get_config()
    first = {**config, "name": layer.name + SUFFIX, "use_bias": False, "activation": "linear",
             "activity_regularizer": None, "bias_regularizer": None, "bias_constraint": None}
    second = dict(config)
    u, v = plan.factors(rank)
    if plan.kind == "dense":
        first["units"] = rank
        return first, second, [u], [v, *bias]
    kh, kw, cin, cout = kernel.shape
    sh, sw = config["strides"]
    first["filters"] = rank
    if plan.kind == "conv-spatial":
        first.update(kernel_size=(kh, 1), strides=(sh, 1))
        second.update(kernel_size=(1, kw), strides=(1, sw))
        k1 = u.reshape(kh, cin, rank)[:, None, :, :]  # (kh, 1, cin, r)
        k2 = v.reshape(rank, kw, cout).transpose(1, 0, 2)[None]  # (1, kw, r, cout)
    else:
        second.update(kernel_size=(1, 1), strides=(1, 1), padding="valid")
        k1 = u.reshape(kh, kw, cin, rank)
        k2 = v[None, None]  # (1, 1, r, cout)
    return first, second, [k1.astype(kernel.dtype)], [k2.astype(kernel.dtype), *bias]
