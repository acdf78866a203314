"""`make bench` builds its artifacts from the default recipe: that build must keep working."""
import json
import os
import tomllib
from pathlib import Path

import pytest

from slimpipe.benchmarks.bench_runtimes import bench_recipe, build_default_run
from slimpipe.pipeline.recipe import load_recipe, read_recipe_file
from slimpipe.pipeline.recipe_toml import dumps_recipe
from slimpipe.stages import STAGES
from tests.test_cli import needs_fashion


def test_bench_recipe_is_the_default_without_measurements_and_one_epoch_at_most():
    recipe = bench_recipe()
    default = read_recipe_file("default")[1]
    kept = [s for s in default["stages"] if s["stage"] not in ("benchmark", "bundle")]
    assert [s["stage"] for s in recipe["stages"]] == [s["stage"] for s in kept]
    for mine, theirs in zip(recipe["stages"], kept):
        for key, value in theirs.items():
            if key.endswith("epochs"):
                assert mine[key] == min(value, 1)
            elif key != "min_agreement":
                assert mine[key] == value, key
    assert "gate" not in recipe


def test_the_written_bench_recipe_loads_as_the_cli_loads_it(tmp_path):
    path = tmp_path / "bench.toml"
    path.write_text(dumps_recipe(bench_recipe()))
    recipe = load_recipe(path, STAGES)
    assert recipe.name == "bench"
    prune = next(step.stage for step in recipe if step.name == "prune")
    default = load_recipe("default", STAGES)
    shipped = next(step.stage for step in default if step.name == "prune")
    assert prune.layer_sparsity == shipped.layer_sparsity
    assert dict(prune.layer_sparsity)["@share:0.5"] == 0.97


@pytest.mark.slow
@needs_fashion
def test_bench_build_runs_the_default_chain_on_a_slice(tmp_path, monkeypatch):
    monkeypatch.setenv("SLIMPIPE_QUIET", "1")
    out = build_default_run(tmp_path / "run", limit=300)
    written = tomllib.loads((tmp_path / "bench.toml").read_text())
    assert written == json.loads(json.dumps(bench_recipe()))  # tuples read back as lists
    report = json.loads((out / "report.json").read_text())
    rows = {r["name"]: r for r in report["artifacts"]}
    # What the suite times: the baseline and a compressed file in each of its formats.
    for name in ("trained", "trained.tflite", "trained.onnx", "structured.dynamic.tflite",
                 "clustered.pcqat.per-tensor.sparse.tflite"):
        assert name in rows, sorted(rows)
        assert (out / rows[name]["path"]).exists()
    assert {r["format"] for r in rows.values()} == {"keras", "tflite", "onnx"}
    small, dense = (os.path.getsize(out / rows[n]["path"])
                    for n in ("clustered.pcqat.per-tensor.sparse.tflite", "trained.tflite"))
    assert small < dense / 4  # pruned, clustered, int8 and stored sparse
