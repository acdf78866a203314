"""The search's Optuna study: stored in a journal file (or any Optuna storage URL), so a killed
search resumes, a second run with the same settings reuses every finished trial, and several
worker processes, on one machine or on many with a shared folder or database, take trials from
one study.

>>> study = open_study(out / "search", name="auto-size-1a2b3c", seed=0, trials=12)
>>> run_trials(study, SPACES["size"], run_one, trials=12, budget_s=1800, log=print)

Optuna's TPE sampler suggests each trial's settings; its `constraints_func` reads the trial's
accuracy constraint (points lost minus the budget: feasible at <= 0), so it learns where the
budget holds. A trial that was running when the search was killed is marked failed and its
settings are tried again first (its finished steps come back from the runner's cache).
"""
from __future__ import annotations

import math
import os
import socket
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from slimpipe.pipeline.errors import SlimpipeError

STUDY_FILE = "study.log"
STALE_S = 180.0  # a heartbeat older than this: the worker is gone
BEAT_S = 15.0


def worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Heartbeat:
    """Touch FOLDER/workers/HOST-PID every BEAT_S seconds while the `with` block runs."""

    def __init__(self, folder: Path):
        self.path = folder / "workers" / worker_id()
        self._stop = threading.Event()

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch()
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._thread.start()
        return self

    def _beat(self):
        while not self._stop.wait(BEAT_S):
            self.path.touch()

    def __exit__(self, *exc):
        self._stop.set()
        self.path.unlink(missing_ok=True)


def _alive(folder: Path, trial) -> bool:
    """Whether the worker that owns a running trial is still there. A trial that names no worker
    yet has just been asked for (its worker names itself next): alive while it is young."""
    worker = trial.user_attrs.get("worker")
    if not worker:
        started = trial.datetime_start
        return started is not None and (datetime.now() - started).total_seconds() < STALE_S
    host, _, pid = worker.rpartition("-")
    if host == socket.gethostname():
        try:
            os.kill(int(pid), 0)
        except (ProcessLookupError, ValueError):
            return False
        except PermissionError:
            return True
        return True
    beat = folder / "workers" / worker
    return beat.exists() and time.time() - beat.stat().st_mtime < STALE_S


def _constraints(trial) -> list[float]:
    return list(trial.user_attrs.get("constraint", [math.inf]))


def open_study(folder: Path, *, name: str, seed: int, trials: int, storage: str | None = None):
    """The study `name` in `storage` (an Optuna storage URL), or in FOLDER/study.log."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    import warnings

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    folder.mkdir(parents=True, exist_ok=True)
    if storage is None:
        storage = JournalStorage(JournalFileBackend(str(folder / STUDY_FILE)))
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, min(5, trials // 3)),
                                         multivariate=True, constraints_func=_constraints)
    return optuna.create_study(study_name=name, storage=storage, sampler=sampler,
                               direction="minimize", load_if_exists=True)


def recover(study, folder: Path) -> int:
    """Mark trials left running by a worker that is gone failed and queue their settings again."""
    from optuna.trial import TrialState

    stale = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
             if not _alive(folder, t)]
    for trial in stale:
        study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
        if trial.params:
            study.enqueue_trial(dict(trial.params), user_attrs={"retry_of": trial.number})
    return len(stale)


def seed_study(study, space) -> None:
    """Queue the objective's known good starting point in a new study (by the one process that
    starts the search, before any worker runs: two workers would queue it twice)."""
    if not study.trials:
        study.enqueue_trial(dict(space.start))


def wait_idle(study, folder: Path, *, poll_s: float = 5.0) -> None:
    """Return once no trial is running (trials of workers that are gone are failed and queued)."""
    from optuna.trial import TrialState

    while True:
        recover(study, folder)
        if not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            return
        time.sleep(poll_s)


def finished(study) -> list:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def started_trials(study) -> set[int]:
    """The numbers of the study's trials that have started (a queued trial has not)."""
    from optuna.trial import TrialState

    return {t.number for t in study.get_trials(deepcopy=False) if t.state != TrialState.WAITING}


def stats_since(study, before: set[int]) -> dict[str, Any]:
    """What the workers did to the study since `before` (`started_trials`), in the terms
    `run_trials` reports for one process."""
    from optuna.trial import TrialState

    new = [t for t in study.get_trials(deepcopy=False) if t.number not in before]
    done = [t for t in new if t.state == TrialState.COMPLETE]
    seconds = [t.user_attrs["seconds"] for t in done if "seconds" in t.user_attrs]
    return {"reused_trials": sum(1 for t in finished(study) if t.number in before),
            "retried": sum(1 for t in new if "retry_of" in t.user_attrs),
            "failed": sum(1 for t in new if t.state == TrialState.FAIL), "ran": len(done),
            "seconds_per_trial": round(sum(seconds) / len(seconds), 1) if seconds else None}


def run_trials(study, space, run_one: Callable[[int, dict[str, Any]], Any], *, trials: int,
               max_drop: float, budget_s: float | None, started: float, folder: Path,
               log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run trials until `trials` have finished or are running in the study (other workers' and
    earlier runs' count) or no trial fits in the time left; returns what happened here."""
    from optuna.trial import TrialState

    retried, seconds, attempts, failed = 0, [], 0, 0
    reused = len(finished(study))
    while attempts < 2 * trials:
        retried += recover(study, folder)
        taken = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
        if len(taken) >= trials:
            break
        spent = time.perf_counter() - started
        expected = sum(seconds) / len(seconds) if seconds else 0.0
        if budget_s is not None and spent + expected > budget_s:
            log(f"[slimpipe] search: time budget reached after {spent:.0f} s "
                f"({len(finished(study))} trials finished)")
            break
        attempts += 1
        trial = study.ask()
        trial.set_user_attr("worker", worker_id())
        params = space.suggest(trial)
        t0 = time.perf_counter()
        try:
            result = run_one(trial.number, params)
        except SlimpipeError as exc:
            failed += 1
            _record(study, trial, log, {"error": str(exc)}, state=TrialState.FAIL)
            log(f"[slimpipe] search: trial {trial.number} failed: {exc}")
            continue
        took = time.perf_counter() - t0
        seconds.append(took)
        attrs = {"score": result.record(), "seconds": round(took, 1),
                 "constraint": [math.inf if result.drop is None else result.drop - max_drop]}
        if result.cost is None:
            failed += 1
            _record(study, trial, log, attrs, state=TrialState.FAIL)
        else:
            _record(study, trial, log, attrs, value=result.cost)
    return {"reused_trials": reused, "retried": retried, "failed": failed, "ran": len(seconds),
            "seconds_per_trial": round(sum(seconds) / len(seconds), 1) if seconds else None}


def _record(study, trial, log, attrs: dict[str, Any], *, value: float | None = None, state=None) -> None:
    """Store a trial's result; a trial another worker has meanwhile failed (it took this worker
    for gone) keeps that state, and its settings run again from the queue."""
    from optuna.exceptions import UpdateFinishedTrialError

    try:
        for key, item in attrs.items():
            trial.set_user_attr(key, item)
        study.tell(trial, value, state=state)
    except UpdateFinishedTrialError:
        log(f"[slimpipe] search: trial {trial.number} was meanwhile marked failed by another worker "
            "(this one's heartbeat looked stale); its result is dropped")


def trial_records(study) -> list[dict[str, Any]]:
    """Every finished trial: number, settings, score, seconds."""
    out = []
    for t in finished(study):
        score = t.user_attrs.get("score") or {}
        out.append({"number": t.number, "params": dict(t.params), "seconds": t.user_attrs.get("seconds"),
                    "worker": t.user_attrs.get("worker"),
                    **{k: score.get(k) for k in ("file", "cost", "drop", "feasible", "accuracy",
                                                 "baseline_accuracy", "bytes", "gzip_bytes",
                                                 "size_ratio", "latency_ratio", "points")}})
    return out


def best(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The trial to confirm: the lowest cost within the budget (on validation), or with none
    within it, the one that lost the least accuracy."""
    scored = [r for r in records if r.get("cost") is not None and r.get("drop") is not None]
    within = [r for r in scored if r["feasible"]]
    if within:
        return min(within, key=lambda r: (r["cost"], r["drop"], r["number"]))
    return min(scored, key=lambda r: (r["drop"], r["cost"], r["number"])) if scored else None
