"""The strip stage: remove tfmot's pruning wrappers, keeping the sparse weights."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from slimpipe.pipeline.artifacts import Artifact
from slimpipe.pipeline.errors import ConfigError
from slimpipe.pipeline.kerasio import clone_with_weights
from slimpipe.pipeline.stage import check_name_as


@dataclass(frozen=True)
class Strip:
    """Turn a pruning-wrapped model (from `prune`) into a plain Keras model.

    >>> arts = Strip().run(pruning, ctx)
    >>> arts[0].name, arts[0].meta["sparsity"], arts[0].meta["layers"][0]
    ('pruned', 0.8, {'name': 'conv', 'params': 72, 'zeros': 58, 'sparsity': 0.8056})

    The sparsity in the meta is measured on the stripped kernels, not taken from the schedule.
    """

    name: ClassVar[str] = "strip"
    accepts: ClassVar[tuple[str, ...]] = ("keras:pruning",)
    produces: ClassVar[str | None] = "keras"

    name_as: str = "pruned"

    def __post_init__(self):
        check_name_as(self.name, self.name_as)

    def run(self, art: Artifact, ctx) -> list[Artifact]:
        import tensorflow_model_optimization as tfmot
        from tensorflow_model_optimization.python.core.sparsity.keras.pruning_wrapper import (
            collect_prunable_layers)

        source = ctx.keras_model(art)
        if not collect_prunable_layers(source) and art.kind != "keras:pruning":
            raise ConfigError(
                "stage 'strip': expected a model with pruning wrappers (from the prune stage); "
                f"received {art.name!r} with plain layers only: put 'prune' before 'strip' in the recipe")
        # strip_pruning hands back the wrapped layer objects themselves, so the result would
        # share weights with the input: strip a private copy instead.
        model = tfmot.sparsity.keras.strip_pruning(clone_with_weights(source))
        layers = kernel_sparsity(model)
        zeros = sum(entry["zeros"] for entry in layers)
        params = sum(entry["params"] for entry in layers)
        meta = {"sparsity": round(zeros / max(params, 1), 4), "layers": layers}
        return [ctx.save_model(self, model, self.name_as, parent=art, kind="keras", meta=meta)]


def kernel_sparsity(model) -> list[dict]:
    """Zeros in every kernel (Conv*, Dense, ...) of a plain model, nested models included."""
    out = []
    for layer in model.layers:
        if hasattr(layer, "layers"):
            out.extend(kernel_sparsity(layer))
            continue
        for attr in ("kernel", "depthwise_kernel", "pointwise_kernel", "embeddings"):
            weight = getattr(layer, attr, None)
            if weight is None or not hasattr(weight, "numpy"):
                continue
            w = weight.numpy()
            zeros = int(np.sum(w == 0))
            label = layer.name if attr == "kernel" else f"{layer.name}/{attr}"
            out.append({"name": label, "params": int(w.size), "zeros": zeros,
                        "sparsity": round(zeros / max(w.size, 1), 4)})
    return out
