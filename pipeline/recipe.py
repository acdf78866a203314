"""Recipes: an ordered list of configured stages, from a TOML file or built in Python.

>>> recipe = load_recipe("default", STAGES)           # a recipe shipped in pipeline/recipes/
>>> recipe = load_recipe("my_recipe.toml", STAGES)    # or a file of your own
>>> recipe[:3]                                          # the first three steps, for debugging

A TOML recipe looks like::

    name = "default"
    [[stages]]
    stage = "train"
    epochs = 10
    [[stages]]
    stage = "prune"
    final_sparsity = 0.8
    [[stages]]
    stage = "structured_prune"
    input = "train"          # branch: start from what step 'train' left, not from 'prune'
    [distribute]             # optional: training stages under tf.distribute (pipeline.distribute)
    strategy = "mirrored"

A top-level `validation = 0.1` holds that share of each class of the training data out of
every training step (chosen by the run's seed, recorded in the report): what a budget search
(`--recipe auto`) decides on, and what the recipe it writes keeps out, so re-running that recipe
trains on the same examples.

A step works on the model the step before it left current, or, with `input = "STEP"`, on the
model that the earlier step named STEP left current ("source" is the model the run starts from).

Everything is validated before anything runs: stage types exist, step names are unique,
parameters are known and valid, and each stage accepts the kind of model the one before it
produces.
"""
from __future__ import annotations

import dataclasses
import difflib
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

from slimpipe.pipeline.distribute import check_table
from slimpipe.pipeline.errors import ConfigError
from slimpipe.pipeline.thresholds import check_thresholds

RECIPES_DIR = Path(__file__).parent / "recipes"


@dataclass(frozen=True)
class Step:
    name: str  # unique in the recipe; its outputs go to OUT/NN-name/
    stage: Any  # a Stage instance
    input: str | None = None  # an earlier step whose current model this one starts from


@dataclass(frozen=True)
class Recipe:
    name: str
    steps: tuple[Step, ...]
    description: str = ""
    gate: Mapping[str, Any] = field(default_factory=dict)
    distribute: Mapping[str, Any] = field(default_factory=dict)  # [distribute]: see pipeline.distribute
    validation: float = 0.0  # share of each class of the training data held out (not trained on)

    def __len__(self) -> int:
        return len(self.steps)

    def __iter__(self) -> Iterator[Step]:
        return iter(self.steps)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return dataclasses.replace(self, steps=self.steps[index])
        return self.steps[index]


def shipped_recipes() -> dict[str, str]:
    """Name -> description of the recipes in pipeline/recipes/."""
    out = {}
    for path in sorted(RECIPES_DIR.glob("*.toml")):
        out[path.stem] = tomllib.loads(path.read_text()).get("description", "")
    return out


def _suggest(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def read_recipe_file(spec: str | Path) -> tuple[Path, dict[str, Any]]:
    """The path and parsed TOML of a shipped recipe name or a .toml path (not yet validated)."""
    path = Path(spec)
    if path.suffix != ".toml":
        path = RECIPES_DIR / f"{spec}.toml"
        if not path.is_file():
            known = ", ".join(shipped_recipes())
            raise ConfigError(f"unknown recipe {str(spec)!r}: expected one of {known} or a path "
                              f"to a .toml file.{_suggest(str(spec), shipped_recipes())}")
    if not path.is_file():
        raise ConfigError(f"recipe file {str(path)!r} does not exist: check the path")
    try:
        return path, tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"recipe {str(path)!r} is not valid TOML: {exc}") from None


def load_recipe(spec: str | Path, registry: Mapping[str, type], *,
                overrides: Mapping[str, Mapping[str, Any]] | None = None,
                start_kind: str = "keras") -> Recipe:
    """Load a shipped recipe by name, or a TOML file by path, and validate it."""
    path, data = read_recipe_file(spec)
    data.setdefault("name", path.stem)
    return build_recipe(data, registry, overrides=overrides, start_kind=start_kind)


def build_recipe(data: Mapping[str, Any], registry: Mapping[str, type], *,
                 overrides: Mapping[str, Mapping[str, Any]] | None = None,
                 start_kind: str = "keras") -> Recipe:
    """Build a Recipe from plain data (the parsed TOML) and validate it.

    `overrides` maps a stage type to parameters that replace the recipe's for every step of
    that type (the CLI's --epochs sets {"train": {"epochs": N}}).
    """
    unknown = set(data) - {"name", "description", "stages", "gate", "distribute", "validation"}
    if unknown:
        raise ConfigError(f"recipe has unknown top-level keys {sorted(unknown)}: "
                          "expected name, description, stages, gate, distribute, validation")
    validation = data.get("validation", 0.0)
    if not (isinstance(validation, (int, float)) and not isinstance(validation, bool) and 0 <= validation < 1):
        raise ConfigError(f"recipe: validation must be a fraction in [0, 1) of the training data to "
                          f"hold out. Received: validation={validation!r}")
    entries = data.get("stages")
    if not isinstance(entries, list) or not entries:
        raise ConfigError("recipe has no stages: add at least one [[stages]] table with a 'stage' key")
    steps, seen = [], set()
    for i, entry in enumerate(entries, 1):
        step = _build_step(i, dict(entry), registry, overrides or {})
        if step.name in seen or step.name == "source":
            raise ConfigError(f"recipe step {i}: name {step.name!r} is "
                              f"{'reserved' if step.name == 'source' else 'used twice'}; give each "
                              "step a unique 'name'")
        if step.input is not None and step.input not in seen | {"source"}:
            raise ConfigError(f"recipe step {i} '{step.name}': input {step.input!r} names no earlier "
                              f"step; expected one of {', '.join(['source', *seen])}")
        seen.add(step.name)
        steps.append(step)
    gate = data.get("gate", {})
    if not isinstance(gate, Mapping):
        raise ConfigError(f"recipe: 'gate' must be a table ([gate]). Received: {type(gate).__name__}")
    recipe = Recipe(name=str(data.get("name", "recipe")), steps=tuple(steps),
                    description=str(data.get("description", "")),
                    gate=check_thresholds(gate, "recipe [gate]"),  # a typo fails before training
                    distribute=dict(check_table(data.get("distribute", {}))), validation=float(validation))
    check_chain(recipe, start_kind)
    return recipe


def parse_overrides(items, registry: Mapping[str, type]) -> dict[str, dict[str, Any]]:
    """`--set STAGE.PARAM=VALUE` strings as {stage type: {param: value}} (VALUE is read as a TOML
    value: 1, 0.5, true, "text", [1, 2]; anything else as a string)."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, text = str(item).partition("=")
        kind, dot, param = key.strip().partition(".")
        if not sep or not dot or not param:
            raise ConfigError(f"--set expects STAGE.PARAM=VALUE, e.g. prune.epochs=2. Received: {item!r}")
        if kind not in registry:
            raise ConfigError(f"--set {item!r}: unknown stage {kind!r}; known stages: "
                              f"{', '.join(registry)}.{_suggest(kind, registry)}")
        fields = {f.name for f in dataclasses.fields(registry[kind]) if f.init}
        if param not in fields:
            raise ConfigError(f"--set {item!r}: stage {kind!r} has no parameter {param!r}; known: "
                              f"{', '.join(sorted(fields))}.{_suggest(param, fields)}")
        try:
            value = tomllib.loads(f"v = {text.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = text.strip()
        out.setdefault(kind, {})[param] = value
    return out


def _build_step(index: int, entry: dict[str, Any], registry, overrides) -> Step:
    kind = entry.pop("stage", None)
    if kind is None:
        raise ConfigError(f"recipe step {index} has no 'stage' key: say which stage it is "
                          f"(one of {', '.join(registry)})")
    if kind not in registry:
        raise ConfigError(f"recipe step {index}: unknown stage {kind!r}; known stages: "
                          f"{', '.join(registry)}.{_suggest(kind, registry)}")
    name = str(entry.pop("name", kind))
    source = entry.pop("input", None)
    if source is not None and not isinstance(source, str):
        raise ConfigError(f"stage '{name}' ({kind}): input must be the name of an earlier step. "
                          f"Received: input={source!r}")
    entry.update(overrides.get(kind, {}))
    cls = registry[kind]
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    for key in entry:
        if key not in fields:
            raise ConfigError(f"stage '{name}' ({kind}): unknown parameter {key!r}; known: "
                              f"{', '.join(sorted(fields)) or 'none'}.{_suggest(key, fields)}")
    params = {k: tuple(_tuplify(v)) if isinstance(v, list) else v for k, v in entry.items()}
    try:
        return Step(name=name, stage=cls(**params), input=source)
    except TypeError as exc:  # e.g. a wrong type that __post_init__ did not anticipate
        raise ConfigError(f"stage '{name}' ({kind}): bad parameters: {exc}") from None


def _tuplify(value: list) -> list:
    return [tuple(_tuplify(v)) if isinstance(v, list) else v for v in value]


def check_fits_model(recipe: Recipe, model, data) -> list[str]:
    """Check everything each step says about layers (names, rules that select nothing, a block
    shape a layer cannot take, layers a quantizer does not support, ...) against the model and
    data the run starts from, before any step runs: training never starts on a recipe that would
    fail later for a reason knowable now. A stage opts in with `check(model, data)`, which
    raises a ConfigError or returns notes (what the step will do differently than asked, e.g. a
    layer left float); the notes come back, prefixed with the step's name.
    """
    notes = []
    for i, step in enumerate(recipe.steps, 1):
        check = getattr(step.stage, "check", None)
        if check is None:
            continue
        try:
            notes += [f"step {i} '{step.name}': {text}" for text in check(model, data) or ()]
        except ConfigError as exc:
            raise ConfigError(f"recipe '{recipe.name}' step {i} '{step.name}' does not fit model "
                              f"{getattr(model, 'name', '?')!r} (checked before anything ran): {exc}") from None
    return notes


def check_chain(recipe: Recipe, start_kind: str = "keras") -> None:
    """Each stage must accept the kind of model the stages before it leave current."""
    current, after = start_kind, {"source": start_kind}
    for i, step in enumerate(recipe.steps, 1):
        before = {s.stage.name for s in recipe.steps[:i - 1]}
        missing = [k for k in getattr(step.stage, "requires", ()) if k not in before]
        if missing:
            raise ConfigError(
                f"recipe step {i} '{step.name}' needs a '{missing[0]}' step before it, and the "
                f"recipe has none before step {i}: put '{step.stage.name}' after '{missing[0]}'")
        current = after[step.input] if step.input else current
        accepts = step.stage.accepts
        if current not in accepts:
            raise ConfigError(
                f"recipe step {i} '{step.name}' accepts {', '.join(accepts)} models but would "
                f"receive a {current} model: reorder the stages (e.g. 'strip' after 'prune')")
        if step.stage.produces is not None:
            current = step.stage.produces
        after[step.name] = current
