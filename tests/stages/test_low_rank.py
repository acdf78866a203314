"""low_rank: truncated-SVD factorization of Dense and Conv2D layers, on tiny models."""
import numpy as np
import pytest

from slimpipe.pipeline.errors import ConfigError
from slimpipe.pipeline.kerasio import load_keras
from slimpipe.stages.low_rank import LowRank
from slimpipe.stages.surgery.factorize import SUFFIX, factorize, plan_layer
from tests.stages.conftest import keras_artifact, run_on_tiny


def _conv_model(padding, strides, kernel=(3, 3), seed=0):
    import tf_keras as keras

    keras.utils.set_random_seed(seed)
    L = keras.layers
    inputs = L.Input((11, 10, 3), name="x")
    a = L.Conv2D(6, kernel, strides=strides, padding=padding, activation="relu", name="conv")(inputs)
    b = L.Conv2D(6, 1, strides=strides, padding=padding, name="side")(inputs)
    merged = L.Add(name="join")([a, b]) if padding == "same" else a
    x = L.Flatten(name="flat")(merged)
    outputs = L.Dense(4, name="head")(L.Dense(9, activation="tanh", name="fc")(x))
    return keras.Model(inputs, outputs, name="convs")


def _close(a, b):
    scale = max(float(np.max(np.abs(a))), 1e-6)
    return float(np.max(np.abs(a - b))) / scale


@pytest.mark.parametrize("conv", ["spatial", "channel"])
@pytest.mark.parametrize(("padding", "strides"), [("valid", 1), ("same", 1), ("valid", 2), ("same", 2)])
def test_full_rank_factorization_gives_the_same_outputs(conv, padding, strides):
    model = _conv_model(padding, strides)
    x = np.random.default_rng(1).normal(size=(5, 11, 10, 3)).astype("float32")
    full = {"conv": plan_layer(model.get_layer("conv"), conv).max_rank,
            "fc": plan_layer(model.get_layer("fc"), conv).max_rank}
    new = factorize(model, full, conv)
    assert _close(model.predict(x, verbose=0), new.predict(x, verbose=0)) < 1e-5
    names = [layer.name for layer in new.layers]
    assert names.index("conv" + SUFFIX) == names.index("conv") - 1  # inserted right before
    assert names.index("fc" + SUFFIX) == names.index("fc") - 1


def test_ranks_and_shapes_of_the_factors():
    model = _conv_model("same", 2)
    spatial = factorize(model, {"conv": 2, "fc": 3}, "spatial")
    assert spatial.get_layer("conv" + SUFFIX).get_weights()[0].shape == (3, 1, 3, 2)
    assert len(spatial.get_layer("conv" + SUFFIX).get_weights()) == 1  # no bias
    assert spatial.get_layer("conv").get_weights()[0].shape == (1, 3, 2, 6)
    assert spatial.get_layer("conv").get_config()["activation"] == "relu"
    flat = model.get_layer("fc").get_weights()[0].shape[0]
    assert spatial.get_layer("fc" + SUFFIX).get_weights()[0].shape == (flat, 3)
    assert spatial.get_layer("fc").get_weights()[0].shape == (3, 9)
    channel = factorize(model, {"conv": 2}, "channel")
    assert channel.get_layer("conv" + SUFFIX).get_weights()[0].shape == (3, 3, 3, 2)
    assert channel.get_layer("conv").get_weights()[0].shape == (1, 1, 2, 6)
    assert channel.output_shape == model.output_shape


def test_truncation_keeps_the_largest_singular_values():
    model = _conv_model("valid", 1)
    kernel = model.get_layer("fc").get_weights()[0]
    new = factorize(model, {"fc": 2}, "spatial")
    product = new.get_layer("fc" + SUFFIX).get_weights()[0] @ new.get_layer("fc").get_weights()[0]
    u, s, vt = np.linalg.svd(kernel.astype(np.float64), full_matrices=False)
    best = (u[:, :2] * s[:2]) @ vt[:2]
    assert np.allclose(product, best, atol=1e-5)
    plan = plan_layer(model.get_layer("fc"))
    assert np.allclose(plan.singular, s)
    kept = np.cumsum(s ** 2) / np.sum(s ** 2)
    assert plan.rank_for_energy(float(kept[2])) == 3
    assert plan.rank_for_energy(float(kept[2]) + 1e-4) == 4
    assert plan.rank_for_energy(1.0) == plan.max_rank


def test_a_factorization_that_costs_more_than_the_layer_does_not_pay():
    model = _conv_model("valid", 1)
    plan = plan_layer(model.get_layer("head"))  # 9 x 4: rank r costs 13 r weights against 36
    assert plan.pays(2) and not plan.pays(3)
    assert plan.rank_for_ratio(2) == 1  # 13 weights are at most half of 36


def test_the_stage_factorizes_fine_tunes_and_never_changes_its_input(tmp_path, tiny_data, trained_path):
    before = [w.copy() for w in load_keras(trained_path).get_weights()]
    stage = LowRank(layers=("dense",), ranks={"dense": 4}, epochs=3, learning_rate=3e-3)
    from slimpipe.pipeline.context import RunContext
    from slimpipe.pipeline.runner import run_stage

    ctx = RunContext(data=tiny_data, out_dir=tmp_path)
    ctx.stage_dir = tmp_path / "lowrank"
    source = ctx.keras_model(keras_artifact(trained_path))
    art, = run_stage(stage, keras_artifact(trained_path), ctx)
    assert all(np.array_equal(a, b) for a, b in zip(before, source.get_weights()))
    model = load_keras(art.path)
    assert model.get_layer("dense" + SUFFIX).get_weights()[0].shape[1] == 4
    record, = art.meta["factorization"]
    assert record["layer"] == "dense" and record["rank"] == 4
    assert record["params_after"] == 4 * (200 + 32) and record["params_before"] == 200 * 32
    def accuracy(m):
        return np.mean(np.argmax(m.predict(tiny_data.x_test, verbose=0), 1) == tiny_data.y_test)

    # the tiny model's spectrum is flat: rank 4 alone loses much of it, fine-tuning wins it back
    untuned = accuracy(factorize(source, {"dense": 4}))
    assert accuracy(model) >= max(untuned + 0.2, accuracy(source) - 0.05)


def test_a_layer_that_does_not_pay_is_left_alone_and_said_so(tmp_path, tiny_data):
    arts = run_on_tiny(LowRank(layers=("logits",), energy=1.0, epochs=0), tmp_path, tiny_data, "lowrank")
    model = load_keras(arts[0].path)
    assert "logits" + SUFFIX not in [layer.name for layer in model.layers]
    record, = arts[0].meta["factorization"]
    assert record["skipped"] and record["rank"] == 4


@pytest.mark.parametrize(("params", "message"), [
    ({"energy": 0}, "energy must be in (0, 1]"),
    ({"energy": 1.5}, "energy must be in (0, 1]"),
    ({"ratio": 0.5}, "ratio must be a number > 1"),
    ({"ranks": {"fc": 0}}, "ranks['fc'] must be an integer >= 1"),
    ({"conv": "tucker"}, "conv must be one of 'spatial', 'channel'"),
])
def test_bad_parameters_fail_in_one_line(params, message):
    with pytest.raises(ConfigError, match=None) as info:
        LowRank(**params)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_rank_too_large_or_a_name_that_matches_nothing_fails_the_check():
    model = _conv_model("valid", 1)
    with pytest.raises(ConfigError, match=r"rank 10 for fc exceeds its largest possible rank, 9"):
        LowRank(ranks={"fc": 10}).check(model, None)
    with pytest.raises(ConfigError, match="fc9"):
        LowRank(layers=("fc9",)).check(model, None)
    assert LowRank(ranks={"fc": 9}).check(model, None) == []


def test_the_report_lists_each_planned_layer_with_its_rank_and_costs():
    from slimpipe.pipeline.markdown_report import render_block
    from slimpipe.pipeline.sections import factorization_section

    plan = plan_layer(_conv_model("valid", 1).get_layer("fc"))
    done, left = plan.record(3), {**plan.record(9), "skipped": "the factors would need as many weights"}
    report = {"artifacts": [{"name": "trained", "factorization": None},
                            {"name": "lowrank", "factorization": [done, left]}]}
    section, = factorization_section(report)
    table = next(b for b in section.blocks if getattr(b, "id", None) == "factorization")
    first, second = table.text_rows()
    assert "lowrank" in first[0] and "fc" in first[1] and first[2:5] == ["dense", "3", "9"]
    assert first[6] == f"{plan.params:,}" and first[7] == f"{3 * plan.per_rank_params:,}"
    assert first[-1] == "yes" and second[-1].startswith("no: ")
    assert "| `lowrank` | `fc` | dense | 3 | 9 |" in "".join(render_block(b) for b in section.blocks)
    assert factorization_section({"artifacts": [{"name": "trained"}]}) == []
