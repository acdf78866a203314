"""measure_latency, interleaved_latency and file_size."""
import gzip
import time
from types import SimpleNamespace

import pytest

from slimpipe.benchmarks import measure
from slimpipe.benchmarks.measure import REWARM, file_size, interleaved_latency, measure_latency
from slimpipe.pipeline.errors import ConfigError


def test_latency_runs_until_both_minimums_and_times_every_call():
    calls = []

    def fn():
        calls.append(1)
        time.sleep(0.0005 if len(calls) % 10 else 0.003)  # a slow call every tenth

    start = time.perf_counter()
    res = measure_latency(fn, warmup=3, min_runs=20, min_seconds=0.05)
    elapsed = time.perf_counter() - start
    assert res["runs"] >= 20 and res["warmup"] == 3
    assert len(calls) == res["warmup"] + res["runs"]
    assert elapsed >= 0.05 and res["elapsed_s"] >= 0.05
    assert res["min_ms"] <= res["p50_ms"] <= res["p90_ms"] <= res["p99_ms"] <= res["max_ms"]
    assert res["min_ms"] >= 0.5 and res["p99_ms"] >= 2.5  # the slow calls were not dropped
    assert res["cv"] > 0.1
    assert res["mean_ms"] * res["runs"] / 1000 <= res["elapsed_s"]


def test_latency_min_runs_dominates_when_calls_are_fast():
    calls = []
    res = measure_latency(lambda: calls.append(1), warmup=0, min_runs=37, min_seconds=0.0)
    assert res["runs"] == 37 and len(calls) == 37 and res["warmup"] == 0


def test_latency_stops_at_max_runs():
    res = measure_latency(lambda: None, warmup=1, min_runs=5, min_seconds=60.0, max_runs=200)
    assert res["runs"] == 200 and res["hit_max_runs"] is True


@pytest.mark.parametrize("kwargs", [
    {"warmup": -1}, {"min_runs": 0}, {"min_seconds": -0.1}, {"min_seconds": float("nan")},
    {"max_runs": 10, "min_runs": 20}, {"min_runs": 2.5}, {"warmup": True},
])
def test_latency_rejects_bad_arguments(kwargs):
    calls = []
    with pytest.raises(ConfigError):
        measure_latency(lambda: calls.append(1), **kwargs)
    assert calls == []
    with pytest.raises(ConfigError, match="callable"):
        measure_latency(None)


def test_file_size_of_zeros_and_of_a_directory(tmp_path):
    zeros = tmp_path / "zeros.bin"
    zeros.write_bytes(bytes(100_000))
    size = file_size(zeros)
    assert size["bytes"] == 100_000 and size["gzip_bytes"] < 1_000
    assert size["gzip_bytes"] == len(gzip.compress(bytes(100_000), compresslevel=9, mtime=0))

    folder = tmp_path / "saved"
    (folder / "variables").mkdir(parents=True)
    (folder / "b.bin").write_bytes(b"b" * 10)
    (folder / "variables" / "a.bin").write_bytes(b"a" * 20)
    res = file_size(folder)
    assert res["bytes"] == 30
    # concatenation in sorted relative-path order: b.bin, then variables/a.bin
    assert res["gzip_bytes"] == len(gzip.compress(b"b" * 10 + b"a" * 20, compresslevel=9, mtime=0))
    with pytest.raises(ConfigError, match="does not exist"):
        file_size(tmp_path / "missing")


def _drifting_machine(monkeypatch, after_calls: int):
    """Identical jobs on a machine that gets 3x slower after `after_calls` calls in all.

    The clock is virtual (each call advances it by 0.2 ms, later 0.6 ms): with real sleeps the
    pooled p50 of 20 fast and 20 slow calls sat on the scheduler's jitter and failed in CI.
    """
    calls, now = [], [0]
    monkeypatch.setattr(measure, "time", SimpleNamespace(perf_counter_ns=lambda: now[0]))

    def open_job(name):
        def job():
            calls.append(name)
            now[0] += 600_000 if len(calls) > after_calls else 200_000
        return job
    return calls, open_job


def test_interleaved_passes_spread_a_drift_over_every_job(monkeypatch):
    calls, open_job = _drifting_machine(monkeypatch, after_calls=40)
    seq = {n: measure_latency(open_job(n), warmup=0, min_runs=40, min_seconds=0.0) for n in "ab"}
    assert seq["a"]["p50_ms"] == pytest.approx(0.2) and seq["b"]["p50_ms"] == pytest.approx(0.6)

    calls, open_job = _drifting_machine(monkeypatch, after_calls=40)
    opened = []
    jobs = {n: (lambda n=n: opened.append(n) or open_job(n)) for n in "ab"}
    res = interleaved_latency(jobs, passes=4, warmup=0, min_runs=40, min_seconds=0.0)
    assert opened == list("abababab") and calls == [c for c in "ab" * 4 for _ in range(10)]
    assert all(r["runs"] == 40 and r["passes"] == 4 and len(r["pass_p50_ms"]) == 4 for r in res.values())
    # each job: 20 fast calls and 20 slow ones, so equal p50s (one after the other: 0.2 vs 0.6)
    assert res["a"]["p50_ms"] == pytest.approx(0.4) and res["b"]["p50_ms"] == pytest.approx(0.4)
    for name in "ab":  # the drift is on record
        assert res[name]["pass_p50_ms"] == pytest.approx([0.2, 0.2, 0.6, 0.6])


def test_interleaved_latency_rejects_bad_passes_and_jobs():
    with pytest.raises(ConfigError, match="passes must be an integer >= 1"):
        interleaved_latency({"a": lambda: (lambda: None)}, passes=0)
    with pytest.raises(ConfigError, match="job 'a' must return a callable"):
        interleaved_latency({"a": lambda: None}, passes=1, min_runs=1, min_seconds=0.0)


def test_interleaved_latency_warms_up_fully_in_the_first_pass_only():
    opened = []

    def open_job():
        calls = [0]
        opened.append(calls)

        def call():
            calls[0] += 1
        return call

    res = interleaved_latency({"a": open_job}, passes=3, warmup=5, min_runs=3, min_seconds=0.0)
    # untimed + 1 timed call per pass: the full warm-up once, then REWARM after each reopening
    assert [c[0] for c in opened] == [5 + 1, REWARM + 1, REWARM + 1]
    assert res["a"]["runs"] == 3 and res["a"]["warmup"] == 5
