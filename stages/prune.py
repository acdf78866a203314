"""The prune stage: magnitude pruning with fine-tuning (tfmot's prune_low_magnitude)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from slimpipe.pipeline.artifacts import Artifact
from slimpipe.pipeline.errors import ConfigError
from slimpipe.pipeline.kerasio import clone_with_weights, tfmot_scope
from slimpipe.pipeline.stage import check_count, check_fraction, require
from slimpipe.stages._fit import check_distill, check_dropout, check_learning_rate, check_lr_decay, fit, steps_per_epoch

SCHEDULES = ("polynomial", "constant")
POLICIES = ("xnnpack",)  # tfmot's PruneForLatencyOnXNNPack
WARN_GAP = 0.05  # achieved sparsity this far below the target gets a note in the report


@dataclass(frozen=True)
class Prune:
    """Prune the smallest-magnitude weights while fine-tuning; outputs the wrapped model.

    >>> arts = Prune(final_sparsity=0.75, epochs=2).run(trained, ctx)
    >>> arts[0].kind, arts[0].meta["achieved_sparsity"]
    ('keras:pruning', 0.75)

    `end_step=None` ends pruning at `ramp` (75%) of the fine-tune steps (the rest fine-tunes at
    the final sparsity); `frequency=None` updates the masks >= 25 times in that window. tfmot's own
    default (every 100 steps) prunes nothing on small data. `sparsity_m_by_n=(2, 4)` zeroes 2 of
    every 4 consecutive input-channel weights, and then the schedule's sparsities are unused.
    `distill=0.5` fine-tunes against the run's dense baseline as a teacher too (see
    `stages._fit.fit`); `dropout=0.0` fine-tunes with the model's Dropout layers off (a heavily
    pruned student underfits; the saved model keeps its rates). `layer_sparsity={"fc1": 0.95}` gives listed layers their own final sparsity (the big dense
    layer of a CNN usually takes far more pruning than its convs).
    `layer_block_size={"fc1": (16, 1)}` gives listed Dense layers their own block shape: (16, 1)
    zeroes runs of 16 consecutive inputs of one output, the 1x16 blocks TFLite's converter stores
    int8 FULLY_CONNECTED weights in (one index per block instead of one per weight).
    `pruning_policy="xnnpack"` applies tfmot's `PruneForLatencyOnXNNPack`: it checks that the model
    is a graph XNNPACK's sparse inference can run (a 3x3 stride-2 stem conv on a padded 3-channel
    input, then supported ops up to a global average pooling) and prunes only its 1x1 convs.
    Put `strip` after this stage to get a plain Keras model.
    """

    name: ClassVar[str] = "prune"
    accepts: ClassVar[tuple[str, ...]] = ("keras",)
    produces: ClassVar[str | None] = "keras:pruning"

    schedule: str = "polynomial"
    initial_sparsity: float = 0.0
    final_sparsity: float = 0.8
    begin_step: int = 0
    end_step: int | None = None
    frequency: int | None = None
    epochs: int = 2
    batch_size: int = 64
    learning_rate: float = 1e-3
    lr_decay: str = "constant"
    distill: float = 0.0
    temperature: float = 4.0
    block_size: tuple[int, int] = (1, 1)
    sparsity_m_by_n: tuple[int, int] | None = None
    layers: tuple[str, ...] = ()
    layer_sparsity: tuple[tuple[str, float], ...] = ()
    layer_block_size: tuple[tuple[str, tuple[int, int]], ...] = ()
    ramp: float = 0.75
    pruning_policy: str | None = None
    dropout: float | None = None

    def __post_init__(self):
        n = self.name
        if isinstance(self.layer_sparsity, dict):  # a TOML inline table {fc1 = 0.95}
            object.__setattr__(self, "layer_sparsity", tuple(sorted(self.layer_sparsity.items())))
        require(isinstance(self.layer_sparsity, tuple) and all(
            isinstance(e, tuple) and len(e) == 2 and isinstance(e[0], str) for e in self.layer_sparsity), n,
            f"layer_sparsity must map layer names to sparsities, e.g. {{fc1 = 0.95}}. "
            f"Received: layer_sparsity={self.layer_sparsity!r}")
        for layer, value in self.layer_sparsity:
            check_fraction(n, f"layer_sparsity[{layer!r}]", value)
            require(value >= self.initial_sparsity, n, f"layer_sparsity[{layer!r}] must be >= initial_sparsity="
                    f"{self.initial_sparsity}. Received: {value!r}")
        if isinstance(self.layer_block_size, dict):  # {fc1 = [16, 1]}
            object.__setattr__(self, "layer_block_size", tuple(sorted(
                (k, tuple(v) if isinstance(v, list) else v) for k, v in self.layer_block_size.items())))
        require(isinstance(self.layer_block_size, tuple) and all(
            isinstance(e, tuple) and len(e) == 2 and isinstance(e[0], str) and _int_pair(e[1]) and min(e[1]) >= 1
            for e in self.layer_block_size), n,
            "layer_block_size must map layer names to two integers >= 1, e.g. {fc1 = [16, 1]}. "
            f"Received: layer_block_size={self.layer_block_size!r}")
        # Recipes arrive as TOML/JSON lists; tuples keep the dataclass hashable and frozen.
        for f in ("block_size", "sparsity_m_by_n", "layers"):
            if isinstance(getattr(self, f), list):
                object.__setattr__(self, f, tuple(getattr(self, f)))
        require(self.schedule in SCHEDULES, n, f"schedule must be 'polynomial' or 'constant'. "
                f"Received: schedule={self.schedule!r}")
        check_fraction(n, "initial_sparsity", self.initial_sparsity)
        check_fraction(n, "final_sparsity", self.final_sparsity)
        require(self.final_sparsity >= self.initial_sparsity, n,
                f"final_sparsity must be >= initial_sparsity. Received: initial_sparsity="
                f"{self.initial_sparsity!r}, final_sparsity={self.final_sparsity!r}")
        check_count(n, "begin_step", self.begin_step, minimum=0)
        if self.end_step is not None:
            require(_is_int(self.end_step) and self.end_step > self.begin_step, n,
                    f"end_step must be an integer > begin_step={self.begin_step}, or unset for 75% of "
                    f"the fine-tune steps. Received: end_step={self.end_step!r}")
        require(isinstance(self.ramp, (int, float)) and not isinstance(self.ramp, bool) and 0 < self.ramp <= 1,
                n, f"ramp must be in (0, 1], the share of the fine-tune steps over which sparsity rises "
                f"(the rest fine-tunes at the final sparsity). Received: ramp={self.ramp!r}")
        if self.frequency is not None:
            check_count(n, "frequency", self.frequency, minimum=1)
        check_count(n, "epochs", self.epochs, minimum=1)
        check_count(n, "batch_size", self.batch_size, minimum=1)
        check_learning_rate(n, self.learning_rate)
        check_lr_decay(n, self.lr_decay)
        check_distill(n, self.distill, self.temperature)
        check_dropout(n, self.dropout)
        require(_int_pair(self.block_size) and min(self.block_size) >= 1, n,
                f"block_size must be two integers >= 1, e.g. (1, 4). Received: block_size={self.block_size!r}")
        mn = self.sparsity_m_by_n
        require(mn is None or _int_pair(mn) and 0 < mn[0] < mn[1], n, "sparsity_m_by_n must be (m, n), "
                f"m zeros in every n weights with 0 < m < n, e.g. (2, 4). Received: sparsity_m_by_n={mn!r}")
        require(mn is None or self.block_size == (1, 1) and not self.layer_block_size, n,
                "use either block_size/layer_block_size or sparsity_m_by_n, not both. Received: "
                f"block_size={self.block_size!r}, layer_block_size={dict(self.layer_block_size)!r}, "
                f"sparsity_m_by_n={mn!r}")
        require(isinstance(self.layers, tuple) and all(isinstance(s, str) for s in self.layers), n,
                f"layers must be a list of layer names. Received: layers={self.layers!r}")
        require(self.pruning_policy is None or self.pruning_policy in POLICIES, n,
                f"pruning_policy must be one of {', '.join(map(repr, POLICIES))} or unset. "
                f"Received: pruning_policy={self.pruning_policy!r}")

    def run(self, art: Artifact, ctx) -> list[Artifact]:
        import tensorflow_model_optimization as tfmot
        import tf_keras as keras
        from tensorflow_model_optimization.python.core.sparsity.keras.pruning_wrapper import (
            collect_prunable_layers)

        source = ctx.keras_model(art)
        targets = self._targets(source, ctx)
        steps = self.epochs * steps_per_epoch(ctx, self.batch_size)
        end_step, frequency = self._window(steps)
        sched = tfmot.sparsity.keras
        finals = dict(self.layer_sparsity)
        blocks = dict(self.layer_block_size)

        def schedule(final):
            if self.schedule == "polynomial":
                return sched.PolynomialDecay(self.initial_sparsity, final, self.begin_step, end_step,
                                             frequency=frequency)
            return sched.ConstantSparsity(final, self.begin_step, end_step, frequency)

        def wrap(layer):
            if layer.name not in targets:
                return layer
            return sched.prune_low_magnitude(
                layer, pruning_schedule=schedule(finals.get(layer.name, self.final_sparsity)),
                block_size=blocks.get(layer.name, self.block_size), sparsity_m_by_n=self.sparsity_m_by_n)

        # Wrap a private copy: prune_low_magnitude wraps the very layer objects it is given.
        with tfmot_scope():
            model = keras.models.clone_model(clone_with_weights(source), clone_function=wrap)
        fit(model, ctx, epochs=self.epochs, batch_size=self.batch_size,
            learning_rate=self.learning_rate, callbacks=[sched.UpdatePruningStep()], lr_decay=self.lr_decay,
            distill=self.distill, temperature=self.temperature, dropout=self.dropout)

        achieved, per_layer = _pruned_sparsity(collect_prunable_layers(model))
        if self.sparsity_m_by_n:
            target = self.sparsity_m_by_n[0] / self.sparsity_m_by_n[1]
        else:  # the weighted mean of the layers' targets
            sizes = {w.layer.name: sum(int(np.size(v)) for v, _m, _t in w.pruning_vars)
                     for w in collect_prunable_layers(model)}
            target = sum(n * finals.get(name, self.final_sparsity) for name, n in sizes.items()) / max(
                sum(sizes.values()), 1)
        if achieved < target - WARN_GAP:
            ctx.note(f"prune: achieved sparsity {achieved:.3f} is below the target {target:.3f} "
                     f"({steps} fine-tune steps, masks updated every {frequency} steps up to step "
                     f"{end_step}); raise epochs or lower frequency"
                     + (", and note that m:n pruning needs >= n input channels per layer"
                        if self.sparsity_m_by_n else ""))
        meta = {"target_sparsity": round(target, 4), "achieved_sparsity": round(achieved, 4),
                "layers": per_layer, "frequency": frequency, "end_step": end_step, "steps": steps}
        if blocks:
            meta["block_sizes"] = {name: list(block) for name, block in blocks.items()}
        return [ctx.save_model(self, model, "pruning", parent=art, kind="keras:pruning", meta=meta)]

    def _targets(self, model, ctx) -> set[str]:
        allowed = _policy_filter(self.pruning_policy, model)
        blocks = dict(self.layer_block_size)
        by_name = {layer.name: layer for layer in model.layers}
        for name, block in blocks.items():
            layer = by_name.get(name)
            if layer is not None and _prunable(layer, (1, 1)) and not _prunable(layer, block):
                shape = tuple(layer.kernel.shape) if hasattr(layer, "kernel") else None
                raise ConfigError(f"stage 'prune': layer_block_size gives {name!r} block {block}, but tfmot's "
                                  f"block sparsity needs a 2-D kernel larger than the block in each dimension "
                                  f"and {name!r} has kernel shape {shape}: give the block to a Dense layer, "
                                  "or a smaller block")
        prunable = [layer.name for layer in model.layers
                    if _prunable(layer, blocks.get(layer.name, self.block_size)) and allowed(layer)]
        unknown = [name for name in self.layers if name not in prunable]
        if unknown or not prunable:
            block = "" if self.block_size == (1, 1) else f" with block_size={self.block_size}"
            raise ConfigError(f"stage 'prune': expected names of prunable layers{block} "
                              f"({', '.join(prunable) or 'none'}); received layers={list(self.layers)!r}: "
                              "list only those layers, or leave layers empty to prune them all")
        left = [layer.name for layer in model.layers if layer.name not in prunable
                and _prunable(layer, (1, 1)) and allowed(layer) and not self.layers]
        if left:
            ctx.note(f"prune: block_size={self.block_size} left {', '.join(left)} dense: "
                     "tfmot's block sparsity needs 2-D kernels larger than the block")
        targets = set(self.layers or prunable)
        for option, entries in (("layer_sparsity", self.layer_sparsity),
                                ("layer_block_size", self.layer_block_size)):
            stray = [name for name, _ in entries if name not in targets]
            if stray:
                raise ConfigError(f"stage 'prune': {option} names {stray!r}, which this stage does not "
                                  f"prune; expected some of {', '.join(sorted(targets))}: fix the names")
        return targets

    def _window(self, steps: int) -> tuple[int, int]:
        """The last mask-update step and the update interval, checked against the data."""
        if self.end_step is not None and self.end_step > steps:
            raise ConfigError(f"stage 'prune': end_step={self.end_step} is past the last fine-tune step "
                              f"({steps} = {self.epochs} epochs x {steps // self.epochs} steps): "
                              "lower end_step or raise epochs")
        last = self.end_step if self.end_step is not None else int(steps * self.ramp)
        if last <= self.begin_step:
            raise ConfigError(f"stage 'prune': begin_step={self.begin_step} leaves no pruning window before "
                              f"step {last} ({steps} fine-tune steps): lower begin_step or raise epochs")
        frequency = self.frequency or max(1, min(100, (last - self.begin_step) // 25))
        if self.end_step is None:
            # Masks change only on steps begin + k * frequency: end on one so the final
            # sparsity is really reached.
            last = self.begin_step + ((last - self.begin_step) // frequency) * frequency
        return last, frequency


def _pruned_sparsity(wrappers) -> tuple[float, dict[str, float]]:
    """Zeros in the pruned weights themselves (tfmot re-masks them at each epoch's end)."""
    counts = {wrapper.layer.name: [(int(np.sum(w.numpy() == 0)), int(np.size(w)))
                                   for w, _mask, _threshold in wrapper.pruning_vars] for wrapper in wrappers}
    per_layer = {name: round(sum(z for z, _ in c) / max(sum(n for _, n in c), 1), 4)
                 for name, c in counts.items()}
    zeros = sum(z for c in counts.values() for z, _ in c)
    return zeros / max(sum(n for c in counts.values() for _, n in c), 1), per_layer


def _policy_filter(policy: str | None, model):
    """tfmot's pruning policy as a layer filter, after its whole-model check (what
    prune_low_magnitude(model, pruning_policy=...) does, kept per layer for layer_sparsity)."""
    if policy is None:
        return lambda layer: True
    import tensorflow_model_optimization as tfmot

    rule = tfmot.sparsity.keras.PruneForLatencyOnXNNPack()
    try:
        rule.ensure_model_supports_pruning(model)
    except ValueError as exc:
        raise ConfigError(f"stage 'prune': pruning_policy='xnnpack' expected a model XNNPACK's sparse "
                          f"inference can run; received {model.name!r}, where tfmot says: {exc}. Fix: "
                          "build the model in that shape (e.g. mobilenet_v2) or unset pruning_policy") from None
    return rule.allow_pruning


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_pair(value) -> bool:
    return isinstance(value, tuple) and len(value) == 2 and all(map(_is_int, value))


def _prunable(layer, block_size) -> bool:
    """Layers tfmot can prune and that hold weights to prune (pooling, flatten... do not)."""
    from tensorflow_model_optimization.python.core.sparsity.keras import prunable_layer, prune_registry

    reg = prune_registry.PruneRegistry
    if not (isinstance(layer, prunable_layer.PrunableLayer) or hasattr(layer, "get_prunable_weights")
            or reg.supports(layer) and (reg._is_rnn_layer(layer) or reg._is_mha_layer(layer)
                                        or reg._weight_names(layer))):
        return False
    # tfmot's block sparsity handles only 2-D kernels, and squeezes away a dimension that
    # pools to size 1 and then fails: each kernel dimension must exceed the block's.
    shape = getattr(getattr(layer, "kernel", None), "shape", None)
    return block_size == (1, 1) or (shape is not None and shape.rank == 2
                                    and all(d > b for d, b in zip(shape, block_size)))
