"""Runs killed with SIGKILL at any moment resume to the same numbers; unchanged re-runs reuse
every stage. These run the real console script on a small slice of real Fashion-MNIST."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_cli import QUICK, needs_fashion

pytestmark = [pytest.mark.slow, needs_fashion]
EXE = Path(sys.executable).with_name("slimpipe")


def _cmd(recipe, out, *extra):
    return [str(EXE), "compress", "--limit", "3000", "--recipe", str(recipe), "--out", str(out), *extra]


def _env():
    return {**os.environ, "SLIMPIPE_QUIET": "1"}


def _run(recipe, out, *extra):
    done = subprocess.run(_cmd(recipe, out, *extra), env=_env(), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads((out / "report.json").read_text())


def _kill_when(recipe, out, ready, delay=0.0):
    proc = subprocess.Popen(_cmd(recipe, out), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not ready() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(delay)
    assert proc.poll() is None, "the run ended before the kill point"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def _numbers(report):
    return {r["name"]: (r["sha256"], r["bytes"], r["gzip_bytes"], r["sparsity"], r["accuracy"])
            for r in report["artifacts"]}


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    path = tmp_path_factory.mktemp("recipe") / "quick.toml"
    path.write_text(QUICK)
    return path


@pytest.fixture(scope="module")
def uninterrupted(recipe, tmp_path_factory):
    out = tmp_path_factory.mktemp("whole") / "run"
    return out, _run(recipe, out)


def test_resume_after_kill_9_at_three_points_gives_the_same_numbers(recipe, uninterrupted, tmp_path):
    out = tmp_path / "run"
    # 1: in the middle of training; 2: between two stages; 3: while export writes its files
    _kill_when(recipe, out, lambda: (out / "00-source").is_dir(), delay=1.5)
    assert not (out / "01-train").exists()
    _kill_when(recipe, out, lambda: (out / "02-prune").is_dir())
    _kill_when(recipe, out, lambda: any(out.glob(".04-export.tmp/*")))
    assert not (out / "04-export").exists() and not (out / "report.json").exists()
    resumed = _run(recipe, out)
    assert _numbers(resumed) == _numbers(uninterrupted[1])
    reused = {s["name"]: s["reused"] for s in resumed["stages"]}
    assert reused["train"] and reused["prune"] and not reused["export"]


def test_unchanged_rerun_reuses_every_stage_and_says_so(recipe, uninterrupted):
    out, first = uninterrupted
    again = _run(recipe, out)
    assert all(s["reused"] for s in again["stages"])
    assert all(s["ran_seconds"] > 0 for s in again["stages"])
    assert any("Reused 5 of 5 stages" in n for n in again["notes"])
    md, page = (out / "report.md").read_text(), (out / "report.html").read_text()
    assert md.count("| reused from an earlier run (it ran in ") == 5
    assert page.count(">reused from an earlier run (it ran in ") == 5
    assert _numbers(again) == _numbers(first)
    fresh = _run(recipe, out, "--no-cache")
    assert not any(s["reused"] for s in fresh["stages"])
