"""The `slimpipe` command line.

    slimpipe compress --model cnn --dataset fashion_mnist            # the default recipe
    slimpipe compress --model my_model.keras --dataset npz:data.npz --recipe my.toml
    slimpipe list                                                     # models, data sets, stages
    slimpipe results runs/a runs/b --out docs/benchmarks.md          # stamped result tables
    slimpipe compress --recipe auto --max-drop 0.5 --objective size  # a budget search
    slimpipe join runs/cnn-fashion_mnist                             # one more worker for it

Errors a user can fix print one line and exit with code 2.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import re
import sys
import traceback
from typing import Any

import slimpipe.pipeline  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from slimpipe.pipeline.errors import SlimpipeError, StageError
from slimpipe.pipeline.gate_cli import add_gate_parser, run_gate
from slimpipe.pipeline.results import add_results_parser, run_results
from slimpipe.pipeline.startup import load_tensorflow, quiet_stderr


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="slimpipe", description="Compress, export and benchmark Keras models.")
    p.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    p.add_argument("--verbose", action="store_true",
                   help="also show TensorFlow's start-up notices and log messages")
    sub = p.add_subparsers(dest="command", required=True)
    _add_compress_options(sub.add_parser("compress", help="run a recipe on a model and a data set"))
    j = sub.add_parser("join", help="add a worker to the budget search running in OUT (its trials only)")
    j.add_argument("out", help="the --out folder of a running `slimpipe compress --recipe auto`")
    j.add_argument("--threads", type=int, default=None, help="TensorFlow threads for this worker")
    sub.add_parser("list", help="list models, data sets, stages and recipes")
    add_gate_parser(sub)
    add_results_parser(sub)
    return p


def _add_compress_options(c) -> None:
    c.add_argument("--model", default="cnn", help="a model name (see 'slimpipe list') or a path "
                   "to a saved Keras model (.keras, .h5 or SavedModel folder; tf_keras or Keras 3, "
                   "whose models are translated and written back as .keras files)")
    c.add_argument("--dataset", default="fashion_mnist",
                   help="a data set name, npz:PATH, dir:PATH (a folder of class folders of images) or tfds:NAME")
    c.add_argument("--recipe", default="default", help="a shipped recipe name, a .toml file, or auto: "
                   "search for the smallest (or fastest) file within --max-drop points")
    c.add_argument("--out", default=None, help="output folder (default: runs/MODEL-DATASET)")
    c.add_argument("--epochs", type=int, default=None, help="override the train stage's epochs")
    c.add_argument("--set", action="append", default=[], metavar="STAGE.PARAM=VALUE",
                   help="override a parameter of every step of a stage type, e.g. --set prune.epochs=2 "
                   "(repeatable; VALUE is a TOML value)")
    c.add_argument("--limit", type=int, default=None, help="use at most N training examples")
    c.add_argument("--width", type=float, default=1.0, help="width multiplier for built-in models")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--data-dir", default=None, help="where data set files are (else the usual places)")
    c.add_argument("--image-size", type=_image_size, default=None, metavar="HxW",
                   help="resize images to HxW, e.g. 64x64 (dir: with a built-in model: default 64x64; "
                        "with a model file, images take its input size)")
    c.add_argument("--test-split", type=float, default=None,
                   help="dir: without train/ and test/ folders: this fraction of each class is the "
                        "test split, chosen by --seed (default 0.2)")
    c.add_argument("--skip-bad-images", action="store_true",
                   help="dir: leave out files that do not decode as images (counted in the report) "
                        "instead of stopping")
    c.add_argument("--input-range", default="auto", choices=("auto", "0-1", "0-255"),
                   help="pixel range the model expects: auto detects a Rescaling/Normalization layer at "
                        "a model file's input (0-255), else 0-1")
    c.add_argument("--allow-unsafe-model", action="store_true",
                   help="load models with Lambda layers (runs code from the file)")
    c.add_argument("--custom-objects", default=None, metavar="FILE.py",
                   help="a Python file defining CUSTOM_OBJECTS = {\"Name\": (Keras3Class, TfKerasClass)} "
                        "for the model's custom layers (the file is imported, i.e. run)")
    c.add_argument("--no-cache", action="store_true",
                   help="run every stage again instead of reusing finished ones in --out")
    _add_search_options(c)
    _add_distribute_options(c)


def compress_options(words: list[str]) -> dict[str, Any]:
    """What `slimpipe compress WORDS` runs with: {option: value} as the command line parses them,
    defaults filled in, however the words spell them ("--seed=1", "--max-drop 0.50" and
    "--max-drop 0.5" are one run). SlimpipeError, with argparse's reason, when they do not parse."""
    parser, said = _compress_parser(), io.StringIO()
    try:
        with contextlib.redirect_stderr(said):
            args = parser.parse_args(words)
    except SystemExit:
        reason = (said.getvalue().strip().splitlines() or ["they do not parse"])[-1]
        reason = reason.removeprefix("slimpipe compress: ").removeprefix("error: ")
        raise SlimpipeError(f"not options of slimpipe compress: {reason}") from None
    if args.recipe == "auto":
        _fill_search_defaults(args)
    return vars(args)


def compress_flags() -> set[str]:
    """The options of `slimpipe compress` that take no value ("--skip-bad-images")."""
    return {o for a in _compress_parser()._actions if a.nargs == 0 for o in a.option_strings}


def _compress_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slimpipe compress", add_help=False)
    _add_compress_options(parser)
    return parser


SEARCH_DEFAULTS = {"max_drop": 0.5, "objective": "size", "trials": 12, "validation": 0.1, "trial_epochs": 2, "jobs": 1,
                   "candidates": 3}


def _add_search_options(c) -> None:
    from slimpipe.pipeline.search.driver import parse_duration

    g = c.add_argument_group("budget search (--recipe auto)")
    g.add_argument("--max-drop", type=float, default=None, metavar="POINTS",
                   help="accuracy the chosen file may lose against the baseline, in points (default 0.5)")
    g.add_argument("--objective", default=None, metavar="size|latency|balanced",
                   help="what the search makes small: gzip size, p50 latency, or both (default size)")
    g.add_argument("--trials", type=int, default=None,
                   help="trials to finish, counting those an earlier search in --out finished (default 12)")
    g.add_argument("--time-budget", type=parse_duration, default=None, metavar="DURATION",
                   help="no new trial starts after this long (baseline and sensitivity included; "
                        "the final run comes after), e.g. 30m or 1h")
    g.add_argument("--trial-epochs", type=int, default=None, metavar="N",
                   help="fine-tuning epochs of a trial's pruning step (default 2; the chosen recipe "
                        "runs 14): more costs time and ranks trials closer to the final run")
    g.add_argument("--trial-slack", type=float, default=None, metavar="POINTS",
                   help="points a trial's file may lose beyond --max-drop and still count (default: "
                        "--max-drop): trials fine-tune briefly and understate the final run, whose "
                        "files are chosen on the validation split within --max-drop itself")
    g.add_argument("--candidates", type=int, default=None, metavar="N",
                   help="settings the final run trains with the full schedule: the chosen trial's and "
                        "up to two neighbours a step and two steps further, and a step back when none "
                        "of them holds the budget on the validation split (default 3; 1 for the "
                        "chosen alone, one full fine-tuning instead of three)")
    g.add_argument("--jobs", type=int, default=None, metavar="N",
                   help="N worker processes on this machine take trials from the study (default 1); "
                        "`slimpipe join OUT` adds one on another machine")
    g.add_argument("--storage", default=None, metavar="URL",
                   help="an Optuna storage URL for the study (e.g. postgresql://...), for workers on "
                        "machines without a shared folder (default: OUT/search/study.log)")
    g.add_argument("--validation", type=float, default=None, metavar="FRACTION",
                   help="share of each class of the training data held out to score trials (default 0.1)")


def _search_args(args) -> None:
    """Fill the search options' defaults for --recipe auto; refuse them without it."""
    given = [k for k in (*SEARCH_DEFAULTS, "time_budget", "storage", "trial_slack") if getattr(args, k, None) is not None]
    if args.recipe != "auto":
        if given:
            flag = "--" + given[0].replace("_", "-")
            raise SlimpipeError(f"{flag} is an option of the budget search: add --recipe auto, or drop {flag}")
        return
    _fill_search_defaults(args)
    args.time_budget_text = next((a for a in args.argv if a.startswith("--time-budget")), "")


def _fill_search_defaults(args) -> None:
    for key, value in SEARCH_DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.trial_slack is None:
        args.trial_slack = args.max_drop


def _add_distribute_options(c) -> None:
    c.add_argument("--distribute", default=None, choices=("mirrored", "multi-worker"),
                   help="train the training stages under tf.distribute: 'mirrored' on this machine's "
                        "GPUs, 'multi-worker' across processes or machines (overrides the recipe's "
                        "[distribute] table; recipe batch sizes are global)")
    c.add_argument("--workers", default=None, metavar="HOST:PORT,...",
                   help="multi-worker: every worker's address, the chief's first (else TF_CONFIG)")
    c.add_argument("--task", type=int, default=None, metavar="N",
                   help="multi-worker: this machine's index in --workers (0 is the chief, which alone "
                        "writes --out)")
    c.add_argument("--worker-dir", default=None, metavar="DIR",
                   help="multi-worker: where a worker other than the chief keeps its models and "
                        "backups (default: a folder in the system's temp dir)")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for report.json's run record
    try:
        if args.command == "list":
            return _list()
        if args.command == "gate":
            return run_gate(args)
        if args.command == "results":
            return run_results(args)
        if args.command == "join":
            return _join(args)
        load_tensorflow(verbose=args.verbose)  # its start-up notices only with --verbose
        with contextlib.nullcontext() if args.verbose else quiet_stderr():
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


def _image_size(text: str) -> tuple[int, int]:
    """argparse type for --image-size: "HxW" or "N" (square)."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+)\s*)?", text)
    if not match or int(match.group(1)) < 1 or int(match.group(2) or match.group(1)) < 1:
        raise argparse.ArgumentTypeError(f"expected HxW with whole numbers >= 1, e.g. 64x64. Received: {text!r}")
    return int(match.group(1)), int(match.group(2) or match.group(1))


def _join(args) -> int:
    """`slimpipe join OUT`: run trials of the search in OUT with the command line it was started with."""
    from pathlib import Path

    from slimpipe.pipeline.search.driver import run_search
    from slimpipe.pipeline.search.workers import join_search
    from slimpipe.stages import STAGES

    argv, threads = join_search(Path(args.out))
    threads = args.threads or threads
    load_tensorflow(verbose=args.verbose)
    if threads:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    search = _parser().parse_args(argv)
    search.argv = argv
    _search_args(search)
    with contextlib.nullcontext() if args.verbose else quiet_stderr():
        return run_search(search, STAGES, worker=True)


def _compress(args) -> int:
    from slimpipe.pipeline.compress import compress
    from slimpipe.stages import STAGES

    _search_args(args)
    if args.recipe == "auto":
        from slimpipe.pipeline.search.driver import run_search

        return run_search(args, STAGES)
    return compress(args, STAGES)


if __name__ == "__main__":
    sys.exit(main())
