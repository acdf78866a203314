"""pytest-benchmark suite: each runtime's inference of the default recipe's artifacts.

    make bench                                   # builds the default artifacts on a slice first
    SLIMPIPE_BENCH_RUN=runs/cnn-fashion_mnist make bench   # or times an existing run's files

Every case opens its file with `benchmarks.runtimes.open_runtime` (as the benchmark stage does)
and times `runtime.predict` on real test images, with pytest-benchmark's timer; the same
callable also goes through `benchmarks.measure.measure_latency`, whose p50/p90/p99, cv and the
runtime's load time land in each case's `extra_info` (`--benchmark-json` keeps them). Cases
cover Keras, LiteRT (XNNPACK) and onnxruntime at 1 thread and all cores, batch 1 and 32.

`make test` does not collect this file (pytest's testpaths is tests/); `make bench` does.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest

from slimpipe.benchmarks.measure import measure_latency
from slimpipe.benchmarks.runtimes import open_runtime
from slimpipe.pipeline.recipe import build_recipe, read_recipe_file
from slimpipe.pipeline.recipe_toml import dumps_recipe

RUN_ENV = "SLIMPIPE_BENCH_RUN"
LIMIT = 2000  # training examples for the artifacts built here: timing needs no accuracy
THREADS = (1, 0)  # 0 = all cores
BATCHES = (1, 32)
STABLE = 0.05  # two back-to-back p50s of one artifact agree within 5%
# int8 files of one-epoch models on a slice agree less with Keras than trained ones do; the
# check still catches a broken conversion (chance is 1 / classes).
MIN_AGREEMENT = 0.5


def bench_recipe() -> dict:
    """The default recipe as data, without 'benchmark' and the steps that need its measurements
    ('bundle'), with at most one epoch per training step and int8 agreement checked at
    MIN_AGREEMENT: what this suite times needs no accuracy. Validated like any recipe."""
    from slimpipe.stages import STAGES

    _, data = read_recipe_file("default")
    stages = []
    for stage in data["stages"]:
        cls = STAGES[stage["stage"]]
        if cls.name == "benchmark" or "benchmark" in getattr(cls, "requires", ()):
            continue
        stage = {k: min(v, 1) if k.endswith("epochs") else v for k, v in stage.items()}
        if "min_agreement" in {f.name for f in dataclasses.fields(cls)}:
            stage["min_agreement"] = MIN_AGREEMENT
        stages.append(stage)
    recipe = {**data, "name": "bench", "stages": stages}
    recipe.pop("gate", None)
    build_recipe(recipe, STAGES)
    return recipe


def build_default_run(out: Path, limit: int = LIMIT) -> Path:
    """Run `bench_recipe()` on `limit` training examples into `out` (through the CLI, as a
    user would) and return `out`; the recipe file is written next to it."""
    from slimpipe.pipeline.cli import main

    recipe = out.parent / "bench.toml"
    recipe.write_text(dumps_recipe(bench_recipe()))
    code = main(["compress", "--recipe", str(recipe), "--limit", str(limit), "--out", str(out)])
    assert code == 0, f"building the default artifacts failed (exit {code})"
    return out


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory) -> Path:
    given = os.environ.get(RUN_ENV)
    if given:
        if not (Path(given) / "report.json").is_file():
            pytest.fail(f"{RUN_ENV}={given!r}: expected a slimpipe run folder with report.json")
        return Path(given)
    os.environ.setdefault("SLIMPIPE_QUIET", "1")
    return build_default_run(tmp_path_factory.mktemp("bench") / "run")


@pytest.fixture(scope="session")
def artifacts(run_dir) -> dict[str, dict]:
    report = json.loads((run_dir / "report.json").read_text())
    return {"report": report, "rows": [
        {**r, "path": run_dir / r["path"]} for r in report["artifacts"]
        if r["kind"] in ("keras", "tflite", "onnx") and r["format"] == r["kind"]]}


@pytest.fixture(scope="session")
def images(artifacts) -> np.ndarray:
    from slimpipe.pipeline.data import load_dataset

    data = load_dataset(artifacts["report"]["dataset"], limit=64)
    return np.ascontiguousarray(data.x_test[: max(BATCHES)], dtype=np.float32)


def _pick(artifacts, fmt: str, which: str) -> dict:
    """'baseline': the dense baseline (or its export); 'compressed': the last one of that format."""
    base = artifacts["report"]["baseline"]
    rows = [r for r in artifacts["rows"] if r["format"] == fmt]
    if which == "baseline":
        rows = [r for r in rows if r["name"] == base or r["parent"] == base]
    if not rows:
        pytest.skip(f"no {which} {fmt} artifact in this run")
    return rows[0] if which == "baseline" else rows[-1]


CASES = [(fmt, which, threads, batch)
         for fmt in ("keras", "tflite", "onnx") for which in ("baseline", "compressed")
         for threads in (THREADS if fmt != "keras" else (0,)) for batch in BATCHES]


@pytest.mark.parametrize("fmt, which, threads, batch", CASES,
                         ids=[f"{f}-{w}-{'all' if t == 0 else t}thr-b{b}" for f, w, t, b in CASES])
def test_inference(benchmark, artifacts, images, fmt, which, threads, batch):
    row = _pick(artifacts, fmt, which)
    runtime = open_runtime(row["path"], fmt, threads=threads)
    x = images[:batch]
    out = runtime.predict(x)
    assert out.shape[0] == batch and np.all(np.isfinite(out))
    stats = measure_latency(lambda: runtime.predict(x), warmup=10, min_runs=50, min_seconds=0.5)
    benchmark.extra_info.update(artifact=row["name"], runtime=runtime.runtime, engine=runtime.delegate,
                                threads=runtime.threads or os.cpu_count(), batch=batch,
                                load_ms=round(runtime.load_ms, 3),
                                **{k: stats[k] for k in ("p50_ms", "p90_ms", "p99_ms", "cv", "runs")})
    benchmark.pedantic(runtime.predict, args=(x,), warmup_rounds=10, rounds=max(20, min(stats["runs"], 500)))


def test_back_to_back_p50_agree_within_5_percent(benchmark, artifacts, images):
    """Two consecutive measure_latency calls on the same file, LiteRT at 1 thread, batch 1,
    agree within 5% at p50. Needs a quiet machine: other load shows up here first."""
    row = _pick(artifacts, "tflite", "baseline")
    runtime = open_runtime(row["path"], "tflite", threads=1)
    x = images[:1]

    def twice():
        return [measure_latency(lambda: runtime.predict(x), warmup=50, min_runs=200, min_seconds=2.0)
                for _ in range(2)]

    first, second = benchmark.pedantic(twice, rounds=1, iterations=1)
    gap = abs(first["p50_ms"] - second["p50_ms"]) / min(first["p50_ms"], second["p50_ms"])
    benchmark.extra_info.update(artifact=row["name"], p50_ms=[first["p50_ms"], second["p50_ms"]],
                                cv=[first["cv"], second["cv"]], relative_gap=round(gap, 4))
    assert gap <= STABLE, (f"{row['name']}: back-to-back p50s {first['p50_ms']:.4f} and "
                           f"{second['p50_ms']:.4f} ms differ by {gap:.1%} (> {STABLE:.0%}); "
                           "is something else running on this machine?")
