"""The bundle stage: one bundle per deployable file after the benchmark, checked before anything
runs, byte-identical from run to run, and skipping files whose parity failed."""
import dataclasses
import hashlib
import json
import zipfile

import pytest

from slimpipe.pipeline.context import RunContext
from slimpipe.pipeline.errors import ConfigError
from slimpipe.pipeline.recipe import Recipe, Step, build_recipe
from slimpipe.pipeline.runner import run_recipe, save_source
from slimpipe.stages import STAGES
from slimpipe.stages.benchmark import Benchmark
from slimpipe.stages.bundle import Bundle
from slimpipe.stages.export import Export
from slimpipe.pipeline.runner import run_stage
from tests.conftest import make_tiny_model

QUICK_BENCH = Benchmark(latency=((1, 1),), warmup=1, min_runs=2, min_seconds=0.0,
                        sparse_kernels=False)
RECIPE = Recipe("b", (Step("export", Export(parity_samples=32)), Step("benchmark", QUICK_BENCH),
                      Step("bundle", Bundle())))


def _run(out, tiny_data, recipe=RECIPE):
    import tf_keras as keras

    # Keras names layers from a per-process counter ("input_1", then "input_2"); the CLI builds
    # one model per process, and this resets the counter to do the same.
    keras.backend.clear_session()
    ctx = RunContext(data=tiny_data, out_dir=out, model_name="tiny")
    source = save_source(ctx, make_tiny_model(), spec="tiny", width=1.0, trained=True)
    run_recipe(recipe, source, ctx, log=lambda s: None)
    return ctx


def _tree(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".slimpipe-stage.json"}


@pytest.fixture(scope="module")
def first(tmp_path_factory, tiny_data):
    out = tmp_path_factory.mktemp("first")
    return out, _run(out, tiny_data)


def test_a_bundle_per_deployable_file_with_measured_accuracy(first):
    out, ctx = first
    folder = out / "03-bundle"
    index = json.loads((folder / "bundles.json").read_text())
    files = [a for a in ctx.artifacts if a.format in ("tflite", "onnx")]
    assert files and sorted(index["bundles"]) == sorted(a.name for a in files)
    for art in files:
        entry = index["bundles"][art.name]
        meta = json.loads((folder / art.name / "metadata.json").read_text())
        assert meta["sha256"] == art.sha256 == entry["sha256"]
        assert meta["accuracy"]["top1"] == ctx.measurements[art.name]["accuracy"] == entry["accuracy"]
        assert [r["name"] for r in meta["lineage"]] == [art.name, "source"]
        with zipfile.ZipFile(folder / entry["zip"]) as zf:
            assert f"{art.name}/MANIFEST.json" in zf.namelist()
    assert any(n.startswith("bundle: 2 edge bundles in 03-bundle/") for n in ctx.notes)
    assert not list(out.glob(".*.tmp"))


def test_bundles_are_byte_identical_across_runs_and_reused_with_their_note(first, tiny_data, tmp_path):
    out, ctx = first
    other = _run(tmp_path / "second", tiny_data)  # a separate run folder, same model and seed
    assert _tree(tmp_path / "second" / "03-bundle") == _tree(out / "03-bundle")
    again = _run(out, tiny_data)  # the same folder: every step is reused, the note comes back
    assert [t["reused"] for t in again.stage_timings] == [True, True, True]
    assert again.stage_timings[2]["ran_seconds"] is not None
    assert [n for n in again.notes if n.startswith("bundle:")] == [
        n for n in other.notes if n.startswith("bundle:")]


def test_failed_parity_is_skipped_with_a_note(first, tiny_data, tmp_path):
    _, ctx = first
    bad = next(a for a in ctx.artifacts if a.format == "onnx")
    broken = dataclasses.replace(bad, meta={**bad.meta, "validation": {
        "passed": False, "max_abs_diff": 0.5, "atol": 1e-4}})
    run = RunContext(data=tiny_data, out_dir=tmp_path, baseline=ctx.baseline,
                     artifacts=[broken if a is bad else a for a in ctx.artifacts],
                     measurements=dict(ctx.measurements), stage_dir=tmp_path / "bundle")
    assert run_stage(Bundle(zip=False), ctx.find("source"), run) == []
    index = json.loads((tmp_path / "bundle" / "bundles.json").read_text())
    assert bad.name not in index["bundles"] and index["skipped"] == {
        bad.name: "export validation failed"}
    assert any(f"skipped '{bad.name}'" in n for n in run.notes)
    assert not list((tmp_path / "bundle").glob("*.zip"))


def test_without_measurements_it_says_to_put_bundle_after_benchmark(first, tiny_data, tmp_path):
    _, ctx = first
    run = RunContext(data=tiny_data, out_dir=tmp_path, artifacts=list(ctx.artifacts),
                     baseline=ctx.baseline, stage_dir=tmp_path / "bundle")
    with pytest.raises(ConfigError, match="put 'bundle' after 'benchmark'"):
        run_stage(Bundle(), ctx.find("source"), run)


def test_recipe_without_an_earlier_benchmark_fails_before_anything_runs():
    steps = [{"stage": "export"}, {"stage": "bundle"}, {"stage": "benchmark"}]
    with pytest.raises(ConfigError, match=r"step 2 'bundle' needs a 'benchmark' step before it"):
        build_recipe({"stages": steps}, STAGES)
    assert [s.name for s in build_recipe({"stages": [steps[0], steps[2], steps[1]]}, STAGES)] == [
        "export", "benchmark", "bundle"]


@pytest.mark.parametrize("params, match", [
    ({"zip": "yes"}, "zip must be true or false"),
    ({"embed_metadata": 1}, "embed_metadata must be true or false"),
    ({"formats": ("tflite", "h5")}, "formats must be a non-empty subset"),
    ({"formats": ()}, "formats must be a non-empty subset"),
])
def test_bad_parameters(params, match):
    with pytest.raises(ConfigError, match=match):
        Bundle(**params)
