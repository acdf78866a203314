"""The product's measured targets (benchmarks/targets.toml) as tests over finished runs.

    make targets                                  # every target whose run is in runs/
    SLIMPIPE_TARGET_RUNS=/data/runs make targets  # or in another folder

A target's run is made by the command it names (minutes to half an hour on two cores); this
suite makes none: a target without its run is skipped with that command. `make test` does not
collect this file (pytest's testpaths is tests/), nor does `make bench` (`--benchmark-only`).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from slimpipe.benchmarks.targets import check_target, load_targets

RUNS_ENV = "SLIMPIPE_TARGET_RUNS"
TARGETS = load_targets()


@pytest.mark.parametrize("target", TARGETS, ids=[t.run + ": " + t.name for t in TARGETS])
def test_target(target):
    outcome = check_target(target, Path(os.environ.get(RUNS_ENV, "runs")))
    if outcome.skipped:
        pytest.skip(outcome.skipped)
    assert outcome.mismatch is None, outcome.mismatch
    failed = [f"{r.name}: {r.detail}" for r in outcome.results if not r.passed]
    assert not failed, f"{target.name}: " + "; ".join(failed)
