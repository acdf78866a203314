"""`slimpipe compress`: check everything, load the model and data, run the recipe, write the report.

>>> compress(parsed_args, STAGES)   # the CLI passes its argparse namespace and the stage registry

Everything that can be checked is checked before anything is written: the recipe, the model and
data (and that they fit each other), and every step's fit to the model (`check_fits_model`).
"""
from __future__ import annotations

import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from slimpipe.pipeline.errors import ConfigError


@dataclass
class Prepared:
    """What a run starts from, all of it checked."""

    recipe: Any
    inputs: Any  # pipeline.inputs.Inputs
    custom: Any
    out: Path
    full_data: Any = None  # the data before the recipe's validation split was held out


def compress(args, registry: Mapping[str, type]) -> int:
    """Run `slimpipe compress` with parsed arguments; returns the exit code."""
    from slimpipe.pipeline.distribute import start
    from slimpipe.pipeline.distribute_run import distribute_options, lost_worker_hint
    from slimpipe.pipeline.runner import run_recipe

    dist = start(distribute_options(args))  # before TensorFlow runs anything else
    prep = prepare(args, registry)
    recipe = prep.recipe
    ctx, source, log = start_run(args, prep, dist)
    out = ctx.out_dir
    with lost_worker_hint(dist, prep.out):
        run_recipe(recipe, source, ctx, cache=not args.no_cache, log=log)
        if dist is None or dist.is_chief:
            write_reports(ctx, recipe, out, args)
        if dist is not None:
            dist.all_agree(True)  # the workers wait for the chief's reports: all leave together
    return 0


def start_run(args, prep: Prepared, dist=None, *, clear: bool = True):
    """The run's folder, context and source artifact: (ctx, source, log). Clears what an earlier
    run left in the folder except the steps the cache may reuse."""
    from slimpipe.pipeline.context import RunContext
    from slimpipe.pipeline.distribute_run import join, logger, run_folder
    from slimpipe.pipeline.keras3.out import keras3_source
    from slimpipe.pipeline.runner import save_source

    recipe, inputs = prep.recipe, prep.inputs
    out, log = run_folder(prep.out, dist, args), logger(dist)
    keep = {f"{i:02d}-{step.name}" for i, step in enumerate(recipe, 1)} | {"00-source"}
    if clear:
        clear_previous_run(out, keep=set() if args.no_cache else keep)
    deterministic(args.seed)
    ctx = RunContext(data=inputs.data, out_dir=out, model_name=args.model, seed=args.seed, distribution=dist)
    for note in inputs.notes:
        ctx.note(note)
    if "keras3" in inputs.loaded:
        keras3_source(ctx, inputs.loaded["keras3"], custom=prep.custom, allow_unsafe=args.allow_unsafe_model)
    log(f"[slimpipe] {args.model} on {inputs.data.name}: {len(inputs.data.x_train)} training and "
        f"{len(inputs.data.x_test)} test examples, recipe '{recipe.name}' ({len(recipe)} stages) -> {out}")
    if dist is not None:
        join(dist, ctx, recipe, args, log)
    source = save_source(ctx, inputs.model, spec=args.model, width=args.width, trained=inputs.trained,
                         model_sha256=file_sha256(args.model), cache=not args.no_cache)
    return ctx, source, log


def prepare(args, registry: Mapping[str, type]) -> Prepared:
    """The recipe, model and data of a run, checked against each other; nothing is written."""
    from slimpipe.pipeline.inputs import RunOptions, load_inputs
    from slimpipe.pipeline.keras3.custom import load_custom_objects
    from slimpipe.pipeline.recipe import build_recipe, check_fits_model, load_recipe, parse_overrides

    if args.epochs is not None and args.epochs < 0:
        raise ConfigError(f"--epochs must be >= 0. Received: --epochs {args.epochs}")
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit must be >= 1. Received: --limit {args.limit}")
    if not args.width > 0:
        raise ConfigError(f"--width must be > 0. Received: --width {args.width}")
    overrides = parse_overrides(args.set, registry)
    if args.epochs is not None:
        overrides.setdefault("train", {})["epochs"] = args.epochs
    data = getattr(args, "recipe_data", None)
    recipe = (build_recipe(data, registry, overrides=overrides) if data is not None
              else load_recipe(args.recipe, registry, overrides=overrides))
    custom = load_custom_objects(args.custom_objects)
    inputs = load_inputs(args.model, args.dataset, RunOptions(
        seed=args.seed, width=args.width, limit=args.limit, data_dir=args.data_dir,
        image_size=args.image_size, test_split=args.test_split, skip_bad_images=args.skip_bad_images,
        input_range=args.input_range, allow_unsafe_model=args.allow_unsafe_model, custom=custom, log=print))
    full_data = inputs.data
    if recipe.validation:
        from dataclasses import replace

        from slimpipe.pipeline.data.dataset import hold_out

        inputs = replace(inputs, data=hold_out(inputs.data, recipe.validation, seed=args.seed)[0])
    for text in check_fits_model(recipe, inputs.model, inputs.data):
        print(f"[slimpipe] note: {text}")
    out = Path(args.out) if args.out else default_out(args.model, args.dataset)
    return Prepared(recipe, inputs, custom, out, full_data)


def write_reports(ctx, recipe, out: Path, args) -> None:
    """report.json, report.md, report.html and the plots of a finished run."""
    from slimpipe.benchmarks.environment import environment
    from slimpipe.pipeline.html_report import write_html
    from slimpipe.pipeline.keras3.out import keras3_files, keras3_outputs
    from slimpipe.pipeline.provenance import run_record
    from slimpipe.pipeline.report import build_report, write_plots, write_report

    reused = [t for t in ctx.stage_timings if t.get("reused")]
    if reused:
        ran = [t.get("ran_seconds") for t in reused]
        took = "" if None in ran else f"; they took {sum(ran):.0f} s when they ran"
        measured = [t["name"] for t in reused if t["stage"] == "benchmark"]
        ctx.note(f"Reused {len(reused)} of {len(recipe)} stages from an earlier run in {out} "
                 f"({', '.join(t['name'] for t in reused)}{took})"
                 + (f"; the measurements of '{measured[0]}', latency included, are that run's"
                    if measured else "") + "; pass --no-cache to run everything again.")
    if ctx.keras3 is not None:
        keras3_outputs(ctx)
    report = build_report(ctx, recipe=recipe.name, environment=environment(), run=run_record(args.argv))
    search = getattr(args, "search_record", None)
    if search is not None:
        from slimpipe.pipeline.search.final import final_choice

        phases = dict(args.search_phases)
        started = phases.pop("started")
        phases["final"] = round(phases.pop("final_earlier", 0.0) + sum(t["seconds"] for t in ctx.stage_timings), 1)
        phases["total"] = round(time.perf_counter() - started, 1)
        report["search"] = {**search, "phases_s": phases}
        report["search"]["verdict"] = final_choice(report, search, args.search_data, out)
    if ctx.keras3 is not None:
        report["keras3_files"] = keras3_files(ctx.artifacts, out)
    images = write_plots(report, out)
    json_path, md_path = write_report(report, out)
    html_path = write_html(report, out, images)
    print(f"[slimpipe] report: {md_path}, {html_path} and {json_path}")


def default_out(model: str, dataset: str) -> Path:
    stem = Path(model).stem if os.sep in model or "." in model else model
    return Path("runs") / re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{stem}-{dataset}")


def clear_previous_run(out: Path, keep: set[str]) -> None:
    """Remove what an earlier run wrote to `out` (only slimpipe's own entries), except the
    finished stage folders in `keep`, which the runner may reuse if their cache keys match."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {str(out)!r} is a file: give a folder path")
    out.mkdir(parents=True, exist_ok=True)
    for entry in out.iterdir():
        ours = re.fullmatch(r"\.?\d\d-[\w.-]+(\.tmp)?|(report\.(json|md|html)|(\w+_vs_accuracy|search_front|sensitivity)\.png)(\.tmp)?"
                            r"|\.(report\.(json|md|html)|(\w+_vs_accuracy|search_front|sensitivity)\.png)\.\w+\.tmp", entry.name)
        if ours and entry.name not in keep:
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def deterministic(seed: int) -> None:
    """Same seed, same numbers: a resumed run must reproduce an uninterrupted one."""
    import tensorflow as tf
    import tf_keras as keras

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def file_sha256(spec: str) -> str | None:
    from slimpipe.pipeline.artifacts import content_sha256

    path = Path(spec)
    return content_sha256(path) if path.exists() else None
