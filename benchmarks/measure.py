"""Pure measurements: file sizes and latency statistics. Units are in the field names.

>>> file_size("out/pruned.tflite")
{'bytes': 28572, 'gzip_bytes': 9921}
>>> measure_latency(lambda: rt.predict(x1), min_seconds=1.0)["p50_ms"]
0.021
"""
from __future__ import annotations

import math
import time
import zlib
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from slimpipe.pipeline.errors import ConfigError

_CHUNK = 1 << 20


def file_size(path) -> dict[str, int]:
    """Size of a file, and of its gzip -9 compression (a proxy for download size).

    A directory (e.g. a SavedModel) counts all its files: bytes is their sum, gzip_bytes the
    gzip of their concatenation in sorted relative-path order.
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"cannot measure size: {path} does not exist; fix: check the path")
    files = sorted((p for p in path.rglob("*") if p.is_file()),
                   key=lambda p: p.relative_to(path).as_posix()) if path.is_dir() else [path]
    # wbits=31: gzip container (header with mtime 0, so the result is deterministic).
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    raw = packed = 0
    for f in files:
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(_CHUNK), b""):
                raw += len(chunk)
                packed += len(comp.compress(chunk))
    packed += len(comp.flush())
    return {"bytes": raw, "gzip_bytes": packed}


def measure_latency(fn: Callable[[], object], *, warmup: int = 10, min_runs: int = 50,
                    min_seconds: float = 1.0, max_runs: int = 100_000) -> dict[str, float | int]:
    """Time `fn()` MLPerf single-stream style.

    `warmup` untimed calls first; then every call is timed with perf_counter_ns (none dropped)
    until both `min_runs` calls and `min_seconds` of wall time have passed, or `max_runs` calls.
    """
    if not callable(fn):
        raise ConfigError(f"measure_latency needs a callable. Received: {type(fn).__name__}")
    _check(warmup, min_runs, min_seconds, max_runs)
    times, elapsed_ns = _time_calls(fn, warmup, min_runs, min_seconds, max_runs)
    return _stats(times, elapsed_ns, warmup=warmup, hit_max=len(times) >= max_runs
                  and elapsed_ns < int(min_seconds * 1e9))


REWARM = 2  # untimed calls after reopening a runtime in interleaved passes after the first


def interleaved_latency(jobs: Mapping[str, Callable[[], Callable[[], object]]], *, passes: int = 3,
                        warmup: int = 10, min_runs: int = 50, min_seconds: float = 1.0,
                        max_runs: int = 100_000) -> dict[str, dict[str, float | int]]:
    """measure_latency for several jobs at once, in `passes` interleaved passes, so that a drift
    of the machine's speed (other tenants, clocks) falls on every job alike instead of on the
    ones measured last: an A/B ratio then compares like with like.

    `jobs` maps a name to a function that opens what to time and returns the callable (called
    once per pass, so only one job's runtime is open at a time). Each pass times each job for
    min_seconds / passes and at least min_runs / passes calls, after `warmup` untimed calls in
    the first pass and REWARM in later ones (the reopened runtime's first calls allocate; the
    rest of a warm-up only repeated the first pass's, and at batch 32 cost as much time as the
    timed calls); the statistics pool every pass's calls, and `pass_p50_ms` gives each pass's
    own p50.
    """
    if not isinstance(passes, int) or isinstance(passes, bool) or passes < 1:
        raise ConfigError(f"interleaved_latency: passes must be an integer >= 1. Received: passes={passes!r}")
    runs_per_pass, seconds_per_pass = -(-min_runs // passes), min_seconds / passes
    max_per_pass = max(1, max_runs // passes)
    _check(warmup, runs_per_pass, seconds_per_pass, max_runs)
    times: dict[str, list[int]] = {name: [] for name in jobs}
    elapsed = dict.fromkeys(jobs, 0)
    per_pass: dict[str, list[float]] = {name: [] for name in jobs}
    for pass_index in range(passes):
        for name, open_job in jobs.items():
            fn = open_job()
            if not callable(fn):
                raise ConfigError(f"interleaved_latency: job {name!r} must return a callable. "
                                  f"Received: {type(fn).__name__}")
            calls = warmup if pass_index == 0 else min(warmup, REWARM)
            t, e = _time_calls(fn, calls, runs_per_pass, seconds_per_pass, max_per_pass)
            times[name] += t
            elapsed[name] += e
            per_pass[name].append(float(np.percentile(np.asarray(t, dtype=np.float64) / 1e6, 50)))
            del fn
    out = {}
    for name in jobs:
        stats = _stats(times[name], elapsed[name], warmup=warmup,
                       hit_max=len(times[name]) >= max_per_pass * passes
                       and elapsed[name] < int(min_seconds * 1e9))
        out[name] = {**stats, "passes": passes, "pass_p50_ms": per_pass[name]}
    return out


def _check(warmup, min_runs, min_seconds, max_runs) -> None:
    for name, value, minimum in (("warmup", warmup, 0), ("min_runs", min_runs, 1),
                                 ("max_runs", max_runs, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise ConfigError(f"measure_latency: {name} must be an integer >= {minimum}. "
                              f"Received: {name}={value!r}")
    if max_runs < min_runs:
        raise ConfigError(f"measure_latency: max_runs must be >= min_runs. "
                          f"Received: max_runs={max_runs}, min_runs={min_runs}")
    if (not isinstance(min_seconds, (int, float)) or isinstance(min_seconds, bool)
            or not math.isfinite(min_seconds) or min_seconds < 0):
        raise ConfigError(f"measure_latency: min_seconds must be a finite number >= 0. "
                          f"Received: min_seconds={min_seconds!r}")


def _time_calls(fn, warmup: int, min_runs: int, min_seconds: float, max_runs: int) -> tuple[list[int], int]:
    for _ in range(warmup):
        fn()
    min_ns = int(min_seconds * 1e9)
    times: list[int] = []
    clock = time.perf_counter_ns
    begin = clock()
    while True:
        t0 = clock()
        fn()
        t1 = clock()
        times.append(t1 - t0)
        n = len(times)
        if n >= max_runs or (n >= min_runs and t1 - begin >= min_ns):
            break
    return times, clock() - begin


def _stats(times: list[int], elapsed_ns: int, *, warmup: int, hit_max: bool) -> dict[str, float | int]:
    ms = np.asarray(times, dtype=np.float64) / 1e6
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    mean = float(ms.mean())
    std = float(ms.std(ddof=1)) if len(ms) > 1 else 0.0
    return {
        "p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99),
        "mean_ms": mean, "min_ms": float(ms.min()), "max_ms": float(ms.max()),
        "cv": std / mean if mean > 0 else 0.0,
        "runs": len(times), "warmup": warmup,
        "elapsed_s": elapsed_ns / 1e9,
        "hit_max_runs": bool(hit_max),
    }
