"""Fitting under MirroredStrategy with two replicas, measured in a process of its own whose CPU
is split into two logical devices (where a machine with two GPUs would have one replica per GPU;
TensorFlow's devices can only be set before it runs anything). tests/stages/test_replicas.py
runs `python -m tests.stages.mirrored_checks OUT_DIR` and asserts on the JSON it prints.
"""
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from slimpipe.pipeline.distribute import DistributeOptions, StepState, logical_cpus, start

logical_cpus(2)  # before anything below touches TensorFlow

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_model_optimization as tfmot  # noqa: E402
import tf_keras as keras  # noqa: E402

from slimpipe.pipeline.context import RunContext  # noqa: E402
from slimpipe.pipeline.recipe import Recipe, Step  # noqa: E402
from slimpipe.pipeline.runner import run_recipe, save_source  # noqa: E402
from slimpipe.stages import Prune, Quantize, Strip, Train  # noqa: E402
from slimpipe.stages.finetune import fit, objective  # noqa: E402
from slimpipe.stages.qat import quantize_apply  # noqa: E402
from tests.conftest import make_tiny_data, make_tiny_model  # noqa: E402

DIST = start(DistributeOptions("mirrored"))
STRATEGY = DIST.strategy


@dataclass(frozen=True)
class Teacher:
    name: ClassVar[str] = "teacher"


def local(variable) -> list[np.ndarray]:
    return [np.asarray(c.numpy()) for c in STRATEGY.experimental_local_results(variable)]


def same_on_replicas(model) -> bool:
    """Every ON_WRITE variable identical on both replicas (read from the devices, not from our checker)."""
    return all(all(np.array_equal(c[0], x) for x in c[1:]) for c in
               (local(v) for v in model.variables if v.synchronization != tf.VariableSynchronization.ON_READ))


def context(root: Path) -> RunContext:
    ctx = RunContext(data=make_tiny_data(), out_dir=root, model_name="tiny", distribution=DIST)
    ctx.stage_dir = root / "teacher"
    teacher = make_tiny_model(seed=3)
    teacher.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    teacher.fit(ctx.data.x_train, ctx.data.y_train, epochs=1, batch_size=64, verbose=0)
    ctx.artifacts.append(ctx.save_model(Teacher(), teacher, "teacher", parent=None, kind="keras"))
    ctx.baseline = "teacher"
    return ctx


def sgd_steps(ctx, scope) -> list[np.ndarray]:
    """Four SGD steps on slimpipe's distillation loss; SGD (unlike Adam) moves twice as far when a
    loss is not scaled for two replicas. Returns the weights before and after."""
    with scope:
        model = make_tiny_model(seed=1)
        before = [w.copy() for w in model.get_weights()]
        loss, metric, data = objective(model, ctx, 64, distill=0.5)
        model.compile(optimizer=keras.optimizers.SGD(0.5), loss=loss, metrics=[metric])
        model.fit(data.repeat(), epochs=1, steps_per_epoch=4, verbose=0)
        return before, [w.copy() for w in model.get_weights()]


def loss_scaling(ctx) -> dict:
    start, one = sgd_steps(ctx, tf.distribute.get_strategy().scope())
    _, two = sgd_steps(ctx, STRATEGY.scope())
    return {"moved": max(float(np.max(np.abs(a - b))) for a, b in zip(start, one)),
            "max_diff": max(float(np.max(np.abs(a - b))) for a, b in zip(one, two))}


def under_step(ctx, root: Path, make, callbacks=(), epochs=2):
    """slimpipe's fit as a training step of a --distribute run runs it; returns (model, step)."""
    DIST.step = StepState("check", backup_dir=root / "backup")
    try:
        with STRATEGY.scope():
            model = make()
            fit(model, ctx, epochs=epochs, batch_size=64, learning_rate=1e-3, callbacks=list(callbacks))
        return model, DIST.step
    finally:
        DIST.step = None


def pruning(ctx, root: Path) -> dict:
    sched = tfmot.sparsity.keras

    def make():
        return sched.prune_low_magnitude(make_tiny_model(seed=2), pruning_schedule=sched.PolynomialDecay(
            0.0, 0.75, 0, 12, frequency=2))

    model, step = under_step(ctx, root, make, [sched.UpdatePruningStep()])
    wrappers = [l for l in model.layers if getattr(l, "pruning_vars", None)]
    kernels = [w for layer in wrappers for w, _m, _t in layer.pruning_vars]
    return {"pruning_steps": [[int(x) for x in local(l.pruning_step)] for l in wrappers],
            "masks_equal": all(np.array_equal(*local(m)) for l in wrappers for _w, m, _t in l.pruning_vars),
            "thresholds": [[float(x) for x in local(t)] for l in wrappers for _w, _m, t in l.pruning_vars],
            "sparsity": float(sum(np.sum(k.numpy() == 0) for k in kernels) / sum(np.size(k) for k in kernels)),
            "same_on_replicas": same_on_replicas(model), "meta": step.meta,
            "backup_left": sorted(p.name for p in (root / "backup").glob("*"))}


def qat_ranges(ctx, root: Path) -> dict:
    def make():
        return quantize_apply(make_tiny_model(seed=4), "qat")[0]

    with STRATEGY.scope():  # tfmot alone: how the replicas' ranges end
        plain = make()
        plain.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        plain.fit(ctx.data.train_dataset(64, seed=0).repeat(), epochs=1, steps_per_epoch=8, verbose=0)
    model, step = under_step(ctx, root, make, epochs=1)
    single = make()  # one device, the same batches
    fit(single, ctx, epochs=1, batch_size=64, learning_rate=1e-3)
    pick = {m: [v for v in m.non_trainable_variables if v.name.startswith("quantize_layer")]
            for m in (plain, model, single)}  # the model input's range: [min, max]
    return {"tfmot_alone": [[float(x) for x in local(v)] for v in pick[plain]],
            "merged": [[float(x) for x in local(v)] for v in pick[model]],
            "single_device": [float(v.numpy()) for v in pick[single]],
            "same_on_replicas": same_on_replicas(model), "meta": step.meta}


def batch_norm(ctx, root: Path) -> dict:
    def make():
        return keras.Sequential([keras.layers.Input((12, 12, 1)), keras.layers.Conv2D(4, 3, name="conv"),
                                 keras.layers.BatchNormalization(name="bn"), keras.layers.Flatten(),
                                 keras.layers.Dense(4, name="logits")])

    model, step = under_step(ctx, root, make, epochs=1)
    mean = model.get_layer("bn").moving_mean
    return {"moving_mean_copies_differ": not np.array_equal(*local(mean)), "meta": step.meta}


def recipe(root: Path) -> dict:
    ctx = RunContext(data=make_tiny_data(), out_dir=root, model_name="tiny", distribution=DIST)
    steps = (Step("train", Train(epochs=1)), Step("prune", Prune(final_sparsity=0.7, epochs=2)),
             Step("strip", Strip()), Step("quantize", Quantize(mode="pqat", epochs=1, min_agreement=0.5)))
    source = save_source(ctx, make_tiny_model(), spec="tiny", width=1.0, trained=False)
    run_recipe(Recipe("mirrored", steps), source, ctx, log=lambda line: None)
    return {"artifacts": {a.name: {"meta": {k: a.meta[k] for k in ("distribute", "sparsity", "validation")
                                            if k in a.meta}, "stage": a.stage} for a in ctx.artifacts},
            "notes": ctx.notes, "folders": sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_dir())}


def main(root: Path) -> None:
    ctx = context(root / "ctx")
    checks = {"loss_scaling": lambda: loss_scaling(ctx), "pruning": lambda: pruning(ctx, root / "pruning"),
              "qat_ranges": lambda: qat_ranges(ctx, root / "qat"), "batch_norm": lambda: batch_norm(ctx, root / "bn"),
              "recipe": lambda: recipe(root / "run")}
    results, seconds = {"replicas": DIST.replicas}, {}
    for name, check in checks.items():
        started = time.perf_counter()
        results[name] = check()
        seconds[name] = round(time.perf_counter() - started, 1)
    print("RESULTS " + json.dumps({**results, "seconds": seconds}, default=str))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp()))
