"""The cost of a pruned model, computed from kept channel counts without building it."""
from __future__ import annotations

from typing import Callable, Mapping

import numpy as np

from slimpipe.stages.surgery.graph import analyze


def complexity_model(model) -> Callable[[Mapping[str, int]], dict[str, int]]:
    """A function {group_id: kept channels} -> {"params", "macs"} of the pruned model, computed
    without building it (equal to benchmarks.complexity.keras_complexity of the result)."""
    from slimpipe.benchmarks.complexity import keras_complexity

    an = analyze(model)
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


