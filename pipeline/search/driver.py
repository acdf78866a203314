"""The budget search, phase by phase.

>>> run_search(args, STAGES)       # `slimpipe compress --recipe auto ...`; returns the exit code

1. Hold out a validation split of the training data (`--validation`, seeded by `--seed`).
2. Baseline: the default recipe's train step on the rest, in OUT/01-train (the final run of
   phase 5 reuses it from the cache).
3. Sensitivity (`stages.sensitivity`) on the validation split, in OUT/search/base/.
4. Trials: Optuna suggests settings (`pipeline.search.space`); each becomes a recipe that starts
   from the trained baseline, runs with short fine-tuning in OUT/search/trials/<settings hash>/,
   and is scored on the validation split (`pipeline.search.score`). The study is a journal
   file, OUT/search/study.log. New trials start while the time budget lasts.
5. The best trial's settings with the full fine-tuning schedule, and up to two neighbours a
   step and two steps further (each a branch from the baseline, `--candidates`), are written as
   an ordinary recipe, OUT/chosen.toml, and run like any recipe into OUT. Its TFLite files are
   scored on the validation split; the best within the budget there is the answer
   (`final_choice`), and its test-set figures (the test set is used here, once) are the verdict.
   When no file holds the budget there, a step back from the chosen settings joins the recipe.
   The report adds the search. Exit 0 when the answer is within the budget on the test set, 1 when it is not or when
   no file was within it on the validation split.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import json
import re
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from slimpipe.pipeline.errors import ConfigError
from slimpipe.pipeline.search.final import description, final_steps, header
from slimpipe.pipeline.search.space import NEIGHBOUR_KEEP, OBJECTIVES, SPACES, TRIAL, name_steps, neighbours, settings_text
from slimpipe.pipeline.search.workers import JOB_FILE, SEARCH_DIR, run_workers, write_job
SPACE_VERSION = 1  # part of the study's name: a change to what trials do starts a new study


def check_options(args) -> None:
    """One-line errors for the search's options (exit code 2), before anything loads."""
    if not (0 <= args.max_drop <= 100):
        raise ConfigError(f"--max-drop must be between 0 and 100 points. Received: --max-drop {args.max_drop:g}")
    if args.objective not in OBJECTIVES:
        raise ConfigError(f"--objective must be one of {', '.join(OBJECTIVES)}. Received: {args.objective!r}")
    if args.trials < 1:
        raise ConfigError(f"--trials must be >= 1 (a search needs at least one trial). Received: --trials {args.trials}")
    if args.time_budget is not None and args.time_budget <= 0:
        raise ConfigError("--time-budget must be longer than zero, e.g. 30m or 1h. "
                          f"Received: {args.time_budget_text!r}")
    if not 0 < args.validation < 1:
        raise ConfigError(f"--validation must be a fraction in (0, 1), e.g. 0.1. Received: --validation {args.validation:g}")
    if args.trial_epochs < 1:
        raise ConfigError(f"--trial-epochs must be >= 1. Received: --trial-epochs {args.trial_epochs}")
    if not 0 <= args.trial_slack <= 100:
        raise ConfigError(f"--trial-slack must be between 0 and 100 points. Received: --trial-slack {args.trial_slack:g}")
    if args.jobs < 1:
        raise ConfigError(f"--jobs must be >= 1. Received: --jobs {args.jobs}")
    if not 1 <= args.candidates <= 1 + len(NEIGHBOUR_KEEP):
        raise ConfigError(f"--candidates must be between 1 and {1 + len(NEIGHBOUR_KEEP)} (the chosen settings "
                          f"and their neighbours). Received: --candidates {args.candidates}")
    if getattr(args, "distribute", None):
        raise ConfigError("--recipe auto runs in one process: drop --distribute (run the chosen recipe, "
                          "OUT/chosen.toml, with --distribute to train it on several workers)")


def parse_duration(text: str) -> float:
    """'30m', '1h', '90s', '1h30m' or a number of seconds -> seconds (argparse type)."""
    match = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*", text)
    if not text.strip() or not match or not any(match.groups()):
        raise argparse.ArgumentTypeError(f"expected a duration such as 30m, 1h, 1h30m or 900s. Received: {text!r}")
    h, m, s = (float(g) if g else 0.0 for g in match.groups())
    return h * 3600 + m * 60 + s


def baseline_step(epochs: int | None) -> dict[str, Any]:
    """The default recipe's train step (with --epochs applied)."""
    from slimpipe.pipeline.recipe import read_recipe_file

    _, data = read_recipe_file("default")
    step = dict(next(s for s in data["stages"] if s["stage"] == "train"))
    if epochs is not None:
        step["epochs"] = epochs
    return step


@dataclass
class Setup:
    """What the phases before the trials leave: the search's folder, data, baseline and table."""

    out: Path
    search_dir: Path
    train: dict[str, Any]
    trained: Any  # the baseline's artifact
    model: Any  # the baseline (tf_keras)
    search_data: Any
    table: dict[str, Any]
    phases: dict[str, float]
    started: float


def run_search(args, registry: Mapping[str, type], *, worker: bool = False) -> int:
    """The whole search (see the module's docstring); with `worker` (`slimpipe join OUT`), only
    trials of the running search in OUT: the chief chooses and runs the final recipe."""
    from slimpipe.pipeline.search.study import (Heartbeat, open_study, run_trials, seed_study, started_trials,
                                                stats_since, wait_idle)

    check_options(args)
    setup = _setup(args, registry, worker=worker)
    space, search_dir = SPACES[args.objective], setup.search_dir
    settings = {"objective": args.objective, "max_drop": args.max_drop, "seed": args.seed,
                "trial_epochs": args.trial_epochs, "trial_slack": args.trial_slack,
                "validation": args.validation, "baseline": setup.trained.sha256, "version": SPACE_VERSION,
                "overrides": args.set}
    name = f"auto-{args.objective}-{_digest(settings)[:12]}"
    study = open_study(search_dir, name=name, seed=args.seed, trials=args.trials, storage=args.storage)
    t0 = time.perf_counter()
    trial_budget = args.max_drop + args.trial_slack

    def run_one(number: int, params: dict[str, Any]):
        return _trial(number, params, setup, space, trial_budget, args, registry)

    def trials_here() -> dict[str, Any]:
        with Heartbeat(search_dir):
            return run_trials(study, space, run_one, trials=args.trials, max_drop=trial_budget,
                              budget_s=args.time_budget, started=setup.started, folder=search_dir, log=print)

    if worker:
        stats = trials_here()
        print(f"[slimpipe] search: this worker ran {stats['ran']} trials; the chief chooses the result")
        return 0
    seed_study(study, space)
    if args.jobs > 1:
        before = started_trials(study)
        stats = {**run_workers(args, setup.out, search_dir, name), **stats_since(study, before)}
    else:
        write_job(args, search_dir, name)
        stats = trials_here()
    wait_idle(study, search_dir)  # trials of workers that joined from elsewhere finish first
    setup.phases["trials"] = time.perf_counter() - t0
    record = {"objective": args.objective, "max_drop": args.max_drop, "trial_budget": trial_budget, "study": name,
              "storage": args.storage or str(Path(SEARCH_DIR) / "study.log"), "trials_requested": args.trials,
              "jobs": args.jobs, "time_budget_s": args.time_budget, "stats": stats}
    return _final(args, registry, setup, study, record)


def _setup(args, registry, *, worker: bool) -> Setup:
    """The validation split, the baseline (into OUT, for the final run) and the sensitivity table."""
    started = time.perf_counter()
    train = _with_overrides([baseline_step(args.epochs)], args, registry)[0]
    fit = _fit_recipe(train, args.validation)
    base_args = _with_recipe(args, fit)
    env = _prepare(base_args, registry)
    registry["sensitivity"]().check(env["prep"].inputs.model, None)  # a model with nothing to prune fails now
    out = env["out"]
    search_dir = out / SEARCH_DIR
    if worker and not (search_dir / JOB_FILE).is_file():
        raise ConfigError(f"no search is running in {out}: its baseline and sensitivity analysis are not "
                          "finished (join once the chief prints 'search: trial'), or the folder is wrong")
    search_dir.mkdir(parents=True, exist_ok=True)
    (search_dir / "baseline.toml").write_text(_dumps(fit))
    phases = {}
    t0 = time.perf_counter()
    trained, fit_ctx = _baseline(env, base_args, registry, clear=not worker)
    phases["baseline"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    table = _sensitivity(trained, fit_ctx, env["search_data"], search_dir / "base", args, registry)
    phases["sensitivity"] = time.perf_counter() - t0
    return Setup(out, search_dir, train, trained, fit_ctx.keras_model(trained), env["search_data"], table,
                 phases, started)


def _tolerance(args, table) -> float:
    """A layer keeps more clusters where clustering it alone costs more than half the budget, or
    more than three of the analysed examples (below that, the table cannot tell)."""
    return max(args.max_drop / 2, 300 / table["examples"])


def _final(args, registry, setup: Setup, study, record: dict[str, Any]) -> int:
    """Write the best trial's settings with the full schedule, and its neighbours', as
    OUT/chosen.toml and run it. When the neighbours went further and no file holds the budget on
    the validation split, a step back from the chosen settings joins the recipe, which runs again
    (the cache keeps what ran)."""
    from slimpipe.pipeline.search.study import best, trial_records

    records = trial_records(study)
    chosen = best(records)
    if chosen is None:
        raise ConfigError(f"no trial of the search finished ({record['stats']['failed']} failed; see the "
                          "messages above): fix what they say, or raise --trials / --time-budget")
    space = SPACES[args.objective]
    further = bool(chosen.get("feasible"))
    others = [{"role": "further" if further else "back", "params": p}
              for p in neighbours(space, chosen["params"], further=further)[:args.candidates - 1]]
    record.update({"validation": setup.search_data.details.get("validation"),
                   "baseline_validation_accuracy": chosen.get("baseline_accuracy"),
                   "sensitivity": setup.table, "trials": records, "chosen": chosen})
    report = _run_final(args, registry, setup, record, chosen, others)
    back = neighbours(space, chosen["params"], further=False)[:1]
    if further and others and back and not report["search"]["verdict"].get("validation_met", True):
        print(f"[slimpipe] search: no file of the final run held the budget on the validation split; a step "
              f"back from the chosen settings ({settings_text(back[0])}) joins it")
        others.append({"role": "back", "params": back[0], "added": True})
        report = _run_final(args, registry, setup, record, chosen, others,
                            earlier_s=report["search"]["phases_s"]["final"])
    return _verdict(report, setup.out)


def _run_final(args, registry, setup: Setup, record, chosen, others, *, earlier_s: float = 0.0) -> dict[str, Any]:
    """Write chosen.toml for these candidates, run it into OUT, and return its report."""
    from slimpipe.pipeline.compress import compress

    outputs = {kind: cls.name_as for kind, cls in registry.items() if hasattr(cls, "name_as")}
    steps, candidates = final_steps(SPACES[args.objective], chosen, others, table=setup.table,
                                    tolerance=_tolerance(args, setup.table),
                                    start=setup.train.get("name", "train"), outputs=outputs)
    recipe = {"name": "chosen", "description": description(args, candidates), "validation": args.validation,
              "stages": [setup.train, *_with_overrides(steps, args, registry)],
              "gate": {"max_accuracy_drop": args.max_drop, "require_parity": True}}
    chosen_path = setup.out / "chosen.toml"
    _write_atomic(chosen_path, header(args, chosen, candidates) + _dumps(recipe))
    also = "".join(f", with {c['role']} settings as another candidate ({settings_text(c['params'])})"
                   for c in candidates[1:])
    print(f"[slimpipe] search: trial {chosen['number']} chosen ({settings_text(chosen['params'])}){also}; "
          f"its recipe with the full schedule: {chosen_path}")
    record.update({"candidates": candidates, "recipe": str(chosen_path.name)})
    final_args = _with_path(args, chosen_path, argv=args.argv)
    final_args.search_record = record
    final_args.search_data = setup.search_data
    final_args.search_phases = {**{k: round(v, 1) for k, v in setup.phases.items()}, "started": setup.started,
                                "final_earlier": earlier_s}
    compress(final_args, registry)
    return json.loads((setup.out / "report.json").read_text())


# -- phases ------------------------------------------------------------------------------------
def _prepare(args, registry) -> dict[str, Any]:
    from slimpipe.pipeline.compress import prepare
    from slimpipe.pipeline.data.dataset import hold_out

    prep = prepare(args, registry)
    full = prep.full_data
    _, search_data = hold_out(full, args.validation, seed=args.seed)
    return {"prep": prep, "out": prep.out, "search_data": search_data}


def _baseline(env, args, registry, *, clear: bool = True):
    """Run the train step into OUT (what the final run reuses); the trained artifact and context."""
    from slimpipe.pipeline.compress import start_run
    from slimpipe.pipeline.runner import run_recipe

    ctx, source, log = start_run(args, env["prep"], clear=clear)
    run_recipe(env["prep"].recipe, source, ctx, cache=not args.no_cache, log=log)
    return ctx.find(ctx.baseline), ctx


def _sensitivity(trained, fit_ctx, search_data, folder: Path, args, registry) -> dict[str, Any]:
    from slimpipe.pipeline.context import RunContext
    from slimpipe.pipeline.recipe import build_recipe
    from slimpipe.pipeline.runner import run_recipe, save_source

    recipe = build_recipe({"name": "sensitivity", "stages": [{"stage": "sensitivity"}]}, registry)
    ctx = RunContext(data=search_data, out_dir=folder, model_name=args.model, seed=args.seed)
    folder.mkdir(parents=True, exist_ok=True)
    source = save_source(ctx, fit_ctx.keras_model(trained), spec=f"{args.model} trained",
                         width=args.width, trained=True, model_sha256=trained.sha256)
    run_recipe(recipe, source, ctx, cache=not args.no_cache, log=print)
    return ctx.measurements["sensitivity"]


def _trial(number, params, setup: Setup, space, trial_budget, args, registry):
    from slimpipe.pipeline.recipe import build_recipe

    schedule = TRIAL.with_epochs(args.trial_epochs)
    steps = name_steps(space.steps(params, setup.table, schedule=schedule, tolerance=_tolerance(args, setup.table)))
    steps = _with_overrides(steps, args, registry)
    folder = setup.search_dir / "trials" / _digest({"steps": steps, "baseline": setup.trained.sha256})[:12]
    recipe = build_recipe({"name": f"trial-{number}", "stages": steps}, registry)
    print(f"[slimpipe] search: trial {number} ({settings_text(params)}) -> {folder}")
    folder.mkdir(parents=True, exist_ok=True)
    with _locked(folder / ".lock"):  # a worker with the same settings waits, then reuses the steps
        return _run_trial(number, steps, recipe, folder, setup, space, trial_budget, args)


def _run_trial(number, steps, recipe, folder: Path, setup: Setup, space, trial_budget, args):
    import gc

    import tf_keras as keras

    from slimpipe.pipeline.context import RunContext
    from slimpipe.pipeline.report import build_report
    from slimpipe.pipeline.runner import run_recipe, save_source
    from slimpipe.pipeline.search.score import score

    keras.utils.set_random_seed(args.seed)
    ctx = RunContext(data=setup.search_data, out_dir=folder, model_name=args.model, seed=args.seed)
    (folder / "trial.toml").write_text(_dumps({"name": f"trial-{number}", "stages": steps}))
    source = save_source(ctx, setup.model, spec=f"{args.model} trained", width=args.width, trained=True,
                         model_sha256=setup.trained.sha256, cache=not args.no_cache)
    run_recipe(recipe, source, ctx, cache=not args.no_cache, log=_quiet)
    result = score(build_report(ctx, recipe=recipe.name, environment={}), objective=space.cost,
                   max_drop=trial_budget)
    verdict = "within" if result.feasible else "outside"
    print(f"[slimpipe] search: trial {number}: {result.file} at {_cost_text(space.cost, result)}, "
          f"{_drop_text(result.drop)} on validation ({verdict} the budget)")
    keras.backend.clear_session()
    gc.collect()
    return result


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive lock on `path` (flock: one machine, or a filesystem that supports it)."""
    import fcntl

    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _verdict(report: Mapping[str, Any], out: Path) -> int:
    verdict = report.get("search", {}).get("verdict") or {}
    print(f"[slimpipe] search: {verdict.get('text', 'no verdict')}")
    return 0 if verdict.get("met") else 1


# -- recipes as data ---------------------------------------------------------------------------
def _fit_recipe(train: dict[str, Any], validation: float) -> dict[str, Any]:
    return {"name": "baseline", "validation": validation, "stages": [train]}


def _with_overrides(steps: list[dict[str, Any]], args, registry) -> list[dict[str, Any]]:
    """--set STAGE.PARAM=VALUE applied to the steps of that stage type (so chosen.toml has them)."""
    from slimpipe.pipeline.recipe import parse_overrides

    overrides = parse_overrides(args.set, registry)
    return [{**s, **overrides.get(s["stage"], {})} for s in steps]


def _with_recipe(args, data: Mapping[str, Any]):
    new = copy.copy(args)
    new.recipe_data = dict(data)
    return new


def _with_path(args, path: Path, *, argv):
    """The arguments of a plain run of the recipe at `path`: --epochs and --set are in it already."""
    new = copy.copy(args)
    new.recipe, new.recipe_data, new.argv, new.epochs, new.set = str(path), None, argv, None, []
    return new


def _dumps(data: Mapping[str, Any]) -> str:
    from slimpipe.pipeline.recipe_toml import dumps_recipe

    return dumps_recipe(data)


def _write_atomic(path: Path, text: str) -> None:
    from slimpipe.pipeline.atomic import write_text_atomic

    tomllib.loads(text)  # what we write must read back
    write_text_atomic(path, text)


def _cost_text(objective: str, s) -> str:
    if s.cost is None:
        return "no measurement"
    if objective == "size":
        return f"{1 / s.cost:.1f}x smaller (gzip)"
    if objective == "latency":
        return f"{1 / s.cost:.2f}x faster"
    return f"{1 / s.cost:.2f}x (geometric mean of size and speed)"


def _drop_text(drop) -> str:
    return "not measured" if drop is None else f"{-drop:+.2f} points"


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def _quiet(text: str) -> None:
    """Trials log their steps briefly: only what each step made."""
    if " done in " in text or "reused" in text:
        print("    " + text.replace("[slimpipe] ", ""))
