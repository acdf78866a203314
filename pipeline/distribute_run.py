"""How `slimpipe compress` runs under --distribute (see `pipeline.distribute`): the options from
the command line and the recipe, where each process writes, its log lines, the check that every
process runs the same thing, and what a run says when one of its processes stopped.
"""
from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path

from slimpipe.pipeline.artifacts import canonical_json, content_sha256
from slimpipe.pipeline.data import hash_array
from slimpipe.pipeline.distribute import distribute_options as check_options
from slimpipe.pipeline.distribute import worker_folder
from slimpipe.pipeline.errors import ConfigError, StageError
from slimpipe.pipeline.recipe import read_recipe_file
from slimpipe.pipeline.stage import stage_config


def distribute_options(args):
    """--distribute/--workers/--task and the recipe's [distribute] table, checked."""
    try:
        table = read_recipe_file(args.recipe)[1].get("distribute")
    except ConfigError:
        table = None  # prepare() reports what is wrong with the recipe
    return check_options(getattr(args, "distribute", None), table, getattr(args, "workers", None),
                   getattr(args, "task", None))


def run_folder(out: Path, dist, args) -> Path:
    """OUT for the chief (or a run without --distribute); a worker's own folder outside it."""
    if dist is None or dist.is_chief:
        return out
    root = getattr(args, "worker_dir", None)
    return worker_folder(out, dist.task, Path(root) if root else None)


def logger(dist):
    """print, with a worker's lines marked as its own."""
    if dist is None or dist.is_chief:
        return print
    return lambda line: print(line.replace("[slimpipe]", f"[slimpipe {dist.label()}]", 1))


def join(dist, ctx, recipe, args, log) -> None:
    """Check that every process runs the same recipe on the same model and data (a worker that
    trained on other data would silently change the result), and say how the run is spread."""
    data = hashlib.sha256()  # the arrays, not the paths: these may differ between machines
    for arr in (ctx.data.x_train, ctx.data.y_train, ctx.data.x_test, ctx.data.y_test):
        hash_array(data, arr)
    model = Path(args.model)
    model_id = content_sha256(model) if model.exists() else args.model  # a file, or a built-in name
    run = canonical_json([data.hexdigest(), args.seed, model_id, args.width,
                          [[s.name, s.stage.name, stage_config(s.stage)] for s in recipe]])
    if not dist.same_everywhere(run):
        raise ConfigError("the workers of this run differ in their recipe, model, data or --seed: run "
                          "the same command (but --task) with the same model and data files on every machine")
    per = {s.stage.batch_size for s in recipe if dist.trains(s.stage) and hasattr(s.stage, "batch_size")}
    text = (f"Training stages ran under {dist.name}: {dist.workers} worker(s), "
            f"{dist.replicas} replica(s); recipe batch sizes are global batches"
            + (f" ({', '.join(f'{b} = {b / dist.replicas:g} per replica' for b in sorted(per))})" if per else ""))
    ctx.note(text + ".")
    log(f"[slimpipe] {text}; this process is " + ("the chief" if dist.is_chief else dist.label())
        + ("" if dist.is_chief else f", writing to {ctx.out_dir} (nothing into --out)"))
    if dist.kind == "mirrored" and dist.replicas == 1:
        log("[slimpipe] note: one replica: MirroredStrategy spreads training over a machine's GPUs, and "
            "TensorFlow sees none here; training runs as without --distribute, with backups")


@contextlib.contextmanager
def lost_worker_hint(dist, out: Path):
    """A multi-worker run whose peer stopped fails with TensorFlow's UnavailableError: say how to
    resume instead."""
    try:
        yield
    except Exception as exc:
        cause = exc.__cause__ or exc
        if dist is None or dist.workers < 2 or type(cause).__name__ not in ("UnavailableError", "AbortedError"):
            raise
        raise StageError(f"a process of this {dist.workers}-worker run stopped ({type(cause).__name__}): "
                         "start every worker again with the same command; finished steps are reused and "
                         f"a training step resumes from its last epoch's backup in {out}/NN-step/backup") from exc
