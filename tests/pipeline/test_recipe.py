"""Recipe loading and validation: everything is checked before anything runs."""
import pytest

from slimpipe.pipeline.errors import ConfigError
from slimpipe.pipeline.recipe import build_recipe, load_recipe, shipped_recipes
from slimpipe.stages import STAGES


def recipe(*stages, **top):
    return {"name": "t", "stages": [dict(s) for s in stages], **top}


def test_every_shipped_recipe_loads():
    assert "default" in shipped_recipes()
    for name in shipped_recipes():
        r = load_recipe(name, STAGES)
        assert len(r) >= 1


def test_default_recipe_shape():
    r = load_recipe("default", STAGES)
    names = [s.name for s in r]
    assert names[:4] == ["train", "prune", "strip", "cluster"]
    assert names.index("export") < names.index("benchmark")
    assert r[1].stage.final_sparsity >= 0.8 and r[3].stage.preserve_sparsity
    quantize = [s.stage for s in r if s.stage.name == "quantize"]
    assert {"pcqat", "int8", "dynamic"} <= {q.mode for q in quantize}
    assert any(q.mode == "pcqat" and q.sparse and not q.per_channel for q in quantize)
    structured = next(s for s in r if s.stage.name == "structured_prune")
    assert structured.input == "train"


def test_overrides_replace_parameters():
    r = load_recipe("default", STAGES, overrides={"train": {"epochs": 1}})
    assert r[0].stage.epochs == 1


def test_toml_file_and_lists_become_tuples(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('[[stages]]\nstage = "benchmark"\nlatency = [[1, 1], [2, 8]]\n')
    r = load_recipe(path, STAGES)
    assert r.name == "mine" and r[0].stage.latency == ((1, 1), (2, 8))


@pytest.mark.parametrize("data, match", [
    (recipe({"stage": "prnue"}), r"unknown stage 'prnue'.*Did you mean 'prune'"),
    (recipe({"stage": "prune", "final_sparsty": 0.5}), r"unknown parameter 'final_sparsty'.*Did you mean 'final_sparsity'"),
    (recipe({"stage": "prune", "final_sparsity": 1.5}), r"final_sparsity must be in \[0, 1\)"),
    (recipe({"stage": "prune", "final_sparsity": -0.1}), r"final_sparsity"),
    (recipe({"stage": "train", "epochs": -1}), r"epochs"),
    (recipe({"stage": "train"}, {"stage": "train"}), r"name 'train' is used twice"),
    (recipe({"stage": "strip"}), r"'strip' accepts keras:pruning models but would receive a keras model"),
    (recipe({"stage": "prune"}, {"stage": "export"}), r"'export' accepts keras models but would receive a keras:pruning"),
    (recipe({"stage": "structured_prune", "cost_exponent": -1}), r"cost_exponent must be a number in \[0, 2\]"),
    (recipe({"stage": "structured_prune", "cost_exponent": "yes"}), r"cost_exponent"),
    (recipe({"stage": "structured_prune", "max_layer_reduction": 0}), r"max_layer_reduction must be a fraction in \(0, 1\]"),
    (recipe({"stage": "structured_prune", "max_layer_reduction": 1.5}), r"max_layer_reduction"),
    (recipe({"stage": "structured_prune", "max_layer_reduction": True}), r"max_layer_reduction"),
    (recipe({"epochs": 3}), r"has no 'stage' key"),
    ({"name": "t", "stages": []}, r"no stages"),
    (recipe({"stage": "train"}, extra=1), r"unknown top-level keys \['extra'\]"),
    (recipe({"stage": "train", "input": "prune"}, {"stage": "prune"}), r"input 'prune' names no earlier step"),
    (recipe({"stage": "train", "input": 3}), r"input must be the name of an earlier step"),
    (recipe({"stage": "train", "name": "source"}), r"name 'source' is reserved"),
    (recipe({"stage": "prune"}, {"stage": "strip"}, {"stage": "strip", "name": "again", "input": "strip"}),
     r"'again' accepts keras:pruning models but would receive a keras model"),
])
def test_bad_recipes_are_refused(data, match):
    with pytest.raises(ConfigError, match=match):
        build_recipe(data, STAGES)


def test_two_steps_of_one_stage_with_names():
    r = build_recipe(recipe({"stage": "train"}, {"stage": "train", "name": "train_more"}), STAGES)
    assert [s.name for s in r] == ["train", "train_more"]


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="unknown recipe 'nope'"):
        load_recipe("nope", STAGES)
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe(tmp_path / "missing.toml", STAGES)
    bad = tmp_path / "bad.toml"
    bad.write_text("[[stages]\nstage=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_recipe(bad, STAGES)


def test_input_branches_from_an_earlier_step():
    r = build_recipe(recipe({"stage": "train"}, {"stage": "prune"}, {"stage": "strip"},
                            {"stage": "prune", "name": "prune_again", "input": "train"},
                            {"stage": "strip", "name": "strip_again"}), STAGES)
    assert [(s.name, s.input) for s in r][3] == ("prune_again", "train")


def test_speed_recipe_shape():
    r = load_recipe("speed", STAGES)
    assert [s.stage.name for s in r] == ["train", "structured_prune", "export", "quantize", "benchmark"]
    pruning, quantize = r[1].stage, r[3].stage
    assert pruning.from_scratch and pruning.reduction >= 0.75
    assert not pruning.layers  # no layer names: the recipe runs on vgg16 and users' models too
    assert quantize.mode == "int8" and quantize.io == "float" and quantize.space_to_depth_stem
    assert (1, 1) in r[4].stage.latency


def test_xnnpack_recipe_prunes_with_the_xnnpack_policy():
    r = load_recipe("xnnpack", STAGES)
    assert [s.stage.name for s in r] == ["train", "prune", "strip", "export", "benchmark"]
    assert r[1].stage.pruning_policy == "xnnpack"


def test_a_recipe_may_hold_out_a_validation_split():
    from slimpipe.pipeline.recipe import build_recipe
    from slimpipe.stages import STAGES

    recipe = build_recipe({"validation": 0.1, "stages": [{"stage": "train"}]}, STAGES)
    assert recipe.validation == 0.1
    assert build_recipe({"stages": [{"stage": "train"}]}, STAGES).validation == 0.0
    for bad in (1.0, -0.1, True, "0.1"):
        with pytest.raises(ConfigError, match="validation must be a fraction"):
            build_recipe({"validation": bad, "stages": [{"stage": "train"}]}, STAGES)
