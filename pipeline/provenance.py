"""What made a run: when it finished, the command line, and the slimpipe commit it ran from.

`run_record` is report.json's `run` entry; with the `environment` entry (CPU, ISA flags, tool
versions) it is everything a published figure needs to say where it came from:

>>> run_record(["compress", "--recipe", "speed"])
{'finished_utc': '2026-05-09T07:35:25Z', 'argv': ['slimpipe', 'compress', '--recipe', 'speed'],
 'command': 'slimpipe compress --recipe speed', 'make': None,
 'git': {'commit': '0c5a10e...', 'dirty': False}}

`make` holds the variables given on make's command line (`make compress RECIPE=speed` gives
{"RECIPE": "speed"}) when slimpipe ran under make; `git` is None unless slimpipe runs from a git
checkout of its own source (an editable install), and `dirty` says whether tracked files
differed from that commit.
"""
from __future__ import annotations

import datetime as dt
import os
import shlex
import subprocess
from pathlib import Path
from typing import Any, Mapping, Sequence

SOURCE_ROOT = Path(__file__).resolve().parent.parent  # the checkout, in an editable install
GIT_TIMEOUT_S = 10


def run_record(argv: Sequence[str], *, finished: dt.datetime | None = None,
               environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """report.json's `run` entry for a run started with `slimpipe *argv`."""
    finished = finished or dt.datetime.now(dt.timezone.utc)
    words = ["slimpipe", *map(str, argv)]
    return {
        "finished_utc": finished.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "argv": words,
        "command": shlex.join(words),
        "make": make_variables(os.environ if environ is None else environ),
        "git": git_state(),
    }


def make_variables(environ: Mapping[str, str]) -> dict[str, str] | None:
    """The variables on make's command line, from MAKEFLAGS ("s -- RECIPE=speed OUT=runs/x"),
    when this process runs under make; None otherwise."""
    if "MAKELEVEL" not in environ:
        return None
    flags = environ.get("MAKEFLAGS", "")
    _, sep, assignments = flags.partition("-- ")
    if not sep:
        return {}
    try:
        words = shlex.split(assignments)  # make escapes spaces in values with a backslash
    except ValueError:
        return {}
    pairs = (w.split("=", 1) for w in words if "=" in w)
    return {k: v for k, v in pairs}


def git_state(root: Path = SOURCE_ROOT) -> dict[str, Any] | None:
    """{"commit", "dirty"} of the git checkout whose top folder is `root`, or None (not a
    checkout of its own, as in an installed package; or no git)."""
    top = _git(root, "rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != root.resolve():
        return None
    commit = _git(root, "rev-parse", "HEAD")
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    if commit is None or status is None:
        return None
    return {"commit": commit, "dirty": bool(status)}


def _git(root: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", "--no-optional-locks", "-C", str(root), *args],
                              capture_output=True, text=True, timeout=GIT_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None
