"""The prune stage: magnitude pruning with fine-tuning (tfmot's prune_low_magnitude)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from pipeline.artifacts import Artifact
from pipeline.errors import ConfigError
from pipeline.kerasio import clone_with_weights, tfmot_scope
from pipeline.stage import check_count, check_fraction, require
from stages._fit import fit, steps_per_epoch

SCHEDULES = ("polynomial", "constant")
WARN_GAP = 0.05  # achieved sparsity this far below the target gets a note in the report


@dataclass(frozen=True)
class Prune:
    """Prune the smallest-magnitude weights while fine-tuning; outputs the wrapped model.

    >>> arts = Prune(final_sparsity=0.75, epochs=2).run(trained, ctx)
    >>> arts[0].kind, arts[0].meta["achieved_sparsity"]
    ('keras:pruning', 0.75)

    `end_step=None` ends pruning at 75% of the fine-tune steps (the rest fine-tunes at the final
    sparsity); `frequency=None` updates the masks >= 25 times in that window. tfmot's own
    default (every 100 steps) prunes nothing on small data. `sparsity_m_by_n=(2, 4)` zeroes 2 of
    every 4 consecutive input-channel weights, and then the schedule's sparsities are unused.
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
    learning_rate: float = 5e-4
    block_size: tuple[int, int] = (1, 1)
    sparsity_m_by_n: tuple[int, int] | None = None
    layers: tuple[str, ...] = ()

    def __post_init__(self):
        n = self.name
        # Recipes arrive as TOML/JSON lists; tuples keep the dataclass hashable and frozen.
        for f in ("block_size", "sparsity_m_by_n", "layers"):
            if isinstance(getattr(self, f), list):
                object.__setattr__(self, f, tuple(getattr(self, f)))
        require(self.schedule in SCHEDULES, n, f"schedule must be one of {', '.join(map(repr, SCHEDULES))}. "
                f"Received: schedule={self.schedule!r}")
        check_fraction(n, "initial_sparsity", self.initial_sparsity)
        check_fraction(n, "final_sparsity", self.final_sparsity)
        require(self.final_sparsity >= self.initial_sparsity, n,
                f"final_sparsity must be >= initial_sparsity. Received: initial_sparsity="
                f"{self.initial_sparsity!r}, final_sparsity={self.final_sparsity!r}")
        check_count(n, "begin_step", self.begin_step, minimum=0)
        if self.end_step is not None:
            check_count(n, "end_step", self.end_step, minimum=self.begin_step + 1)
        if self.frequency is not None:
            check_count(n, "frequency", self.frequency, minimum=1)
        check_count(n, "epochs", self.epochs, minimum=1)
        check_count(n, "batch_size", self.batch_size, minimum=1)
        require(isinstance(self.learning_rate, (int, float)) and not isinstance(self.learning_rate, bool)
                and self.learning_rate > 0, n,
                f"learning_rate must be a number > 0 (e.g. 5e-4). Received: learning_rate={self.learning_rate!r}")
        require(_int_pair(self.block_size) and min(self.block_size) >= 1, n,
                f"block_size must be two integers >= 1, e.g. (1, 4). Received: block_size={self.block_size!r}")
        require(self.sparsity_m_by_n is None or (_int_pair(self.sparsity_m_by_n)
                                                 and 0 < self.sparsity_m_by_n[0] < self.sparsity_m_by_n[1]), n,
                "sparsity_m_by_n must be (m, n), m zeros in every n weights with 0 < m < n, e.g. (2, 4). "
                f"Received: sparsity_m_by_n={self.sparsity_m_by_n!r}")
        require(self.sparsity_m_by_n is None or tuple(self.block_size) == (1, 1), n,
                "use either block_size or sparsity_m_by_n, not both. "
                f"Received: block_size={self.block_size!r}, sparsity_m_by_n={self.sparsity_m_by_n!r}")
        require(isinstance(self.layers, tuple) and all(isinstance(s, str) for s in self.layers), n,
                f"layers must be a list of layer names. Received: layers={self.layers!r}")

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
        if self.schedule == "polynomial":
            schedule = sched.PolynomialDecay(self.initial_sparsity, self.final_sparsity,
                                             self.begin_step, end_step, frequency=frequency)
        else:
            schedule = sched.ConstantSparsity(self.final_sparsity, self.begin_step, end_step, frequency)
        params = {"pruning_schedule": schedule, "block_size": tuple(self.block_size),
                  "sparsity_m_by_n": self.sparsity_m_by_n}

        def wrap(layer):
            return sched.prune_low_magnitude(layer, **params) if layer.name in targets else layer

        # Wrap a private copy: prune_low_magnitude wraps the very layer objects it is given.
        with tfmot_scope():
            model = keras.models.clone_model(clone_with_weights(source), clone_function=wrap)
        fit(model, ctx, epochs=self.epochs, batch_size=self.batch_size,
            learning_rate=self.learning_rate, callbacks=[sched.UpdatePruningStep()])

        zeros = total = 0
        per_layer = {}
        for wrapper in collect_prunable_layers(model):
            for weight, _mask, _threshold in wrapper.pruning_vars:
                w = weight.numpy()
                zeros, total = zeros + int(np.sum(w == 0)), total + w.size
                per_layer[wrapper.layer.name] = round(float(np.mean(w == 0)), 4)
        achieved = zeros / max(total, 1)
        target = (self.sparsity_m_by_n[0] / self.sparsity_m_by_n[1] if self.sparsity_m_by_n
                  else self.final_sparsity)
        if achieved < target - WARN_GAP:
            ctx.note(f"prune: achieved sparsity {achieved:.3f} is below the target {target:.3f} "
                     f"({steps} fine-tune steps, masks updated every {frequency} steps up to step "
                     f"{end_step}); raise epochs or lower frequency/end_step"
                     + (", and note that m:n pruning needs >= n input channels per layer"
                        if self.sparsity_m_by_n else ""))
        meta = {"target_sparsity": target, "achieved_sparsity": round(achieved, 4),
                "layers": per_layer, "frequency": frequency, "end_step": end_step, "steps": steps}
        return [ctx.save_model(self, model, "pruning", parent=art, kind="keras:pruning", meta=meta)]

    def _targets(self, model, ctx) -> set[str]:
        prunable = [layer.name for layer in model.layers if _prunable(layer, self.block_size)]
        unknown = [name for name in self.layers if name not in prunable]
        if unknown or not prunable:
            what = (f"layers={list(self.layers)!r} names {unknown!r}" if unknown
                    else "the model has none")
            if tuple(self.block_size) != (1, 1):
                what += f" (block_size={tuple(self.block_size)} needs 2-D kernels larger than the block)"
            raise ConfigError(f"stage 'prune': expected names of prunable layers "
                              f"({', '.join(prunable) or 'none'}); {what}: "
                              "list only those layers, or leave layers empty to prune them all")
        if not self.layers and tuple(self.block_size) != (1, 1):
            left = [layer.name for layer in model.layers
                    if _prunable(layer, (1, 1)) and layer.name not in prunable]
            if left:
                ctx.note(f"prune: block_size={tuple(self.block_size)} left {', '.join(left)} dense: "
                         "tfmot's block sparsity needs 2-D kernels larger than the block")
        return set(self.layers or prunable)

    def _window(self, steps: int) -> tuple[int, int]:
        """The last mask-update step and the update interval, checked against the data."""
        if self.end_step is not None and self.end_step > steps:
            raise ConfigError(f"stage 'prune': end_step={self.end_step} is past the last fine-tune step "
                              f"({steps} = {self.epochs} epochs x {steps // self.epochs} steps): "
                              "lower end_step or raise epochs")
        last = self.end_step if self.end_step is not None else (3 * steps) // 4
        if last <= self.begin_step:
            raise ConfigError(f"stage 'prune': begin_step={self.begin_step} leaves no pruning window before "
                              f"step {last} ({steps} fine-tune steps): lower begin_step or raise epochs")
        frequency = self.frequency or max(1, min(100, (last - self.begin_step) // 25))
        if self.end_step is None:
            # Masks change only on steps begin + k * frequency: end on one so the final
            # sparsity is really reached.
            last = self.begin_step + ((last - self.begin_step) // frequency) * frequency
        return last, frequency


def _int_pair(value) -> bool:
    return (isinstance(value, tuple) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value))


def _prunable(layer, block_size) -> bool:
    """Layers tfmot can prune and that hold weights to prune (pooling, flatten... do not)."""
    from tensorflow_model_optimization.python.core.sparsity.keras import prune_registry, prunable_layer

    if isinstance(layer, prunable_layer.PrunableLayer) or hasattr(layer, "get_prunable_weights"):
        return True
    registry = prune_registry.PruneRegistry
    if not registry.supports(layer):
        return False
    if registry._is_rnn_layer(layer) or registry._is_mha_layer(layer):
        return tuple(block_size) == (1, 1)
    if not registry._weight_names(layer):
        return False
    if tuple(block_size) == (1, 1):
        return True
    # tfmot's block sparsity handles only 2-D kernels, and squeezes away a dimension that
    # pools to size 1 and then fails: each kernel dimension must exceed the block's.
    shape = getattr(getattr(layer, "kernel", None), "shape", None)
    return shape is not None and shape.rank == 2 and all(d > b for d, b in zip(shape, block_size))
