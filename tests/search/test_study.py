"""The Optuna study: a killed search's running trial is retried first; durations parse."""
import argparse

import pytest

from slimpipe.pipeline.search.driver import parse_duration
from slimpipe.pipeline.search.space import SPACES
from slimpipe.pipeline.search.score import Score
from slimpipe.pipeline.search.study import (finished, open_study, recover, run_trials, seed_study, started_trials,
                                            stats_since)


def fake_score(cost, drop):
    return Score("f.tflite", cost, drop, drop <= 0.5, 0.9, 0.9, 100, 50, cost, None, (("f.tflite", cost, 0.9),))


def test_trials_are_stored_and_a_second_run_reuses_them(tmp_path):
    seen = []

    def run_one(number, params):
        seen.append(params)
        return fake_score(params["sparsity"], 0.0 if params["sparsity"] < 0.8 else 1.0)

    study = open_study(tmp_path, name="s", seed=0, trials=4)
    seed_study(study, SPACES["size"])
    stats = run_trials(study, SPACES["size"], run_one, trials=3, max_drop=0.5, budget_s=None, started=0, folder=tmp_path, log=print)
    assert stats["ran"] == 3 and len(finished(study)) == 3
    assert seen[0] == SPACES["size"].start  # the search starts from a known good point
    again = open_study(tmp_path, name="s", seed=0, trials=4)
    stats = run_trials(again, SPACES["size"], run_one, trials=4, max_drop=0.5, budget_s=None, started=0, folder=tmp_path, log=print)
    assert stats == {**stats, "reused_trials": 3, "ran": 1}
    assert sorted(t.number for t in finished(again)) == [0, 1, 2, 3]
    assert all(t.user_attrs["constraint"][0] == (-0.5 if t.params["sparsity"] < 0.8 else 0.5)
               for t in finished(again))


def dead_worker() -> str:
    """The worker id of a process that has exited."""
    import socket
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return f"{socket.gethostname()}-{proc.stdout.strip()}"


def test_a_trial_left_running_is_retried_with_its_settings(tmp_path):
    study = open_study(tmp_path, name="s", seed=0, trials=3)
    trial = study.ask()
    trial.set_user_attr("worker", dead_worker())
    params = SPACES["size"].suggest(trial)  # the process dies here: the trial stays RUNNING
    again = open_study(tmp_path, name="s", seed=0, trials=3)
    assert recover(again, tmp_path) == 1
    got = []
    run_trials(again, SPACES["size"], lambda n, p: got.append(p) or fake_score(0.1, 0.0), trials=1,
               max_drop=0.5, budget_s=None, started=0, folder=tmp_path, log=print)
    assert got == [params]


def test_a_trial_just_asked_for_is_not_taken_for_a_dead_workers(tmp_path, monkeypatch):
    from slimpipe.pipeline.search import study as study_module

    study = open_study(tmp_path, name="s", seed=0, trials=3)
    study.ask()  # another worker's: it names itself in the next instant
    assert recover(study, tmp_path) == 0
    monkeypatch.setattr(study_module, "STALE_S", 0.0)  # ... or it died before it could
    assert recover(study, tmp_path) == 1


def test_no_trial_starts_after_the_time_budget(tmp_path):
    study = open_study(tmp_path, name="s", seed=0, trials=3)
    stats = run_trials(study, SPACES["size"], lambda n, p: pytest.fail("ran"), trials=3, max_drop=0.5,
                       budget_s=10, started=-100.0, folder=tmp_path, log=print)
    assert stats["ran"] == 0 and not study.trials[1:]


@pytest.mark.parametrize("text, seconds", [("30m", 1800), ("1h", 3600), ("1h30m", 5400), ("90s", 90),
                                           ("45", 45), ("0.5h", 1800)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "30 minutes", "m"])
def test_bad_durations(text):
    with pytest.raises(argparse.ArgumentTypeError):
        parse_duration(text)


def _workers(tmp_path, trials, *modes):
    import subprocess
    import sys

    procs = [subprocess.Popen([sys.executable, "-m", "tests.search.fake_worker", str(tmp_path), str(trials), m])
             for m in modes]
    return [p.wait(timeout=120) for p in procs]


def test_two_workers_share_one_study(tmp_path):
    from slimpipe.pipeline.search.study import best, trial_records

    assert _workers(tmp_path, 8, "seed") == [0]
    before = started_trials(open_study(tmp_path, name="shared", seed=0, trials=8))
    assert before == set()  # the starting point is queued, not started
    assert _workers(tmp_path, 8, "run", "run") == [0, 0]
    study = open_study(tmp_path, name="shared", seed=0, trials=8)
    stats = stats_since(study, before)
    assert (stats["ran"], stats["failed"], stats["retried"], stats["reused_trials"]) == (8, 0, 0, 0)
    assert stats["seconds_per_trial"] >= 0.3  # each fake trial sleeps 0.3 s
    done = finished(study)
    assert len(done) == 8 and len({t.number for t in done}) == 8  # the count, numbers unique
    assert len({t.user_attrs["worker"] for t in done}) == 2  # both workers ran trials
    assert not (tmp_path / "workers").exists() or not any((tmp_path / "workers").iterdir())
    chosen = best(trial_records(study))
    assert chosen["feasible"] and chosen["params"]["sparsity"] < 0.9
    params = [tuple(sorted(t.params.items())) for t in done]
    assert len(set(params)) == len(params)  # the starting point was queued once


def test_a_killed_workers_trial_is_retried_by_another(tmp_path):
    assert _workers(tmp_path, 3, "die") == [9]
    lost = int((tmp_path / "died").read_text())
    before = started_trials(open_study(tmp_path, name="shared", seed=0, trials=3))
    assert before == {lost}
    assert _workers(tmp_path, 3, "run") == [0]
    study = open_study(tmp_path, name="shared", seed=0, trials=3)
    stats = stats_since(study, before)
    assert (stats["ran"], stats["failed"], stats["retried"], stats["reused_trials"]) == (3, 0, 1, 0)
    trials = {t.number: t for t in study.trials}
    assert trials[lost].state.name == "FAIL"
    retry = [t for t in finished(study) if t.user_attrs.get("retry_of") == lost]
    assert len(retry) == 1 and retry[0].params == trials[lost].params
    assert len(finished(study)) == 3
