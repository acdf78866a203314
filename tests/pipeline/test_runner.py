"""The runner: folder layout, atomic stage folders, error wrapping, current-artifact flow."""
from dataclasses import dataclass
from typing import ClassVar

import pytest

from slimpipe.pipeline.errors import ConfigError, StageError
from slimpipe.pipeline.recipe import Recipe, Step
from slimpipe.pipeline.runner import run_recipe, save_source


@dataclass(frozen=True)
class Double:
    """Scales every weight by 2 (on a copy) and hands the result on."""
    name: ClassVar[str] = "double"
    accepts: ClassVar[tuple] = ("keras",)
    produces: ClassVar = "keras"
    label: str = "doubled"

    def run(self, art, ctx):
        from slimpipe.pipeline.kerasio import clone_with_weights
        model = clone_with_weights(ctx.keras_model(art))
        model.set_weights([w * 2 for w in model.get_weights()])
        return [ctx.save_model(self, model, self.label, parent=art, kind="keras")]


@dataclass(frozen=True)
class Leaf:
    """Writes a side file and leaves the current artifact unchanged."""
    name: ClassVar[str] = "leaf"
    accepts: ClassVar[tuple] = ("keras",)
    produces: ClassVar = None
    seen: list = None

    def run(self, art, ctx):
        self.seen.append(art.name)
        ctx.stage_path("side.txt").write_text("x")
        return []


@dataclass(frozen=True)
class Boom:
    name: ClassVar[str] = "boom"
    accepts: ClassVar[tuple] = ("keras",)
    produces: ClassVar = None
    error: str = "runtime"

    def run(self, art, ctx):
        ctx.stage_path("half-written.h5").write_text("partial")
        raise {"runtime": RuntimeError, "config": ConfigError}[self.error]("it broke")


def _source(ctx, tiny_model):
    ctx.stage_dir = None
    return save_source(ctx, tiny_model, spec="tiny", width=1.0, trained=False)


def test_steps_write_numbered_folders_and_pass_current_on(ctx, tiny_model):
    seen = []
    recipe = Recipe("t", (Step("a", Double("a1")), Step("side", Leaf(seen)), Step("b", Double("b1"))))
    source = _source(ctx, tiny_model)
    final = run_recipe(recipe, source, ctx, log=lambda s: None)
    assert (ctx.out_dir / "00-source" / "source.h5").is_file()
    assert (ctx.out_dir / "01-a" / "a1.h5").is_file()
    assert (ctx.out_dir / "02-side" / "side.txt").is_file()
    assert seen == ["a1"]  # the leaf stage got the current artifact
    assert final.name == "b1" and final.parent == "a1"
    assert final.path == ctx.out_dir / "03-b" / "b1.h5"
    assert [a.name for a in ctx.artifacts] == ["source", "a1", "b1"]
    assert not list(ctx.out_dir.glob(".*.tmp"))
    assert [t["name"] for t in ctx.stage_timings] == ["a", "side", "b"]
    # the input model was not mutated by the stage that doubled its copy
    src_w = ctx.keras_model(source).get_weights()[0]
    out_w = ctx.keras_model(final).get_weights()[0]
    assert abs(out_w - 4 * src_w).max() < 1e-6


def test_failure_wraps_with_context_and_leaves_no_folder(ctx, tiny_model):
    source = _source(ctx, tiny_model)
    with pytest.raises(StageError, match=r"stage 'explode' failed on artifact [0-9a-f]{8} \('source'\): RuntimeError: it broke"):
        run_recipe(Recipe("t", (Step("explode", Boom()),)), source, ctx, log=lambda s: None)
    assert not (ctx.out_dir / "01-explode").exists()
    assert not list(ctx.out_dir.glob(".01-*"))


def test_config_errors_pass_through_unwrapped(ctx, tiny_model):
    source = _source(ctx, tiny_model)
    with pytest.raises(ConfigError, match="it broke"):
        run_recipe(Recipe("t", (Step("explode", Boom("config")),)), source, ctx, log=lambda s: None)


def test_progress_lines_name_each_step(ctx, tiny_model):
    lines = []
    run_recipe(Recipe("t", (Step("a", Double()),)), _source(ctx, tiny_model), ctx, log=lines.append)
    assert lines[0] == "[slimpipe] (1 of 1) a on 'source'"
    assert lines[1].startswith("[slimpipe] (1 of 1) a done in ") and lines[1].endswith(": doubled")


def test_recipe_slicing_keeps_order(ctx):
    recipe = Recipe("t", (Step("a", Double()), Step("b", Double()), Step("c", Double())))
    assert [s.name for s in recipe[:2]] == ["a", "b"]
    assert recipe[2].name == "c"


def _fresh(ctx):
    from slimpipe.pipeline.context import RunContext
    return RunContext(data=ctx.data, out_dir=ctx.out_dir, model_name="tiny")


def test_rerun_reuses_finished_steps_and_reruns_changed_ones(ctx, tiny_model):
    recipe = Recipe("t", (Step("a", Double("a1")), Step("b", Double("b1"))))
    run_recipe(recipe, _source(ctx, tiny_model), ctx, log=lambda s: None)
    first = {a.name: a.sha256 for a in ctx.artifacts}

    again = _fresh(ctx)
    run_recipe(recipe, save_source(again, tiny_model, spec="tiny", width=1.0, trained=False),
               again, log=lambda s: None)
    assert [t["reused"] for t in again.stage_timings] == [True, True]
    assert {a.name: a.sha256 for a in again.artifacts} == first
    # what each reused step cost when it ran, for the report's "reused (it ran in N s)"
    assert [t["folder"] for t in again.stage_timings] == ["01-a", "02-b"]
    assert all(t["ran_seconds"] > 0 for t in again.stage_timings)
    assert "ran_seconds" not in ctx.stage_timings[0]

    changed = Recipe("t", (Step("a", Double("a1")), Step("b", Double("b2"))))
    third = _fresh(ctx)
    run_recipe(changed, save_source(third, tiny_model, spec="tiny", width=1.0, trained=False),
               third, log=lambda s: None)
    assert [t["reused"] for t in third.stage_timings] == [True, False]

    # a damaged file is never taken as complete: its step runs again
    (ctx.out_dir / "01-a" / "a1.h5").write_bytes(b"truncated")
    fourth = _fresh(ctx)
    run_recipe(changed, save_source(fourth, tiny_model, spec="tiny", width=1.0, trained=False),
               fourth, log=lambda s: None)
    # the re-made file has the same bytes, so the step after it is still valid and reused
    assert [t["reused"] for t in fourth.stage_timings] == [False, True]
    assert fourth.find("a1").sha256 == first["a1"]


def test_no_cache_runs_everything(ctx, tiny_model):
    recipe = Recipe("t", (Step("a", Double("a1")),))
    run_recipe(recipe, _source(ctx, tiny_model), ctx, log=lambda s: None)
    again = _fresh(ctx)
    run_recipe(recipe, save_source(again, tiny_model, spec="tiny", width=1.0, trained=False,
                                   cache=False), again, log=lambda s: None, cache=False)
    assert [t["reused"] for t in again.stage_timings] == [False]


def test_a_step_with_input_branches_from_that_step(ctx, tiny_model):
    seen = []
    recipe = Recipe("t", (Step("a", Double("a1")), Step("b", Double("b1")),
                          Step("c", Double("c1"), input="a"), Step("side", Leaf(seen)),
                          Step("d", Double("d1"), input="source")))
    final = run_recipe(recipe, _source(ctx, tiny_model), ctx, log=lambda s: None)
    by_name = {a.name: a for a in ctx.artifacts}
    assert by_name["b1"].parent == "a1" and by_name["c1"].parent == "a1"
    assert seen == ["c1"]  # the step after a branch works on the branch's result
    assert final.name == "d1" and final.parent == "source"


def test_a_step_that_repeats_an_artifact_name_fails_and_leaves_no_folder(ctx, tiny_model):
    recipe = Recipe("t", (Step("a", Double("same")), Step("b", Double("same"))))
    with pytest.raises(ConfigError, match=r"step 'b' made 'same', a name an earlier step already gave"):
        run_recipe(recipe, _source(ctx, tiny_model), ctx, log=lambda s: None)
    assert (ctx.out_dir / "01-a").is_dir() and not (ctx.out_dir / "02-b").exists()
    assert not list(ctx.out_dir.glob(".02-*"))


@dataclass(frozen=True)
class Reporter:
    """Returns everything a stage can give the run besides artifacts."""
    name: ClassVar[str] = "reporter"
    accepts: ClassVar[tuple] = ("keras",)
    produces: ClassVar = None

    def run(self, art, ctx):
        from slimpipe.pipeline.stage import StageResult

        return StageResult(notes=["reporter: looked at " + art.name], baseline=art.name,
                           measurements={art.name: {"accuracy": 0.5}})


def test_a_stage_result_joins_the_run_and_comes_back_from_the_cache(ctx, tiny_model):
    from slimpipe.pipeline.context import RunContext

    recipe = Recipe("t", (Step("look", Reporter()),))
    run_recipe(recipe, _source(ctx, tiny_model), ctx, log=lambda s: None)
    assert ctx.notes == ["reporter: looked at source"] and ctx.baseline == "source"
    assert ctx.measurements == {"source": {"accuracy": 0.5}}
    again = RunContext(data=ctx.data, out_dir=ctx.out_dir, model_name="tiny")
    run_recipe(recipe, _source(again, tiny_model), again, log=lambda s: None)
    assert again.stage_timings[-1]["reused"]
    assert (again.notes, again.baseline, again.measurements) == (ctx.notes, ctx.baseline, ctx.measurements)
