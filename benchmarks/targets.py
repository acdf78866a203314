"""The product's measured targets (benchmarks/targets.toml) checked against finished runs.

    targets = load_targets()                        # [Target], validated
    outcome = check_target(targets[0], Path("runs"))   # Outcome: skipped, or the gate's results

A target names the `make compress ...` command that makes its run and the release-gate
thresholds (`slimpipe gate`) its report must pass. The report must come from that command: its
`slimpipe compress` options (the make variables, each VAR=value being `--var value`, with the
Makefile's defaults for MODEL, DATASET and RECIPE), parsed by the command line's own parser
with its defaults, must be the report's own, `--out` aside, so a run made with other settings
is never checked against a target it does not measure, and one option spelled two ways
("--max-drop 0.50", "--max-drop=0.5") or left at its default is the same run.
`benchmarks/bench_targets.py` (`make targets`) runs every target as a test.
"""
from __future__ import annotations

import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from slimpipe.pipeline.cli import compress_flags, compress_options
from slimpipe.pipeline.errors import ConfigError, SlimpipeError
from slimpipe.pipeline.gate import CheckResult, evaluate, load_report
from slimpipe.pipeline.thresholds import check_thresholds

TARGETS = Path(__file__).with_name("targets.toml")
MAKE_DEFAULTS = {"MODEL": "cnn", "DATASET": "fashion_mnist", "RECIPE": "default"}
IGNORED = ("out",)  # where a run is written does not change what it measures


@dataclass(frozen=True)
class Target:
    name: str
    command: str  # "make compress VAR=value ..."
    run: str  # the run's folder under the runs folder
    gate: dict[str, Any]

    def words(self) -> list[str]:
        """The `slimpipe compress` words the command runs, as the Makefile passes its variables:
        ["--model", "cnn", ..., "--seed", "1"] (a flag variable, SKIP_BAD_IMAGES=1, is "--skip-bad-images")."""
        words = shlex.split(self.command)
        if words[:2] != ["make", "compress"]:
            raise ConfigError(f"target {self.name!r}: command must start with 'make compress'. "
                              f"Received: {self.command!r}")
        values = dict(MAKE_DEFAULTS)
        for word in words[2:]:
            var, sep, value = word.partition("=")
            if not sep or not var.isupper():
                raise ConfigError(f"target {self.name!r}: expected VAR=value after 'make compress'. "
                                  f"Received: {word!r}")
            values[var] = value
        flags, out = compress_flags(), []
        for var, value in values.items():
            option = "--" + var.lower().replace("_", "-")
            out += [option] if option in flags else [option, value]
        return out

    def options(self) -> dict[str, Any]:
        """What the command runs with: `slimpipe compress`'s parsed options, defaults filled in."""
        try:
            return compress_options(self.words())
        except SlimpipeError as exc:
            raise ConfigError(f"target {self.name!r}: {exc}: fix its command") from None


@dataclass(frozen=True)
class Outcome:
    skipped: str | None  # why the target was not checked (its run is missing)
    mismatch: str | None  # why the run found does not measure the target
    results: list[CheckResult]

    @property
    def passed(self) -> bool:
        return self.skipped is None and self.mismatch is None and all(r.passed for r in self.results)


def load_targets(path: Path = TARGETS) -> list[Target]:
    """Every [[target]] of the file, with its gate thresholds validated."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"targets file {str(path)!r} is not readable TOML ({exc}): fix it") from None
    out = []
    for i, entry in enumerate(data.get("target", [])):
        missing = [k for k in ("name", "command", "run", "gate") if k not in entry]
        if missing:
            raise ConfigError(f"{path}: target {i + 1} lacks {', '.join(missing)}: every target names "
                              "its name, command, run and gate")
        target = Target(entry["name"], entry["command"], entry["run"],
                        check_thresholds(entry["gate"], f"{path}: target {entry['name']!r} gate"))
        target.options()  # the command parses
        out.append(target)
    return out


def report_options(report: Mapping[str, Any]) -> dict[str, Any] | None:
    """What the command that wrote the report ran with (its parsed `slimpipe compress` options),
    or None when the report does not record it."""
    argv = list((report.get("run") or {}).get("argv") or [])
    if "compress" not in argv:
        return None
    return compress_options(argv[argv.index("compress") + 1:])


def mismatch(target: Target, report: Mapping[str, Any]) -> str | None:
    """Why the report was not made by the target's command, or None."""
    try:
        have = report_options(report)
    except SlimpipeError as exc:
        return f"the report's command is not one slimpipe reads ({exc}); re-run `{target.command}`"
    if have is None:
        return "the report does not record the command that made it"
    want = target.options()
    diff = sorted(k for k in set(want) | set(have) if k not in IGNORED and want.get(k) != have.get(k))
    if not diff:
        return None
    shown = ", ".join(f"--{k.replace('_', '-')} {_shown(have.get(k))} (the target: {_shown(want.get(k))})"
                      for k in diff)
    return f"the run was made with other options: {shown}; re-run `{target.command}`"


def _shown(value: Any) -> str:
    if value is None or value is False or value == []:  # not `in (None, False, [])`: 0 == False
        return "(not given)"
    return f"{value:g}" if isinstance(value, float) else str(value)


def check_target(target: Target, runs: Path) -> Outcome:
    """The target checked against its run under `runs`: skipped when the run is missing."""
    folder = runs / target.run
    if not (folder / "report.json").is_file():
        return Outcome(f"no run at {folder}: make it with `{target.command}`", None, [])
    report = load_report(folder)
    why = mismatch(target, report)
    if why:
        return Outcome(None, why, [])
    return Outcome(None, None, evaluate(report, target.gate))
