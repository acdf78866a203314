"""The `slimpipe` command line.

    slimpipe compress --model cnn --dataset fashion_mnist            # the default recipe
    slimpipe compress --model my_model.keras --dataset npz:data.npz --recipe my.toml
    slimpipe list                                                     # models, data sets, stages

Errors a user can fix print one line and exit with code 2.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import traceback
from pathlib import Path

import slimpipe.pipeline  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from slimpipe.pipeline.errors import ConfigError, SlimpipeError, StageError
from slimpipe.pipeline.gate import add_gate_parser


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="slimpipe", description="Compress, export and benchmark Keras models.")
    p.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compress", help="run a recipe on a model and a data set")
    c.add_argument("--model", default="cnn", help="a model name (see 'slimpipe list') or a path "
                   "to a saved Keras model (.keras, .h5 or SavedModel folder; tf_keras or Keras 3, "
                   "whose models are translated and written back as .keras files)")
    c.add_argument("--dataset", default="fashion_mnist", help="a data set name, npz:PATH or tfds:NAME")
    c.add_argument("--recipe", default="default", help="a shipped recipe name or a .toml file")
    c.add_argument("--out", default=None, help="output folder (default: runs/MODEL-DATASET)")
    c.add_argument("--epochs", type=int, default=None, help="override the train stage's epochs")
    c.add_argument("--limit", type=int, default=None, help="use at most N training examples")
    c.add_argument("--width", type=float, default=1.0, help="width multiplier for built-in models")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--data-dir", default=None, help="where data set files are (else the usual places)")
    c.add_argument("--allow-unsafe-model", action="store_true",
                   help="load models with Lambda layers (runs code from the file)")
    c.add_argument("--custom-objects", default=None, metavar="FILE.py",
                   help="a Python file defining CUSTOM_OBJECTS = {\"Name\": (Keras3Class, TfKerasClass)} "
                        "for the model's custom layers (the file is imported, i.e. run)")
    c.add_argument("--no-cache", action="store_true",
                   help="run every stage again instead of reusing finished ones in --out")
    sub.add_parser("list", help="list models, data sets, stages and recipes")
    add_gate_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "list":
            return _list()
        if args.command == "gate":
            from slimpipe.pipeline.gate import run_gate
            return run_gate(args)
        return _compress(args)
    except StageError as exc:
        if args.debug:
            traceback.print_exc()
        hint = "" if args.debug else " (run with --debug for the traceback)"
        print(f"slimpipe: error: {exc}{hint}", file=sys.stderr)
        return 2
    except SlimpipeError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"slimpipe: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("slimpipe: interrupted", file=sys.stderr)
        return 130


def _list() -> int:
    from slimpipe.pipeline.data import DATASETS
    from slimpipe.pipeline.models import MODELS
    from slimpipe.pipeline.recipe import shipped_recipes
    from slimpipe.stages import STAGES

    stages = {k: (v.__doc__ or "").strip().splitlines()[0] + "\n" + _parameters(v) for k, v in STAGES.items()}
    sections = [("models", MODELS), ("data sets", DATASETS), ("stages", stages),
                ("recipes", shipped_recipes())]
    for title, entries in sections:
        print(f"{title}:")
        for key, text in entries.items():
            first, *rest = text.split("\n")
            print(f"  {key:<16} {first}")
            for line in rest:
                print(f"  {'':<16} {line}")
    return 0


def _parameters(stage_class) -> str:
    """A stage's recipe parameters and their defaults, wrapped to ~100 columns."""
    import dataclasses
    import textwrap

    def default(f):
        if f.default is not dataclasses.MISSING:
            return f.default
        return f.default_factory() if f.default_factory is not dataclasses.MISSING else "(required)"

    params = ", ".join(f"{f.name}={default(f)!r}" for f in dataclasses.fields(stage_class) if f.init)
    return "\n".join(textwrap.wrap("parameters: " + (params or "none"), width=82,
                                   subsequent_indent="  ", break_on_hyphens=False))


def default_out(model: str, dataset: str) -> Path:
    stem = Path(model).stem if os.sep in model or "." in model else model
    return Path("runs") / re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{stem}-{dataset}")


def _compress(args) -> int:
    from slimpipe.benchmarks.environment import environment
    from slimpipe.pipeline.context import RunContext
    from slimpipe.pipeline.data import load_dataset
    from slimpipe.pipeline.html_report import write_html
    from slimpipe.pipeline.keras3.custom import load_custom_objects
    from slimpipe.pipeline.keras3.out import keras3_files, keras3_outputs, keras3_source
    from slimpipe.pipeline.models import check_fit, resolve_model
    from slimpipe.pipeline.recipe import load_recipe
    from slimpipe.pipeline.report import build_report, write_plots, write_report
    from slimpipe.pipeline.runner import run_recipe, save_source
    from slimpipe.stages import STAGES

    if args.epochs is not None and args.epochs < 0:
        raise ConfigError(f"--epochs must be >= 0. Received: --epochs {args.epochs}")
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit must be >= 1. Received: --limit {args.limit}")
    if not args.width > 0:
        raise ConfigError(f"--width must be > 0. Received: --width {args.width}")
    overrides = {"train": {"epochs": args.epochs}} if args.epochs is not None else None
    # Everything that can be checked is checked before any output is written.
    recipe = load_recipe(args.recipe, STAGES, overrides=overrides)
    data = load_dataset(args.dataset, limit=args.limit, data_dir=args.data_dir, seed=args.seed)
    custom, loaded = load_custom_objects(args.custom_objects), {}
    model, trained = resolve_model(args.model, input_shape=data.input_shape,
                                   num_classes=data.num_classes, width=args.width, seed=args.seed,
                                   allow_unsafe=args.allow_unsafe_model, custom=custom, record=loaded)
    check_fit(model, data)

    out = Path(args.out) if args.out else default_out(args.model, args.dataset)
    keep = {f"{i:02d}-{step.name}" for i, step in enumerate(recipe, 1)} | {"00-source"}
    _clear_previous_run(out, keep=set() if args.no_cache else keep)
    _deterministic(args.seed)
    ctx = RunContext(data=data, out_dir=out, model_name=args.model, seed=args.seed)
    if "keras3" in loaded:
        keras3_source(ctx, loaded["keras3"], custom=custom, allow_unsafe=args.allow_unsafe_model)
    print(f"[slimpipe] {args.model} on {data.name}: {len(data.x_train)} training and "
          f"{len(data.x_test)} test examples, recipe '{recipe.name}' ({len(recipe)} stages) -> {out}")
    source = save_source(ctx, model, spec=args.model, width=args.width, trained=trained,
                         model_sha256=_file_sha256(args.model), cache=not args.no_cache)
    run_recipe(recipe, source, ctx, cache=not args.no_cache)
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
    report = build_report(ctx, recipe=recipe.name, environment=environment())
    if ctx.keras3 is not None:
        report["keras3_files"] = keras3_files(ctx.artifacts, out)
    images = write_plots(report, out)
    json_path, md_path = write_report(report, out)
    html_path = write_html(report, out, images)
    print(f"[slimpipe] report: {md_path}, {html_path} and {json_path}")
    return 0


def _clear_previous_run(out: Path, keep: set[str]) -> None:
    """Remove what an earlier run wrote to `out` (only slimpipe's own entries), except the
    finished stage folders in `keep`, which the runner may reuse if their cache keys match."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {str(out)!r} is a file: give a folder path")
    out.mkdir(parents=True, exist_ok=True)
    for entry in out.iterdir():
        ours = re.fullmatch(r"\.?\d\d-[\w.-]+(\.tmp)?|(report\.(json|md|html)|\w+_vs_accuracy\.png)(\.tmp)?",
                            entry.name)
        if ours and entry.name not in keep:
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def _deterministic(seed: int) -> None:
    """Same seed, same numbers: a resumed run must reproduce an uninterrupted one."""
    import tensorflow as tf
    import tf_keras as keras

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def _file_sha256(spec: str) -> str | None:
    from slimpipe.pipeline.artifacts import content_sha256

    path = Path(spec)
    return content_sha256(path) if path.exists() else None


if __name__ == "__main__":
    sys.exit(main())
