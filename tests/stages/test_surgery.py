"""Model surgery: channel groups, scores, and the exactness of removing channels.

The strong check: a model with channels removed computes exactly what the original computes
when those channels' outputs are zeroed (producer kernel and bias, batch norm gamma and beta,
depthwise kernel and bias), up to float summation order.
"""
import numpy as np
import pytest

import slimpipe.pipeline  # noqa: F401
import tf_keras as keras

from slimpipe.benchmarks.complexity import keras_complexity
from slimpipe.pipeline.errors import ConfigError
from slimpipe.pipeline.runner import run_stage
from slimpipe.stages.surgery import (analyze_groups, channel_scores, complexity_model, prune_channels,
                             prunable_groups, select_channels)

L = keras.layers


def randomize(model, seed=0):
    """Random weights everywhere (biases and batch norm statistics too), variances > 0."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        ws = layer.get_weights()
        if isinstance(layer, L.BatchNormalization):
            ws = [rng.uniform(0.5, 1.5, w.shape) if i in (0, 3) else rng.normal(0, 0.3, w.shape)
                  for i, w in enumerate(ws)]
        else:
            ws = [rng.normal(0, 0.3, w.shape) for w in ws]
        layer.set_weights([w.astype("float32") for w in ws])
    return model


def sequential_bn():
    keras.utils.set_random_seed(0)
    return randomize(keras.Sequential([
        L.Input((12, 12, 1)),
        L.Conv2D(8, 3, name="c1"),
        L.BatchNormalization(name="bn1"),
        L.ReLU(name="relu1"),
        L.MaxPooling2D(name="pool"),
        L.Conv2D(8, 3, activation="relu", name="c2"),   # 3x3x8
        L.Flatten(name="flat"),
        L.Dropout(0.5, name="drop"),
        L.Dense(12, activation="relu", name="fc"),
        L.Dense(4, name="logits"),
    ]))


def functional_residual():
    """c1 and c2 tied by a residual Add; a depthwise conv on the sum; Concatenate of c3, c4."""
    keras.utils.set_random_seed(0)
    inp = L.Input((10, 10, 3))
    a = L.ReLU(name="r1")(L.BatchNormalization(name="bn1")(L.Conv2D(8, 3, padding="same", name="c1")(inp)))
    b = L.BatchNormalization(name="bn2")(L.Conv2D(8, 3, padding="same", name="c2")(a))
    s = L.ReLU(name="r2")(L.Add(name="add")([a, b]))
    d = L.ReLU(name="r3")(L.BatchNormalization(name="bn3")(L.DepthwiseConv2D(3, padding="same", name="dw")(s)))
    c3 = L.Conv2D(6, 1, name="c3")(d)
    c4 = L.Conv2D(4, 1, activation="relu", name="c4")(s)
    cat = L.Concatenate(name="cat")([c3, c4])
    x = L.GlobalAveragePooling2D(name="gap")(L.Conv2D(8, 3, activation="relu", name="c5")(cat))
    return randomize(keras.Model(inp, L.Dense(3, name="logits")(x)))


def zeroed(model, groups, keep):
    """A copy of `model` whose removed channels output exactly zero."""
    ref = keras.models.clone_model(model)
    ref.set_weights(model.get_weights())
    for g in groups:
        if g.id not in keep:
            continue
        gone = np.setdiff1d(np.arange(g.size), keep[g.id])
        for name in (*g.producers, *g.members):
            layer = ref.get_layer(name)
            ws = layer.get_weights()
            if isinstance(layer, L.BatchNormalization):
                ws[0][gone] = 0.0  # gamma
                ws[1][gone] = 0.0  # beta
            elif isinstance(layer, L.DepthwiseConv2D):
                ws[0][:, :, gone] = 0.0
                ws[1][gone] = 0.0
            else:
                ws[0][..., gone] = 0.0
                ws[1][gone] = 0.0
            layer.set_weights(ws)
    return ref


def check_surgery(model, keep, x):
    groups = analyze_groups(model)
    before = [w.copy() for w in model.get_weights()]
    small = prune_channels(model, keep)
    np.testing.assert_allclose(small(x).numpy(), zeroed(model, groups, keep)(x).numpy(), rtol=1e-4, atol=1e-5)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights())), "input model changed"
    cost = complexity_model(model)({k: len(v) for k, v in keep.items()})
    measured = keras_complexity(small)
    assert cost == {"params": measured["params"], "macs": measured["macs"]}
    return small


def test_sequential_groups_bn_and_flatten_to_dense():
    model = sequential_bn()
    groups = {g.id: g for g in analyze_groups(model)}
    assert [g.id for g in prunable_groups(model)] == ["c1", "c2", "fc"]
    assert groups["c1"].bn == {"c1": "bn1"} and groups["c1"].members == ("bn1",)
    assert groups["c1"].consumers == ("c2",) and groups["c2"].consumers == ("fc",)
    assert groups["c2"].bn == {"c2": None}
    assert not groups["logits"].prunable and "model output" in groups["logits"].reason

    x = np.random.default_rng(1).normal(size=(5, 12, 12, 1)).astype("float32")
    full = prune_channels(model, {g: np.arange(groups[g].size) for g in ("c1", "c2", "fc")})
    assert np.array_equal(full(x).numpy(), model(x).numpy())

    keep = {"c1": np.array([0, 2, 3, 7]), "c2": np.array([1, 4, 5]), "fc": np.arange(0, 12, 2)}
    small = check_surgery(model, keep, x)
    assert small.get_layer("c1").filters == 4 and small.get_layer("fc").units == 6
    # Flatten -> Dense: rows (h * W + w) * C + c for kept c at every one of the 3x3 positions.
    rows = [s * 8 + c for s in range(9) for c in keep["c2"]]
    fc = model.get_layer("fc").get_weights()[0]
    np.testing.assert_array_equal(small.get_layer("fc").get_weights()[0], fc[rows][:, keep["fc"]])
    np.testing.assert_array_equal(small.get_layer("bn1").get_weights()[2],
                                  model.get_layer("bn1").get_weights()[2][keep["c1"]])


def test_residual_add_ties_producers_and_concatenate_offsets():
    model = functional_residual()
    groups = {g.id: g for g in analyze_groups(model)}
    tied = groups["c1"]
    assert tied.producers == ("c1", "c2") and "c2" not in groups
    assert set(tied.members) == {"bn1", "bn2", "dw", "bn3"}  # depthwise channels tie to its input
    assert set(tied.consumers) == {"c2", "c3", "c4"}
    assert tied.bn == {"c1": "bn1", "c2": "bn2"}
    assert groups["c3"].consumers == groups["c4"].consumers == ("c5",)
    assert [g.id for g in prunable_groups(model)] == ["c1", "c3", "c4", "c5"]

    x = np.random.default_rng(2).normal(size=(3, 10, 10, 3)).astype("float32")
    full = prune_channels(model, {g.id: np.arange(g.size) for g in prunable_groups(model)})
    assert np.array_equal(full(x).numpy(), model(x).numpy())

    keep = {"c1": np.array([1, 2, 5, 6]), "c3": np.array([0, 3, 5]), "c4": np.array([2]), "c5": np.arange(5)}
    small = check_surgery(model, keep, x)
    assert small.get_layer("dw").get_weights()[0].shape == (3, 3, 4, 1)
    assert small.get_layer("c2").get_weights()[0].shape == (3, 3, 4, 4)
    # c5 reads [c3 | c4]: c4's kept channel 2 sits at 6 + 2 in the concatenation.
    c5 = model.get_layer("c5").get_weights()[0]
    np.testing.assert_array_equal(small.get_layer("c5").get_weights()[0], c5[:, :, [0, 3, 5, 8]][..., :5])


def test_scores_l1_and_bn_scale():
    model = functional_residual()
    tied = analyze_groups(model)[0]
    k1, k2 = (model.get_layer(n).get_weights()[0] for n in ("c1", "c2"))
    expect = np.abs(k1).sum(axis=(0, 1, 2)) + np.abs(k2).sum(axis=(0, 1, 2))
    np.testing.assert_allclose(channel_scores(model, tied, "l1"), expect, rtol=1e-6)
    gammas = sum(np.abs(model.get_layer(n).get_weights()[0]) for n in ("bn1", "bn2"))
    np.testing.assert_allclose(channel_scores(model, tied, "bn_scale"), gammas, rtol=1e-6)
    c3 = next(g for g in analyze_groups(model) if g.id == "c3")
    with pytest.raises(ConfigError, match="c3"):
        channel_scores(model, c3, "bn_scale")


def test_unhandled_layers_make_groups_unprunable():
    keras.utils.set_random_seed(0)
    inp = L.Input((6, 6, 2))
    a = L.Conv2D(4, 3, name="a")(inp)
    b = L.Conv2D(4, 3, name="b")(inp)
    r = L.Flatten(name="flat")(L.Reshape((4, 4, 4), name="reshape")(a))
    t = L.Add(name="add")([L.Conv2D(2, 1, name="c")(b), L.Cropping2D(1, name="crop")(inp)])
    out = L.Dense(2, name="logits")(L.Concatenate(name="cat")([r, L.Flatten(name="f2")(t)]))
    groups = {g.id: g for g in analyze_groups(keras.Model(inp, out))}
    assert "reshape" in groups["a"].reason.lower() and "Reshape" in groups["a"].reason
    assert groups["b"].prunable
    assert "cannot be pruned" in groups["c"].reason  # tied by Add to the model input's channels
    with pytest.raises(ConfigError, match="prunable"):
        prune_channels(keras.Model(inp, out), {"a": [0, 1]})
    with pytest.raises(ConfigError, match="group ids"):
        prune_channels(keras.Model(inp, out), {"nope": [0]})
    with pytest.raises(ConfigError, match="channel indices"):
        prune_channels(keras.Model(inp, out), {"b": [0, 9]})


def test_select_channels_meets_budget_with_round_to_and_min_channels():
    model = sequential_bn()
    groups = prunable_groups(model)
    scores = {g.id: channel_scores(model, g, "l1") for g in groups}
    cost = complexity_model(model)
    total = cost({})["macs"]
    keep, reached = select_channels(groups, scores, lambda c: cost(c)["macs"], 0.5 * total,
                                    min_channels=4, round_to=4)
    assert reached and cost({k: len(v) for k, v in keep.items()})["macs"] <= 0.5 * total
    assert all(len(v) % 4 == 0 and len(v) >= 4 for v in keep.values())
    for gid, idx in keep.items():  # the best-scored channels survive
        assert set(idx) == set(np.argsort(-scores[gid])[:len(idx)])
    keep, reached = select_channels(groups, scores, lambda c: cost(c)["macs"], 1, min_channels=4, round_to=4)
    assert not reached and all(len(v) == 4 for v in keep.values())


def test_cost_aware_selection_cuts_where_a_channel_saves_most():
    model = sequential_bn()
    groups = prunable_groups(model)
    ids = {g.producers[0]: g.id for g in groups}
    # The same score spread in every layer: score alone cannot tell the layers apart.
    scores = {g.id: np.linspace(0.5, 1.5, g.size)[::-1].copy() for g in groups}
    cost = complexity_model(model)
    budget = 0.5 * cost({})["macs"]
    plain, reached_plain = select_channels(groups, scores, lambda c: cost(c)["macs"], budget, min_channels=4)
    aware, reached_aware = select_channels(groups, scores, lambda c: cost(c)["macs"], budget, min_channels=4,
                                           cost_exponent=1.0)
    assert reached_plain and reached_aware
    assert cost({k: len(v) for k, v in aware.items()})["macs"] <= budget
    # c1 (a 10x10 map feeding c2) saves ~20x the MACs per channel that fc does: it goes first,
    # and the dense layer keeps all its neurons.
    assert ids["fc"] not in aware and ids["fc"] in plain
    kept = lambda keep: sum(len(keep.get(g.id, range(g.size))) for g in groups)  # noqa: E731
    assert kept(aware) > kept(plain)  # the same budget met with fewer channels removed
    for gid, idx in aware.items():  # within a layer, the best-scored channels survive
        assert set(idx) == set(np.argsort(-scores[gid])[:len(idx)])


def test_floors_bound_every_group_in_both_rankings():
    model = sequential_bn()
    groups = prunable_groups(model)
    scores = {g.id: channel_scores(model, g, "l1") for g in groups}
    cost = complexity_model(model)
    floors = {g.id: g.size // 2 for g in groups}
    for exponent in (0.0, 1.0):
        keep, reached = select_channels(groups, scores, lambda c: cost(c)["macs"], 1, min_channels=1,
                                        cost_exponent=exponent, floors=floors)
        assert not reached  # a budget of 1 MAC: everything goes down to its floor, and no further
        assert {gid: len(idx) for gid, idx in keep.items()} == floors


def speed_recipe_shape(model, cost_exponent=None, floors=True):
    """{layer: (kept, original) channels} after one selection at the speed recipe's budget,
    rounding and (unless floors=False) max_layer_reduction floors."""
    import math

    from slimpipe.pipeline.recipe import load_recipe
    from slimpipe.stages import STAGES

    stage = next(s.stage for s in load_recipe("speed", STAGES) if s.stage.name == "structured_prune")
    groups = prunable_groups(model)
    scores = {g.id: channel_scores(model, g, stage.criterion) for g in groups}
    cost = complexity_model(model)
    budget = (1 - stage.reduction) * cost({})["macs"]
    floors = {g.id: math.ceil((1 - stage.max_layer_reduction) * g.size) for g in groups} if floors else None
    exponent = stage.cost_exponent if cost_exponent is None else cost_exponent
    keep, reached = select_channels(groups, scores, lambda c: cost(c)["macs"], budget, floors=floors,
                                    min_channels=stage.min_channels, round_to=stage.round_to,
                                    cost_exponent=exponent)
    assert reached and cost({k: len(v) for k, v in keep.items()})["macs"] <= budget
    return {g.producers[0]: (len(keep.get(g.id, range(g.size))), g.size) for g in groups}


def test_speed_recipe_ranking_cuts_the_wide_map_convs_of_the_cnn():
    """The speed recipe's cost-aware ranking spends its MAC budget on conv1 and conv2 (26x26 and
    11x11 maps) and keeps conv3 and fc1 whole: few MACs, most of the weights. The plain ranking
    at the same budget cuts every layer."""
    from slimpipe.pipeline.models import build_model

    model = randomize(build_model("cnn", (28, 28, 1), 10))
    aware = speed_recipe_shape(model)
    assert aware["conv3"] == (64, 64) and aware["fc1"] == (128, 128)
    assert aware["conv1"][0] < 32 and aware["conv2"][0] < 64
    plain = speed_recipe_shape(model, cost_exponent=0.0)
    assert plain["conv3"][0] < 64 and plain["fc1"][0] < 128


def test_speed_recipe_keeps_a_quarter_of_every_vgg16_layer():
    """Without a floor the cost-aware ranking collapses layers of a conv chain to min_channels
    (VGG16 x0.25: block4_conv2 128 -> 8 next to two whole layers): one side of each pair of
    layers loses what the other keeps."""
    from slimpipe.pipeline.models import build_model

    model = randomize(build_model("vgg16", (28, 28, 1), 10, width=0.25))
    shape = speed_recipe_shape(model)
    assert all(kept >= size / 4 for kept, size in shape.values())
    collapsed = speed_recipe_shape(model, floors=False)
    assert any(kept < size / 4 for kept, size in collapsed.values())



def test_structured_prune_floors_hold_against_the_original_width_over_rounds(ctx):
    """max_layer_reduction = 0.5 over 2 rounds: every layer keeps half of its *original* channels
    (floors taken per round would allow a quarter), the unreachable MAC target is noted, and the
    input model is left alone."""
    from slimpipe.pipeline.artifacts import make_artifact
    from slimpipe.pipeline.kerasio import save_keras
    from slimpipe.stages.structured_prune import StructuredPrune
    from tests.conftest import make_tiny_model

    src = make_tiny_model()
    ctx.stage_dir.mkdir(parents=True, exist_ok=True)
    art = make_artifact("trained", save_keras(src, ctx.out_dir / "trained.h5"), fmt="keras", kind="keras",
                        stage="train", config={}, parent=None)
    stage = StructuredPrune(reduction=0.95, rounds=2, epochs=0, final_epochs=0, cost_exponent=1.0,
                            max_layer_reduction=0.5, min_channels=1, round_to=1)
    [out] = run_stage(stage, art, ctx)
    assert out.meta["channels"] == {"conv": [8, 4], "dense": [32, 16]}
    assert out.meta["reduction_achieved"] < 0.95
    assert any("max_layer_reduction=0.5" in n for n in ctx.notes)
    assert [l.get_config().get("filters") for l in ctx.keras_model(art).layers][:1] == [8]
