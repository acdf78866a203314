"""What a budget search tries: the settings of one trial, and the recipe they make.

>>> space = SPACES["size"]
>>> params = space.suggest(optuna_trial)     # {"sparsity": 0.91, "clusters": 32, "quant": "pcqat"}
>>> steps = space.steps(params, table, schedule=TRIAL)     # [[stages]] tables, no train step

A trial starts from the trained baseline. Per-layer sparsity and cluster counts come from the
sensitivity table (`pipeline.search.allocate`), so one overall setting fits any model:

- size: unstructured pruning to an overall sparsity (allocated across layers), clustering
  (a count per layer), then int8 by sparsity- and cluster-preserving QAT or post-training, each
  file in sparse weight storage (smallest on disk) and dense (often smaller by gzip);
- latency: structured pruning (whole filters and neurons, a share of the MACs), then int8
  (dynamic range or full integer) or none;
- balanced: structured pruning, then unstructured pruning, clustering and int8 of what is left.

The stages are named by their type (`prune`, `cluster`, ...): the search builds recipes as data,
as a user writes TOML, and knows nothing of what the stages do inside.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from slimpipe.pipeline.search.allocate import allocate_clusters, allocate_sparsity

OBJECTIVES = ("size", "latency", "balanced")
CLUSTERS = (16, 32, 64)
# The int8 steps each objective's trials choose from ("none": the float model as it is). The
# post-training ones need no training: the final run makes them all and measures them.
QUANT = {"size": ("pcqat", "int8"), "latency": ("dynamic", "int8", "none"), "balanced": ("pcqat", "int8")}
POST_TRAINING = ("dynamic", "int8")
# A pruned model's int8 files in both weight storages: sparse is the smallest on disk, dense is
# often smaller by gzip (what the size objective measures); the same weights, both measured.
BOTH = "both"


@dataclass(frozen=True)
class Schedule:
    """How long each fine-tuning step of a trial trains."""

    prune_epochs: int
    structured_epochs: int
    qat_epochs: int
    export: tuple[str, ...]
    min_seconds: float
    latency: tuple[tuple[int, int], ...]
    passes: int
    sparse_kernels: bool
    every_ptq: bool  # quantize in every post-training mode too, not only the trial's (no training)

    def with_epochs(self, epochs: int) -> "Schedule":
        """The same schedule with `epochs` of pruning and of structured pruning's fine-tuning."""
        return dataclasses.replace(self, prune_epochs=epochs, structured_epochs=epochs)


# Trials fine-tune briefly and export TFLite alone; the chosen settings run on FULL.
TRIAL = Schedule(prune_epochs=2, structured_epochs=2, qat_epochs=1, export=("tflite",),
                 min_seconds=0.05, latency=((1, 1),), passes=5, sparse_kernels=False, every_ptq=False)
FULL = Schedule(prune_epochs=14, structured_epochs=6, qat_epochs=1, export=("tflite", "onnx"),
                min_seconds=0.15, latency=((1, 1), (0, 1)), passes=10, sparse_kernels=True, every_ptq=True)

DISTILL = {"batch_size": 128, "lr_decay": "cosine", "distill": 0.5, "temperature": 1.0, "dropout": 0.0}


@dataclass(frozen=True)
class Space:
    """One objective's settings: how Optuna suggests them, where the search starts, the steps
    they make, and what a file costs (lower is better) against the dense float TFLite file."""

    suggest: Callable[[Any], dict[str, Any]]
    start: dict[str, Any]
    steps: Callable[..., list[dict[str, Any]]]
    cost: str  # "size", "latency" or "balanced": see pipeline.search.score
    amount: str  # the setting that removes most: the final run's other candidates move it
    amount_max: float


def _suggest_size(trial) -> dict[str, Any]:
    # Below ~75% zeros a file is a few times smaller at best: not where the smallest file is.
    return {"sparsity": trial.suggest_float("sparsity", 0.75, 0.98),
            "clusters": trial.suggest_categorical("clusters", CLUSTERS),
            "quant": trial.suggest_categorical("quant", QUANT["size"])}


def _suggest_latency(trial) -> dict[str, Any]:
    return {"reduction": trial.suggest_float("reduction", 0.3, 0.9),
            "quant": trial.suggest_categorical("quant", QUANT["latency"])}


def _suggest_balanced(trial) -> dict[str, Any]:
    return {"reduction": trial.suggest_float("reduction", 0.2, 0.8),
            "sparsity": trial.suggest_float("sparsity", 0.3, 0.95),
            "clusters": trial.suggest_categorical("clusters", CLUSTERS),
            "quant": trial.suggest_categorical("quant", QUANT["balanced"])}


def _prune(params, table, schedule: Schedule) -> dict[str, Any]:
    alloc = {name: s for name, s in allocate_sparsity(table, params["sparsity"], max_sparsity=0.99).items()
             if s >= 0.01}
    return {"stage": "prune", "layers": sorted(alloc), "final_sparsity": round(params["sparsity"], 4),
            "layer_sparsity": dict(sorted(alloc.items())), "epochs": schedule.prune_epochs,
            "learning_rate": 2e-3, "ramp": 0.5, **DISTILL}


def _cluster(params, table, tolerance: float) -> dict[str, Any]:
    counts = allocate_clusters(table, params["clusters"], tolerance=tolerance)
    own = {name: k for name, k in sorted(counts.items()) if k != params["clusters"]}
    return {"stage": "cluster", "clusters": params["clusters"], "epochs": 0,
            **({"layer_clusters": own} if own else {})}


def _int8(params, schedule: Schedule, objective: str, *, sparse: bool | str) -> list[dict[str, Any]]:
    """The trial's int8 step; with `every_ptq`, also every other post-training mode of the
    objective's choices: they cost seconds, not training, so the final run measures them
    instead of trusting a trial."""
    steps = _quantize(params["quant"], schedule, sparse=sparse)
    if schedule.every_ptq:
        for mode in QUANT[objective]:
            if mode in POST_TRAINING and mode != params["quant"]:
                steps += _quantize(mode, schedule, sparse=sparse)
    return steps


def _quantize(mode: str, schedule: Schedule, *, sparse: bool | str) -> list[dict[str, Any]]:
    if mode == "pcqat":
        return [{"stage": "quantize", "mode": "pcqat", "epochs": schedule.qat_epochs, "learning_rate": 1e-4,
                 **DISTILL, "sparse": sparse, "strip_names": True, "per_channel": False}]
    if mode == "none":
        return []
    return [{"stage": "quantize", "mode": mode, "sparse": sparse, "strip_names": True}]


def _structured(params, schedule: Schedule) -> dict[str, Any]:
    return {"stage": "structured_prune", "reduction": round(params["reduction"], 4), "rounds": 1,
            "epochs": 0, "final_epochs": schedule.structured_epochs,
            **{**DISTILL, "distill": 0.7}}


def _tail(schedule: Schedule) -> list[dict[str, Any]]:
    return [{"stage": "export", "formats": list(schedule.export),
             **({"onnx_int8": []} if "onnx" in schedule.export else {})},
            {"stage": "benchmark", "min_seconds": schedule.min_seconds,
             "latency": [list(p) for p in schedule.latency], "passes": schedule.passes,
             "sparse_kernels": schedule.sparse_kernels}]


def _size_steps(params, table, *, schedule: Schedule, tolerance: float) -> list[dict[str, Any]]:
    return [_prune(params, table, schedule), {"stage": "strip"}, _cluster(params, table, tolerance),
            *_int8(params, schedule, "size", sparse=BOTH), *_tail(schedule)]


def _latency_steps(params, table, *, schedule: Schedule, tolerance: float) -> list[dict[str, Any]]:
    return [_structured(params, schedule), *_int8(params, schedule, "latency", sparse=False), *_tail(schedule)]


def _balanced_steps(params, table, *, schedule: Schedule, tolerance: float) -> list[dict[str, Any]]:
    return [_structured(params, schedule), _prune(params, table, schedule), {"stage": "strip"},
            _cluster(params, table, tolerance), *_int8(params, schedule, "balanced", sparse=BOTH),
            *_tail(schedule)]


SPACES: Mapping[str, Space] = {
    "size": Space(_suggest_size, {"sparsity": 0.9, "clusters": 64, "quant": "pcqat"}, _size_steps, "size",
                  "sparsity", 0.99),
    "latency": Space(_suggest_latency, {"reduction": 0.6, "quant": "int8"}, _latency_steps, "latency",
                     "reduction", 0.95),
    "balanced": Space(_suggest_balanced, {"reduction": 0.5, "sparsity": 0.8, "clusters": 64, "quant": "int8"},
                      _balanced_steps, "balanced", "sparsity", 0.99),
}

# The final run's other candidates keep these shares of what the chosen settings keep (weights
# or multiply-adds), or keep that much more when the chosen trial missed the trial budget.
NEIGHBOUR_KEEP = (0.75, 0.55)


def neighbours(space: Space, params: Mapping[str, Any], *, further: bool) -> list[dict[str, Any]]:
    """The chosen settings with the space's amount moved a step and two steps further (or back):
    trials fine-tune briefly and misjudge what the full schedule reaches, so the final run trains
    all of them and the validation split decides. Steps that leave the amount's range, or land
    where another candidate is, are left out."""
    kept = 1.0 - params[space.amount]
    out, seen = [], {round(params[space.amount], 2)}
    for share in NEIGHBOUR_KEEP:
        amount = round(min(space.amount_max, 1.0 - (kept * share if further else kept / share)), 4)
        if amount >= 0.05 and round(amount, 2) not in seen:
            seen.add(round(amount, 2))
            out.append({**params, space.amount: amount})
    return out


def branch(steps: list[dict[str, Any]], tag: str, *, start: str,
           outputs: Mapping[str, str]) -> list[dict[str, Any]]:
    """Another candidate's steps in the same recipe: from step `start`, without the export and
    benchmark steps (the recipe's own cover every candidate), every step named apart with `tag`,
    and so is the output of every stage that names its output (`outputs`: stage -> its default
    `name_as`; step "prune-s94" makes "pruning.s94")."""
    out = []
    for step in name_steps([s for s in steps if s["stage"] not in ("export", "benchmark")]):
        named = {**step, "name": f"{step['name']}-{tag}", **({"input": start} if not out else {})}
        if step["stage"] in outputs:
            named["name_as"] = f"{outputs[step['stage']]}.{tag}"
        out.append(named)
    return out


def tag_of(space: Space, params: Mapping[str, Any]) -> str:
    """"s94" for sparsity 0.94, "r84" for a reduction of 0.84."""
    return f"{space.amount[0]}{params[space.amount] * 100:.0f}"


def settings_text(params: Mapping[str, Any]) -> str:
    """A trial's settings for people: "sparsity 0.913, clusters 64, quant pcqat"."""
    return ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in params.items())


def name_steps(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Give every step a unique name (the stage type, then type-2, ...)."""
    seen: dict[str, int] = {}
    out = []
    for step in steps:
        if "name" in step:
            out.append(step)
            continue
        kind = step["stage"]
        seen[kind] = seen.get(kind, 0) + 1
        out.append({"name": kind if seen[kind] == 1 else f"{kind}-{seen[kind]}", **step})
    return out
