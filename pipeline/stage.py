"""The stage protocol.

A stage is a small frozen dataclass whose fields are its parameters. It checks them in
`__post_init__`, declares which artifact kinds it accepts and which kind its main output has,
and turns one input artifact into output artifacts without mutating the input:

>>> @dataclass(frozen=True)
... class Strip:
...     name: ClassVar[str] = "strip"
...     accepts: ClassVar[tuple[str, ...]] = ("keras:pruning",)
...     produces: ClassVar[str | None] = "keras"
...     def run(self, art, ctx):
...         model = strip_pruning(ctx.keras_model(art))
...         return [ctx.save_model(self, model, "pruned", parent=art, kind="keras")]

`run` returns the artifacts it made, or a `StageResult` when it also has notes for the report,
measurements or a new baseline: a stage never writes into the run context; the runner adds
what it returns (and replays it when the step is reused from the cache).

A stage may also declare `requires`, the stage types that must run earlier in the recipe
(bundle needs benchmark's measurements); the recipe is checked for them before anything runs.
And it may define `check(model, data)`, which the CLI calls for every step before the first one
runs: it raises a ConfigError for what will not fit the model (a layer name that is not there)
and returns notes for what it will do differently than asked.

A stage that fits a model declares `trains = True` (every `stages.finetune.FineTune` does;
quantize only in its QAT modes): under `--distribute` it runs inside the strategy's scope on
every process of the run (`pipeline.distribute`).

`produces` is the kind of the Keras artifact that the next stage receives. A stage whose
outputs are only files for deployment (export, benchmark) has `produces = None`, and the next
stage gets the same input this one got.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from slimpipe.pipeline.errors import ConfigError

if TYPE_CHECKING:
    from slimpipe.pipeline.artifacts import Artifact
    from slimpipe.pipeline.context import RunContext


class Stage(Protocol):
    name: ClassVar[str]
    accepts: ClassVar[tuple[str, ...]]
    produces: ClassVar[str | None]

    def run(self, art: "Artifact", ctx: "RunContext") -> "StageResult | list[Artifact]": ...


@dataclass
class StageResult:
    """Everything a stage's run gives the run: the artifacts it made, notes for the report,
    measurements of artifacts ({artifact name: record}, the benchmark stage's), and the name of
    the artifact that becomes the run's dense baseline (the train stage's). The runner adds them
    to the run and records them in the step's manifest, so a reused step gives the same.
    A stage that only makes artifacts may return the list of them instead.
    """

    artifacts: list = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    measurements: dict[str, Any] = field(default_factory=dict)
    baseline: str | None = None

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    @classmethod
    def of(cls, returned) -> "StageResult":
        return returned if isinstance(returned, StageResult) else cls(artifacts=list(returned or []))


def stage_config(stage: Any) -> dict[str, Any]:
    """The stage's parameters as plain data (what goes into artifact ids and the report)."""
    return dataclasses.asdict(stage)


def require(ok: bool, stage: str, message: str) -> None:
    """Raise a ConfigError for `stage` unless `ok`. Used in `__post_init__`."""
    if not ok:
        raise ConfigError(f"stage '{stage}': {message}")


def check_fraction(stage: str, field: str, value: float, *, upper_open: bool = True) -> None:
    ok = isinstance(value, (int, float)) and 0.0 <= value and (value < 1.0 if upper_open else value <= 1.0)
    bound = "[0, 1)" if upper_open else "[0, 1]"
    require(ok, stage, f"{field} must be in {bound}. Received: {field}={value!r}")


def check_choice(stage: str, field: str, value, choices) -> None:
    require(value in choices, stage, f"{field} must be one of {', '.join(map(repr, choices))}. "
            f"Received: {field}={value!r}")


def check_name_as(stage: str, value) -> None:
    """`name_as`, the name a stage gives its main output (two branches of one recipe that run the
    same stage name their outputs apart)."""
    require(isinstance(value, str) and value.strip() != "" and "/" not in value, stage,
            f"name_as must be a non-empty artifact name without '/'. Received: name_as={value!r}")


def is_number(value) -> bool:
    """An int or a float, not a bool (a recipe's `true` is not a number)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_count(stage: str, field: str, value: int, *, minimum: int = 0) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
    require(ok, stage, f"{field} must be an integer >= {minimum}. Received: {field}={value!r}")
