"""The prune stage: magnitude pruning with fine-tuning (tfmot's prune_low_magnitude)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from slimpipe.pipeline.artifacts import Artifact
from slimpipe.pipeline.errors import ConfigError
from slimpipe.pipeline.kerasio import clone_with_weights, tfmot_scope
from slimpipe.pipeline.layer_select import layer_infos, select, select_mapping, selector_pairs, selector_tuple
from slimpipe.pipeline.stage import StageResult, check_count, check_fraction, check_name_as, require
from slimpipe.stages.finetune import FineTune, steps_per_epoch

SCHEDULES = ("polynomial", "constant")


@dataclass(frozen=True)
class _Plan:
    targets: tuple[str, ...]  # the layers to prune, in model order
    finals: dict  # layer -> its own final sparsity (layer_sparsity)
    blocks: dict  # layer -> its own block shape (layer_block_size)
    notes: tuple[str, ...]
POLICIES = ("xnnpack",)  # tfmot's PruneForLatencyOnXNNPack
WARN_GAP = 0.05  # achieved sparsity this far below the target gets a note in the report


@dataclass(frozen=True)
class Prune(FineTune):
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
    pruned student underfits; the saved model keeps its rates).
    `layers` picks the layers to prune with selectors (`pipeline.layer_select`: names, regular
    expressions or rules such as `("!@input", "!@output")`, every layer but the stem and the
    logits); empty prunes every prunable layer. `layer_sparsity={"@share:0.5": 0.95}` gives the
    selected layers their own final sparsity (here the largest layers holding half the weights:
    the big dense layer of a CNN usually takes far more pruning than its convs).
    `layer_block_size={"fc1": (16, 1)}` gives selected Dense layers their own block shape: (16, 1)
    zeroes runs of 16 consecutive inputs of one output, the 1x16 blocks TFLite's converter stores
    int8 FULLY_CONNECTED weights in (one index per block instead of one per weight).
    `pruning_policy="xnnpack"` applies tfmot's `PruneForLatencyOnXNNPack`: it checks that the model
    is a graph XNNPACK's sparse inference can run (a 3x3 stride-2 stem conv on a padded 3-channel
    input, then supported ops up to a global average pooling) and prunes only its 1x1 convs.
    Put `strip` after this stage to get a plain Keras model. `name_as` names the output ("pruning").
    """

    name: ClassVar[str] = "prune"
    accepts: ClassVar[tuple[str, ...]] = ("keras",)
    produces: ClassVar[str | None] = "keras:pruning"

    min_epochs: ClassVar[int] = 1

    schedule: str = "polynomial"
    initial_sparsity: float = 0.0
    final_sparsity: float = 0.8
    begin_step: int = 0
    end_step: int | None = None
    frequency: int | None = None
    epochs: int = 2
    block_size: tuple[int, int] = (1, 1)
    sparsity_m_by_n: tuple[int, int] | None = None
    layers: tuple[str, ...] = ()
    layer_sparsity: tuple[tuple[str, float], ...] = ()
    layer_block_size: tuple[tuple[str, tuple[int, int]], ...] = ()
    ramp: float = 0.75
    pruning_policy: str | None = None
    name_as: str = "pruning"

    def __post_init__(self):
        super().__post_init__()
        n = self.name
        _normalize_selectors(self, n)
        check_name_as(n, self.name_as)
        # Recipes arrive as TOML/JSON lists; tuples keep the dataclass hashable and frozen.
        for f in ("block_size", "sparsity_m_by_n"):
            if isinstance(getattr(self, f), list):
                object.__setattr__(self, f, tuple(getattr(self, f)))
        self._check_schedule(n)
        self._check_blocks(n)
        require(self.pruning_policy is None or self.pruning_policy in POLICIES, n,
                f"pruning_policy must be one of {', '.join(map(repr, POLICIES))} or unset. "
                f"Received: pruning_policy={self.pruning_policy!r}")

    def _check_schedule(self, n: str) -> None:
        require(self.schedule in SCHEDULES, n, f"schedule must be 'polynomial' or 'constant'. "
                f"Received: schedule={self.schedule!r}")
        check_fraction(n, "initial_sparsity", self.initial_sparsity)
        check_fraction(n, "final_sparsity", self.final_sparsity)
        require(self.final_sparsity >= self.initial_sparsity, n,
                f"final_sparsity must be >= initial_sparsity. Received: initial_sparsity="
                f"{self.initial_sparsity!r}, final_sparsity={self.final_sparsity!r}")
        for layer, value in self.layer_sparsity:
            check_fraction(n, f"layer_sparsity[{layer!r}]", value)
            require(value >= self.initial_sparsity, n, f"layer_sparsity[{layer!r}] must be >= initial_sparsity="
                    f"{self.initial_sparsity}. Received: {value!r}")
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

    def _check_blocks(self, n: str) -> None:
        require(_int_pair(self.block_size) and min(self.block_size) >= 1, n,
                f"block_size must be two integers >= 1, e.g. (1, 4). Received: block_size={self.block_size!r}")
        require(all(_int_pair(block) and min(block) >= 1 for _, block in self.layer_block_size), n,
                "layer_block_size must map layer selectors to two integers >= 1, e.g. {fc1 = [16, 1]}. "
                f"Received: layer_block_size={self.layer_block_size!r}")
        mn = self.sparsity_m_by_n
        require(mn is None or _int_pair(mn) and 0 < mn[0] < mn[1], n, "sparsity_m_by_n must be (m, n), "
                f"m zeros in every n weights with 0 < m < n, e.g. (2, 4). Received: sparsity_m_by_n={mn!r}")
        require(mn is None or self.block_size == (1, 1) and not self.layer_block_size, n,
                "use either block_size/layer_block_size or sparsity_m_by_n, not both. Received: "
                f"block_size={self.block_size!r}, layer_block_size={dict(self.layer_block_size)!r}, "
                f"sparsity_m_by_n={mn!r}")

    def run(self, art: Artifact, ctx) -> StageResult:
        import tensorflow_model_optimization as tfmot

        source = ctx.keras_model(art)
        plan = self._plan(source)
        result = StageResult(notes=list(plan.notes))
        steps = self.epochs * steps_per_epoch(ctx, self.batch_size)
        end_step, frequency = self._window(steps)
        model = self._wrap(source, plan, end_step, frequency)
        meta = {"frequency": frequency, "end_step": end_step, "steps": steps}
        if plan.targets:
            self.fit(model, ctx, callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
        target, achieved, per_layer = self._sparsity(model, plan)
        if achieved < target - WARN_GAP:
            result.note(f"prune: achieved sparsity {achieved:.3f} is below the target {target:.3f} "
                     f"({steps} fine-tune steps, masks updated every {frequency} steps up to step "
                     f"{end_step}); raise epochs or lower frequency"
                     + (", and note that m:n pruning needs >= n input channels per layer"
                        if self.sparsity_m_by_n else ""))
        meta.update(target_sparsity=round(target, 4), achieved_sparsity=round(achieved, 4), layers=per_layer)
        if plan.blocks:
            meta["block_sizes"] = {name: list(block) for name, block in plan.blocks.items()}
        result.artifacts.append(ctx.save_model(self, model, self.name_as, parent=art, kind="keras:pruning", meta=meta))
        return result

    def _wrap(self, source, plan: _Plan, end_step: int, frequency: int):
        """A private copy of `source` with the planned layers wrapped for pruning
        (prune_low_magnitude wraps the very layer objects it is given)."""
        import tensorflow_model_optimization as tfmot
        import tf_keras as keras

        sched = tfmot.sparsity.keras

        def schedule(final):
            if self.schedule == "polynomial":
                return sched.PolynomialDecay(self.initial_sparsity, final, self.begin_step, end_step,
                                             frequency=frequency)
            return sched.ConstantSparsity(final, self.begin_step, end_step, frequency)

        def wrap(layer):
            if layer.name not in plan.targets:
                return layer
            return sched.prune_low_magnitude(
                layer, pruning_schedule=schedule(plan.finals.get(layer.name, self.final_sparsity)),
                block_size=plan.blocks.get(layer.name, self.block_size), sparsity_m_by_n=self.sparsity_m_by_n)

        with tfmot_scope():
            return keras.models.clone_model(clone_with_weights(source), clone_function=wrap)

    def _sparsity(self, model, plan: _Plan) -> tuple[float, float, dict[str, float]]:
        """(target, achieved, per layer): the sparsity asked for (the weighted mean of the layers'
        targets) and the zeros measured in the pruned weights."""
        from tensorflow_model_optimization.python.core.sparsity.keras.pruning_wrapper import (
            collect_prunable_layers)

        wrappers = collect_prunable_layers(model)
        achieved, per_layer = _pruned_sparsity(wrappers)
        if self.sparsity_m_by_n:
            return self.sparsity_m_by_n[0] / self.sparsity_m_by_n[1], achieved, per_layer
        sizes = {w.layer.name: sum(int(np.size(v)) for v, _m, _t in w.pruning_vars) for w in wrappers}
        target = sum(n * plan.finals.get(name, self.final_sparsity) for name, n in sizes.items())
        return target / max(sum(sizes.values()), 1), achieved, per_layer

    def check(self, model, data) -> list[str]:
        """Everything knowable before training: the layers, their blocks, the pruning window."""
        plan = self._plan(model)
        self._window(self.epochs * math.ceil(len(data.y_train) / self.batch_size))
        return list(plan.notes)

    def _plan(self, model) -> _Plan:
        """Which layers to prune, each one's final sparsity and block, and notes for the report."""
        allowed, policy_note = _policy_filter(self.pruning_policy, model)
        if policy_note:
            return _Plan((), {}, {}, (policy_note,))
        by_name = {layer.name: layer for layer in model.layers}
        infos = {i.name: i for i in layer_infos(model)}
        base = [infos[layer.name] for layer in model.layers if _prunable(layer, (1, 1)) and allowed(layer)]
        blocks = select_mapping(self.layer_block_size, base, stage=self.name, field="layer_block_size")
        for name, block in blocks.items():
            if not _prunable(by_name[name], block):
                shape = tuple(by_name[name].kernel.shape) if hasattr(by_name[name], "kernel") else None
                raise ConfigError(f"stage 'prune': layer_block_size gives {name!r} block {block}, but tfmot's "
                                  f"block sparsity needs a 2-D kernel larger than the block in each dimension "
                                  f"and {name!r} has kernel shape {shape}: give the block to a Dense layer, "
                                  "or a smaller block")
        prunable = [i for i in base if _prunable(by_name[i.name], blocks.get(i.name, self.block_size))]
        if not prunable:
            block = "" if self.block_size == (1, 1) else f" with block_size={self.block_size}"
            raise ConfigError(f"stage 'prune': the model has no layer tfmot can prune{block} (candidates: "
                              f"{', '.join(i.name for i in base) or 'none'}): use another model or block_size")
        targets = select(self.layers, prunable, stage=self.name, field="layers")
        chosen = [i for i in prunable if i.name in targets]
        notes = []
        left = [i.name for i in base if i not in prunable and not self.layers]
        if left:
            notes.append(f"prune: block_size={self.block_size} left {', '.join(left)} dense: "
                         "tfmot's block sparsity needs 2-D kernels larger than the block")
        finals = select_mapping(self.layer_sparsity, chosen, stage=self.name, field="layer_sparsity")
        blocks = {k: v for k, v in select_mapping(self.layer_block_size, chosen, stage=self.name,
                                                  field="layer_block_size").items()}
        return _Plan(tuple(targets), finals, blocks, tuple(notes))

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
    """tfmot's pruning policy as a layer filter after its whole-model check (what
    prune_low_magnitude(model, pruning_policy=...) does, kept per layer for layer_sparsity), and a
    note when the model fails that check: then no layer qualifies and nothing is pruned."""
    if policy is None:
        return (lambda layer: True), None
    import tensorflow_model_optimization as tfmot

    rule = tfmot.sparsity.keras.PruneForLatencyOnXNNPack()
    try:
        rule.ensure_model_supports_pruning(model)
    except ValueError as exc:
        why = " ".join(str(exc).split())
        return (lambda layer: False), (
            f"prune: pruning_policy='xnnpack' prunes only layers that XNNPACK's sparse inference can run, "
            f"and it cannot run {model.name!r} (tfmot: {why}): no layer was pruned and the model passes "
            "unchanged; mobilenet_v2 is a model of that shape")
    return rule.allow_pruning, None


def _normalize_selectors(stage: Prune, name: str) -> None:
    """Recipes give selectors as lists and {selector = value} tables: store checked tuples."""
    object.__setattr__(stage, "layers", selector_tuple(name, "layers", stage.layers))
    object.__setattr__(stage, "layer_sparsity", selector_pairs(name, "layer_sparsity", stage.layer_sparsity))
    object.__setattr__(stage, "layer_block_size",
                       selector_pairs(name, "layer_block_size", stage.layer_block_size))


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
