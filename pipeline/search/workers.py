"""Search workers: `--jobs N` local processes and `slimpipe join OUT`, sharing one Optuna study.

The process that starts a search writes OUT/search/job.json (its command line, the study, the
storage) once the baseline and the sensitivity analysis are done; a worker reads it, runs the same
phases from the cache, and takes trials until the study holds `--trials` of them.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from slimpipe.pipeline.atomic import write_text_atomic
from slimpipe.pipeline.errors import ConfigError

SEARCH_DIR = "search"
JOB_FILE = "job.json"


def write_job(args, search_dir: Path, study: str) -> None:
    """What `slimpipe join OUT` needs to run trials of this search."""
    job = {"argv": list(args.argv), "study": study, "storage": args.storage,
           "threads": getattr(args, "job_threads", None)}
    write_text_atomic(search_dir / JOB_FILE, json.dumps(job, indent=1))


def run_workers(args, out: Path, search_dir: Path, study: str) -> dict[str, Any]:
    """--jobs N: N local `slimpipe join OUT` processes, each with cores / N threads; waits for them."""
    import os
    import subprocess
    import sys

    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    args.job_threads = threads
    write_job(args, search_dir, study)
    log_dir = search_dir / "workers-log"
    log_dir.mkdir(exist_ok=True)
    procs = []
    for i in range(args.jobs):
        log = open(log_dir / f"worker-{i}.log", "w")
        procs.append((subprocess.Popen([sys.executable, "-m", "slimpipe.pipeline.cli", "join", str(out)],
                                       stdout=log, stderr=subprocess.STDOUT), log))
    print(f"[slimpipe] search: {args.jobs} workers ({threads} threads each) take trials from the study; "
          f"their output: {log_dir}")
    codes = []
    for proc, log in procs:
        codes.append(proc.wait())
        log.close()
    if any(codes):
        print(f"[slimpipe] search: workers exited with codes {codes}; see {log_dir}")
    return {"workers": args.jobs, "worker_exit_codes": codes, "threads_per_worker": threads}


def join_search(out: Path) -> tuple[list[str], int | None]:
    """The command line and thread count of the search running in `out` (for `slimpipe join`)."""
    path = Path(out) / SEARCH_DIR / JOB_FILE
    if not path.is_file():
        raise ConfigError(f"no search is running in {out} (no {SEARCH_DIR}/{JOB_FILE}): start one with "
                          "`slimpipe compress --recipe auto --out OUT`, or check the folder")
    job = json.loads(path.read_text())
    argv = list(job["argv"])
    argv = [a for i, a in enumerate(argv) if a != "--jobs" and (i == 0 or argv[i - 1] != "--jobs")]
    argv += ["--out", str(out)]
    if job.get("storage"):
        argv += ["--storage", job["storage"]]
    return argv, job.get("threads")
