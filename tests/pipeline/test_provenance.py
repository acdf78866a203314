"""report.json's run record: finish time, command line, make variables and git commit."""
import datetime as dt
import shutil
import subprocess

import pytest

from slimpipe.pipeline.provenance import git_state, make_variables, run_record

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def test_run_record_keeps_the_command_as_typed():
    when = dt.datetime(2026, 5, 9, 9, 35, 25, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    rec = run_record(["compress", "--out", "runs/my run", "--recipe", "speed"], finished=when,
                     environ={})
    assert rec["finished_utc"] == "2026-05-09T07:35:25Z"
    assert rec["argv"] == ["slimpipe", "compress", "--out", "runs/my run", "--recipe", "speed"]
    assert rec["command"] == "slimpipe compress --out 'runs/my run' --recipe speed"
    assert rec["make"] is None


def test_make_variables_come_from_makeflags():
    env = {"MAKELEVEL": "1", "MAKEFLAGS": r"s -- GATE_ARGS=--max-p90-ms\ 5\ --require-parity RECIPE=speed"}
    assert make_variables(env) == {"GATE_ARGS": "--max-p90-ms 5 --require-parity", "RECIPE": "speed"}
    assert make_variables({"MAKELEVEL": "1", "MAKEFLAGS": ""}) == {}
    assert make_variables({"MAKEFLAGS": "-- RECIPE=speed"}) is None  # not run by make


def _git(repo, *args):
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


@needs_git
def test_git_state_names_the_commit_and_whether_tracked_files_changed(tmp_path):
    repo = tmp_path / "checkout"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "a.py").write_text("x = 1\n")
    _git(repo, "add", "a.py")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "first")
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    assert git_state(repo) == {"commit": head, "dirty": False}
    (repo / "notes.txt").write_text("untracked files do not count\n")
    assert git_state(repo) == {"commit": head, "dirty": False}
    (repo / "a.py").write_text("x = 2\n")
    assert git_state(repo) == {"commit": head, "dirty": True}
    # A package folder inside someone else's repository (a venv in a project) is no checkout.
    (repo / "site-packages").mkdir()
    assert git_state(repo / "site-packages") is None


def test_git_state_outside_a_repository_is_none(tmp_path):
    assert git_state(tmp_path) is None
