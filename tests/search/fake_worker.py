"""A search worker whose trials are a formula instead of a training run, for tests of the study
shared between processes: `python -m tests.search.fake_worker FOLDER TRIALS run|die`."""
import os
import sys
import time
from pathlib import Path

from slimpipe.pipeline.search.score import Score
from slimpipe.pipeline.search.space import SPACES
from slimpipe.pipeline.search.study import Heartbeat, open_study, run_trials, seed_study


def run_one(number, params):
    time.sleep(0.3)
    cost = params["sparsity"]
    drop = 0.0 if cost < 0.9 else 1.0
    return Score("f.tflite", 1 - cost, drop, drop <= 0.5, 0.9, 0.9, 100, 50, 1 - cost, None)


def main(folder: str, trials: str, mode: str) -> None:
    folder = Path(folder)
    study = open_study(folder, name="shared", seed=os.getpid(), trials=int(trials))
    if mode == "seed":  # what the process that starts a search does before its workers run
        seed_study(study, SPACES["size"])
        return
    if mode == "die":  # take a trial, then vanish as a SIGKILL would leave it: running, unfinished
        trial = study.ask()
        trial.set_user_attr("worker", f"{__import__('socket').gethostname()}-{os.getpid()}")
        SPACES["size"].suggest(trial)
        (folder / "died").write_text(str(trial.number))
        os._exit(9)
    with Heartbeat(folder):
        run_trials(study, SPACES["size"], run_one, trials=int(trials), max_drop=0.5, budget_s=None,
                   started=time.perf_counter(), folder=folder, log=print)


if __name__ == "__main__":
    main(*sys.argv[1:])
