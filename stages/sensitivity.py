"""The sensitivity stage: how much accuracy each layer alone loses to pruning, clustering and int8.

>>> result = Sensitivity().run(trained, ctx)
>>> table = result.measurements["sensitivity"]
>>> table["layers"][0]["prune"]["0.9"]      # accuracy with only this layer 90% pruned
0.874

For every candidate layer (each Conv and Dense kernel with at least `min_weights` weights, the
stem and the logits layer included), the layer alone is changed in a copy of the model and the
copy is scored on the run's evaluation split, without fine-tuning: its kernel pruned by magnitude
to each of `sparsities`, clustered by k-means to each of `clusters` values, and rounded to int8
with one symmetric scale per output channel. The table (`sensitivity.json` in the step's folder,
and the measurement "sensitivity") is what a budget search allocates sparsity and cluster counts
from. The model is not changed and no artifact is made: the next step works on the same model.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from slimpipe.pipeline.artifacts import Artifact
from slimpipe.pipeline.errors import ConfigError
from slimpipe.pipeline.kerasio import clone_with_weights
from slimpipe.pipeline.layer_select import FAMILIES, layer_infos, select, selector_tuple
from slimpipe.pipeline.stage import StageResult, check_count, require

KERNEL_FAMILIES = ("conv", "dense")


@dataclass(frozen=True)
class Sensitivity:
    """Per-layer accuracy under pruning, clustering and int8, one layer at a time, no training."""

    name: ClassVar[str] = "sensitivity"
    accepts: ClassVar[tuple[str, ...]] = ("keras",)
    produces: ClassVar[str | None] = None

    sparsities: tuple[float, ...] = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98)
    clusters: tuple[int, ...] = (64, 32, 16, 8, 4)
    int8: bool = True
    layers: tuple[str, ...] = ()
    min_weights: int = 64
    examples: int = 2000  # of the evaluation split (all of it when it has fewer)
    batch_size: int = 256

    def __post_init__(self):
        n = self.name
        object.__setattr__(self, "sparsities", tuple(self.sparsities))
        object.__setattr__(self, "clusters", tuple(self.clusters))
        object.__setattr__(self, "layers", selector_tuple(n, "layers", self.layers))
        require(all(isinstance(s, (int, float)) and not isinstance(s, bool) and 0 < s < 1
                    for s in self.sparsities), n,
                f"sparsities must be fractions in (0, 1). Received: sparsities={list(self.sparsities)!r}")
        require(all(isinstance(k, int) and not isinstance(k, bool) and k >= 2 for k in self.clusters), n,
                f"clusters must be whole numbers >= 2. Received: clusters={list(self.clusters)!r}")
        require(isinstance(self.int8, bool), n, f"int8 must be true or false. Received: int8={self.int8!r}")
        check_count(n, "min_weights", self.min_weights, minimum=1)
        check_count(n, "examples", self.examples, minimum=1)
        check_count(n, "batch_size", self.batch_size, minimum=1)

    def check(self, model, data) -> None:
        self.candidates(model)

    def candidates(self, model) -> list[str]:
        """The layers the analysis changes: Conv/Dense kernels of at least min_weights weights."""
        pool = [i for i in layer_infos(model)
                if i.family in KERNEL_FAMILIES and i.weights >= self.min_weights]
        if not pool:
            kinds = ", ".join(c for f in KERNEL_FAMILIES for c in FAMILIES[f][:2])
            raise ConfigError(f"stage '{self.name}': the model has no prunable layer ({kinds} with at "
                              f"least {self.min_weights} kernel weights): nothing to compress; use a "
                              "model with convolution or dense layers, or lower min_weights")
        return select(self.layers, pool, stage=self.name, field="layers")

    def run(self, art: Artifact, ctx) -> StageResult:
        started = time.perf_counter()
        model = clone_with_weights(ctx.keras_model(art))
        x, y = _evaluation_slice(ctx.data, self.examples)
        base = self._accuracy(model, x, y)
        infos = {i.name: i for i in layer_infos(model)}
        rows = []
        for name in self.candidates(model):
            layer = model.get_layer(name)
            weights = layer.get_weights()
            kernel = weights[0]
            row = {"name": name, "class": infos[name].cls, "weights": int(kernel.size),
                   "index": infos[name].index, "prune": {}, "cluster": {}, "int8": None}
            for s in self.sparsities:
                layer.set_weights([prune_kernel(kernel, s), *weights[1:]])
                row["prune"][f"{s:g}"] = self._accuracy(model, x, y)
            for k in self.clusters:
                layer.set_weights([cluster_kernel(kernel, k), *weights[1:]])
                row["cluster"][str(k)] = self._accuracy(model, x, y)
            if self.int8:
                layer.set_weights([int8_kernel(kernel), *weights[1:]])
                row["int8"] = self._accuracy(model, x, y)
            layer.set_weights(weights)
            rows.append(row)
        table = {"baseline_accuracy": base, "examples": int(len(y)), "split": "evaluation",
                 "model": art.name, "layers": rows, "seconds": round(time.perf_counter() - started, 2)}
        ctx.stage_path("sensitivity.json").write_text(json.dumps(table, indent=1))
        worst = max(rows, key=lambda r: base - min(r["prune"].values(), default=base))
        note = (f"sensitivity: {len(rows)} layers on {len(y)} evaluation examples in {table['seconds']:.0f} s; "
                f"the most sensitive to pruning is {worst['name']}")
        return StageResult(notes=[note], measurements={"sensitivity": table})

    def _accuracy(self, model, x, y) -> float:
        logits = model.predict(x, batch_size=self.batch_size, verbose=0)
        return round(float(np.mean(np.argmax(logits, axis=-1) == y)), 6)


def _evaluation_slice(data, limit: int):
    """The first `limit` examples of the evaluation split, stratified by seeded choice."""
    from slimpipe.pipeline.data.dataset import stratified_subset

    idx = stratified_subset(data.y_test, limit, seed=0)
    return np.asarray(data.x_test[idx]), np.asarray(data.y_test)[idx]


def prune_kernel(kernel: np.ndarray, sparsity: float) -> np.ndarray:
    """The kernel with its `sparsity` smallest-magnitude weights set to zero (as tfmot prunes)."""
    k = int(round(kernel.size * sparsity))
    if k <= 0:
        return kernel.copy()
    flat = np.abs(kernel).ravel()
    cut = np.partition(flat, k - 1)[k - 1]
    out = kernel.copy()
    out[np.abs(kernel) <= cut] = 0
    return out


def cluster_kernel(kernel: np.ndarray, clusters: int, iterations: int = 15) -> np.ndarray:
    """The kernel with every weight replaced by the nearest of `clusters` shared values, found by
    k-means from evenly spaced quantiles (one dimension: Lloyd's steps on the sorted weights)."""
    w = kernel.ravel().astype(np.float64)
    if np.unique(w).size <= clusters:
        return kernel.copy()
    centroids = np.quantile(w, (np.arange(clusters) + 0.5) / clusters)
    for _ in range(iterations):
        assign = _nearest(w, centroids)
        sums = np.bincount(assign, weights=w, minlength=clusters)
        counts = np.bincount(assign, minlength=clusters)
        moved = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
        if np.allclose(moved, centroids):
            break
        centroids = np.sort(moved)
    return centroids[_nearest(w, centroids)].reshape(kernel.shape).astype(kernel.dtype)


def _nearest(w: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    edges = (centroids[1:] + centroids[:-1]) / 2
    return np.searchsorted(edges, w)


def int8_kernel(kernel: np.ndarray) -> np.ndarray:
    """The kernel rounded to int8 with one symmetric scale per output channel (the last axis)."""
    axes = tuple(range(kernel.ndim - 1))
    scale = np.max(np.abs(kernel), axis=axes, keepdims=True) / 127.0
    scale = np.where(scale > 0, scale, 1.0)
    return (np.clip(np.round(kernel / scale), -127, 127) * scale).astype(kernel.dtype)
