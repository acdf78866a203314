"""The structured_prune stage: remove whole filters and neurons, then fine-tune.

Unlike `prune` (zeroed weights in dense kernels), the result is a smaller ordinary Keras model,
so every exporter, quantizer and runtime gets fewer multiply-accumulates.
"""
from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from slimpipe.pipeline.artifacts import Artifact
from slimpipe.pipeline.errors import ConfigError
from slimpipe.pipeline.kerasio import clone_with_weights
from slimpipe.pipeline.layer_select import layer_infos, select, selector_tuple
from slimpipe.pipeline.stage import StageResult, check_choice, check_count, check_fraction, check_name_as, require
from slimpipe.stages.finetune import FineTune, fit
from slimpipe.stages.surgery import (CRITERIA, analyze_groups, channel_scores, complexity_model,
                             prune_channels, select_channels)

TARGETS = ("params", "macs", "latency")


@dataclass(frozen=True)
class StructuredPrune(FineTune):
    """Shrink Conv2D/Dense layers to fewer channels in `rounds` rounds, fine-tuning after each.

    >>> arts = StructuredPrune(target="macs", reduction=0.7).run(trained, ctx)
    >>> arts[0].meta["macs_after"] / arts[0].meta["macs_before"]
    0.29

    Each round r of R shrinks the target metric to (1 - reduction) ** (r / R) of the original
    (the same share of what is left each round). Channels go by a global ranking: every group's
    scores are divided by the group's mean, and the lowest-ranked channels across all layers go
    first until the round's budget (measured analytically) is met. Kept counts are >= min_channels
    and >= (1 - max_layer_reduction) of the layer's original channels, rounded up to a multiple of
    round_to. target="latency" uses MACs to pick each round's candidate, then exports it to TFLite
    and measures its p50 (1 thread, batch 1), shrinking more while it is too slow. `epochs=0` skips fine-tuning. `from_scratch` also trains the pruned
    architecture from random init (Liu et al., "Rethinking the Value of Network Pruning"). `name_as`
    names the output ("structured").
    """

    name: ClassVar[str] = "structured_prune"
    accepts: ClassVar[tuple[str, ...]] = ("keras",)
    produces: ClassVar[str | None] = "keras"

    criterion: str = "l1"
    target: str = "macs"
    reduction: float = 0.7
    rounds: int = 3
    final_epochs: int = 2
    min_channels: int = 4
    round_to: int = 4
    cost_exponent: float = 0.0
    max_layer_reduction: float = 1.0
    layers: tuple[str, ...] = ()
    from_scratch: bool = False
    name_as: str = "structured"

    def __post_init__(self):
        super().__post_init__()
        n = self.name
        check_name_as(n, self.name_as)
        object.__setattr__(self, "layers", selector_tuple(n, "layers", self.layers))
        check_choice(n, "criterion", self.criterion, CRITERIA)
        check_choice(n, "target", self.target, TARGETS)
        check_fraction(n, "reduction", self.reduction)
        require(self.reduction > 0, n, f"reduction must be in (0, 1), e.g. 0.5 to halve the target "
                f"metric. Received: reduction={self.reduction!r}")
        check_count(n, "rounds", self.rounds, minimum=1)
        check_count(n, "final_epochs", self.final_epochs, minimum=0)
        check_count(n, "min_channels", self.min_channels, minimum=1)
        check_count(n, "round_to", self.round_to, minimum=1)
        require(isinstance(self.cost_exponent, (int, float)) and not isinstance(self.cost_exponent, bool)
                and 0 <= self.cost_exponent <= 2, n, "cost_exponent must be a number in [0, 2] (0: rank "
                "channels by score alone; 1: by score per unit of the target saved). "
                f"Received: cost_exponent={self.cost_exponent!r}")
        require(isinstance(self.max_layer_reduction, (int, float)) and not isinstance(self.max_layer_reduction, bool)
                and 0 < self.max_layer_reduction <= 1, n, "max_layer_reduction must be a fraction in (0, 1] "
                "(the most of one layer's original channels that may go; 0.75 keeps at least a quarter of "
                f"each). Received: max_layer_reduction={self.max_layer_reduction!r}")
        require(isinstance(self.from_scratch, bool), n,
                f"from_scratch must be true or false. Received: from_scratch={self.from_scratch!r}")

    def run(self, art: Artifact, ctx) -> StageResult:
        from slimpipe.benchmarks.complexity import keras_complexity

        model = clone_with_weights(ctx.keras_model(art))
        selected, skipped, notes = self._select(model)
        result = StageResult(notes=notes)
        before = keras_complexity(model)
        start_channels = {p: g.size for g in analyze_groups(model) if g.id in selected for p in g.producers}
        latency = [self._latency_ms(model, ctx)] if self.target == "latency" else []
        model, rounds = self._rounds(model, selected, start_channels, before, latency, ctx, result)
        if self.final_epochs:
            self.fit(model, ctx, epochs=self.final_epochs)
        after = keras_complexity(model)
        channels = {p: [n, _width(model.get_layer(p))] for p, n in start_channels.items()}
        achieved = (1 - latency[-1] / latency[0]) if latency else 1 - after[self.target] / before[self.target]
        if achieved < self.reduction - 1e-9:
            result.note(f"structured_prune: reached a {self.target} reduction of {achieved:.1%}, below the "
                        f"requested {self.reduction:.1%}")
        meta = {"criterion": self.criterion, "target": self.target, "reduction_requested": self.reduction,
                "reduction_achieved": round(float(achieved), 4),
                "params_before": before["params"], "params_after": after["params"],
                "macs_before": before["macs"], "macs_after": after["macs"], "channels": channels,
                "rounds": rounds, "skipped_groups": skipped, "accuracy": _accuracy(model, ctx),
                "trained": True}
        if latency:
            meta.update(latency_before_ms=round(latency[0], 4), latency_after_ms=round(latency[-1], 4))
        result.artifacts.append(ctx.save_model(self, model, self.name_as, parent=art, kind="keras", meta=meta))
        if self.from_scratch:
            result.artifacts.append(self._scratch(model, art, ctx))
        return result

    def _rounds(self, model, selected, start_channels, before, latency, ctx, result):
        """Round r of R shrinks the target to (1 - reduction) ** (r / R) of the original and
        fine-tunes; returns the model and a record per round."""
        rounds = []
        for r in range(1, self.rounds + 1):
            share = (1 - self.reduction) ** (r / self.rounds)
            groups = [g for g in analyze_groups(model) if g.id in selected and g.prunable]
            scores = {g.id: channel_scores(model, g, self.criterion) for g in groups}
            floors = {g.id: math.ceil((1 - self.max_layer_reduction) * start_channels[g.producers[0]] - 1e-9)
                      for g in groups}
            model, reached, record = self._shrink(model, groups, scores, share, before, latency, ctx, floors)
            if not reached:
                result.note(f"structured_prune: round {r} could not reach {share:.1%} of the original "
                            f"{self.target}: every pruned layer is at min_channels={self.min_channels}"
                            + (f" or max_layer_reduction={self.max_layer_reduction}"
                               if self.max_layer_reduction < 1 else "")
                            + f" (round_to={self.round_to}); lower them or prune more layers")
            if self.epochs:  # between rounds at a constant rate; lr_decay anneals the final epochs
                self.fit(model, ctx, lr_decay="constant")
            rounds.append({"round": r, **record, "accuracy": _accuracy(model, ctx)})
        return model, rounds

    def check(self, model, data) -> None:
        """The layer groups to prune and their criterion, before anything trains."""
        self._select(model)

    def _select(self, model) -> tuple[set[str], list[dict], list[str]]:
        """Ids of the groups to prune, the groups left alone with the reason why, and notes."""
        groups = analyze_groups(model)
        skipped = [{"producers": list(g.producers), "reason": g.reason} for g in groups if not g.prunable]
        prunable = [g for g in groups if g.prunable]
        if not prunable:
            why = "; ".join(f"{s['producers'][0]}: {s['reason']}" for s in skipped[:3]) or "no Conv2D/Dense"
            raise ConfigError(f"stage '{self.name}': the model has no layer group structured pruning can "
                              f"shrink ({why}): use unstructured 'prune' for this model")
        infos = {i.name: i for i in layer_infos(model)}
        producers = [infos[p] for g in prunable for p in g.producers]
        names = set(select(self.layers, producers, stage=self.name, field="layers"))
        chosen = [g for g in prunable if set(g.producers) & names]
        notes = []
        if self.criterion == "bn_scale" and not self.layers:
            no_bn = [g for g in chosen if any(b is None for b in g.bn.values())]
            if len(no_bn) == len(chosen):
                channel_scores(model, chosen[0], "bn_scale")  # raises the ConfigError naming them
            for g in no_bn:
                skipped.append({"producers": list(g.producers), "reason": "no BatchNormalization follows "
                                "(criterion bn_scale)"})
            if no_bn:
                notes.append(f"structured_prune: criterion bn_scale left {', '.join(g.id for g in no_bn)} "
                             "unpruned: no batch norm follows them")
            chosen = [g for g in chosen if g.id not in {b.id for b in no_bn}]
        for g in chosen:
            channel_scores(model, g, self.criterion)  # a ConfigError now, not after a round
        return {g.id for g in chosen}, skipped, notes

    def _shrink(self, model, groups, scores, share, before, latency, ctx, floors):
        cost = complexity_model(model)
        opts = {"min_channels": self.min_channels, "round_to": self.round_to,
                "cost_exponent": float(self.cost_exponent), "floors": floors}
        if self.target != "latency":
            keep, reached = select_channels(groups, scores, lambda c: cost(c)[self.target],
                                            before[self.target] * share, **opts)
            model = prune_channels(model, keep) if keep else model
            return model, reached, {**complexity_model(model)({}), f"{self.target}_budget": round(before[self.target] * share)}
        goal = latency[0] * share
        budget = cost({})["macs"] * min(1.0, goal / latency[-1])
        candidate, measured, reached = model, latency[-1], True
        for _ in range(3):  # the MAC budget is a proxy: shrink further while the export is too slow
            if measured <= goal:
                break
            keep, reached = select_channels(groups, scores, lambda c: cost(c)["macs"], budget, **opts)
            candidate = prune_channels(model, keep) if keep else model
            measured = self._latency_ms(candidate, ctx)
            if not reached:
                break
            budget *= goal / measured
        reached = reached and measured <= goal
        latency.append(measured)
        return candidate, reached, {**complexity_model(candidate)({}), "latency_ms": round(measured, 4),
                                    "latency_budget_ms": round(goal, 4)}

    def _latency_ms(self, model, ctx) -> float:
        from slimpipe.benchmarks.measure import measure_latency
        from slimpipe.benchmarks.runtimes import open_runtime
        from slimpipe.exporters.tflite import export_tflite

        with tempfile.TemporaryDirectory() as tmp:
            path = export_tflite(model, Path(tmp) / "candidate.tflite")
            runtime = open_runtime(path, "tflite", threads=1)
            x1 = np.asarray(ctx.data.x_test[:1], dtype=np.float32)
            ms = measure_latency(lambda: runtime.predict(x1), warmup=5, min_runs=30, min_seconds=0.3)["p50_ms"]
        # Under --distribute multi-worker every worker must choose the same channels: the chief's
        # measurement decides.
        dist = getattr(ctx, "distribution", None)
        return ms if dist is None else dist.from_chief(ms)

    def _scratch(self, model, art: Artifact, ctx) -> Artifact:
        import tf_keras as keras

        epochs = int(art.meta.get("epochs", 0) or 0) + self.rounds * self.epochs + self.final_epochs
        keras.utils.set_random_seed(ctx.seed + 1)
        scratch = keras.models.clone_model(model)  # same architecture, fresh initializers
        if epochs:
            fit(scratch, ctx, epochs=epochs, batch_size=self.batch_size, learning_rate=self.learning_rate)
        meta = {"from_scratch": True, "epochs": epochs, "trained": epochs > 0,
                "params": int(scratch.count_params()), "accuracy": _accuracy(scratch, ctx)}
        return ctx.save_model(self, scratch, f"{self.name_as}.scratch", parent=art, kind="keras", meta=meta)


def _width(layer) -> int:
    config = layer.get_config()
    return int(config.get("filters", config.get("units")))


def _accuracy(model, ctx) -> float:
    """Top-1 accuracy on the run's test split (a progress signal; `benchmark` measures for real)."""
    logits = ctx.data.predict(model, "test", batch_size=256)
    return round(float(np.mean(np.argmax(logits, axis=1) == ctx.data.y_test)), 4)
