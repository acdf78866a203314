"""The prune stage: really reaches the requested sparsity on small data, on the right layers,
in the requested pattern, and never prunes its input model."""
import numpy as np
import pytest
import tensorflow_model_optimization as tfmot
from tensorflow_model_optimization.python.core.sparsity.keras import pruning_wrapper

from slimpipe.pipeline.artifacts import make_artifact
from slimpipe.pipeline.errors import ConfigError
from slimpipe.pipeline.kerasio import load_keras
from slimpipe.stages.prune import Prune
from slimpipe.pipeline.runner import run_stage

KERNELS = ("conv", "dense", "logits")
Wrapper = pruning_wrapper.PruneLowMagnitude


@pytest.fixture
def trained(ctx, trained_path):
    return make_artifact("trained", trained_path, fmt="keras", kind="keras", stage="train",
                         config={}, parent=None, meta={"trained": True})


def run(stage, art, ctx, folder="prune"):
    ctx.stage_dir = ctx.out_dir / folder
    return run_stage(stage, art, ctx)


def stripped_kernels(art):
    """Kernels of the saved file, wrappers stripped: what downstream stages will see."""
    model = tfmot.sparsity.keras.strip_pruning(load_keras(art.path))
    return {layer.name: layer.kernel.numpy() for layer in model.layers if hasattr(layer, "kernel")}


@pytest.mark.parametrize("schedule", ["polynomial", "constant"])
def test_reaches_the_target_on_every_layer_and_leaves_the_input_alone(ctx, trained, schedule):
    source = ctx.keras_model(trained)
    before = [w.copy() for w in source.get_weights()]

    [out] = run(Prune(schedule=schedule, final_sparsity=0.8), trained, ctx)

    assert (out.name, out.kind, out.parent) == ("pruning", "keras:pruning", "trained")
    kernels = stripped_kernels(out)
    for name in KERNELS:
        assert abs(np.mean(kernels[name] == 0) - 0.8) <= 0.03, name
    zeros = sum(int(np.sum(k == 0)) for k in kernels.values())
    total = sum(k.size for k in kernels.values())
    assert out.meta["achieved_sparsity"] == pytest.approx(zeros / total, abs=1e-4)
    assert out.meta["target_sparsity"] == 0.8
    # Tiny data: 2 epochs x 8 steps; masks must update every step and stop at 75%.
    assert (out.meta["steps"], out.meta["end_step"], out.meta["frequency"]) == (16, 12, 1)
    assert not ctx.notes

    # The input model: same weights, same plain layers, nothing wrapped.
    assert all(np.array_equal(a, b) for a, b in zip(before, source.get_weights()))
    assert not any(isinstance(layer, Wrapper) for layer in source.layers)
    assert not any(np.mean(source.get_layer(n).kernel.numpy() == 0) > 0.01 for n in KERNELS)

    # The saved file reloads with its wrappers and computes what the in-memory model does.
    reloaded = load_keras(out.path)
    assert sum(isinstance(layer, Wrapper) for layer in reloaded.layers) == 3
    x = ctx.data.x_test[:16]
    np.testing.assert_allclose(reloaded.predict(x, verbose=0),
                               ctx.keras_model(out).predict(x, verbose=0), atol=1e-5)


def test_tfmot_default_frequency_would_prune_nothing(ctx, trained):
    """Regression: with tfmot's every-100-steps default, 16 steps never update a mask."""
    [out] = run(Prune(final_sparsity=0.8, frequency=100), trained, ctx)
    assert out.meta["achieved_sparsity"] < 0.01
    assert any("below the target" in note for note in ctx.notes)


def test_only_listed_layers_are_pruned(ctx, trained):
    [out] = run(Prune(final_sparsity=0.8, layers=("dense",)), trained, ctx)
    wrapped = [layer.layer.name for layer in load_keras(out.path).layers if isinstance(layer, Wrapper)]
    assert wrapped == ["dense"]
    kernels = stripped_kernels(out)
    assert abs(np.mean(kernels["dense"] == 0) - 0.8) <= 0.03
    assert np.mean(kernels["conv"] == 0) == 0 and np.mean(kernels["logits"] == 0) == 0
    assert out.meta["layers"].keys() == {"dense"}


def test_layer_sparsity_gives_a_layer_its_own_target(ctx, trained):
    [out] = run(Prune(final_sparsity=0.5, layer_sparsity={"dense": 0.9}), trained, ctx)
    kernels = stripped_kernels(out)
    assert abs(np.mean(kernels["dense"] == 0) - 0.9) <= 0.03
    assert abs(np.mean(kernels["conv"] == 0) - 0.5) <= 0.05
    sizes = {name: k.size for name, k in kernels.items()}
    expected = (0.9 * sizes["dense"] + 0.5 * (sizes["conv"] + sizes["logits"])) / sum(sizes.values())
    assert out.meta["target_sparsity"] == pytest.approx(expected, abs=1e-3)
    assert abs(out.meta["achieved_sparsity"] - expected) <= 0.03
    with pytest.raises(ConfigError, match=r"layer_sparsity selector 'pool' selects none of the layers this stage can work on \(conv, dense, logits\)"):
        run(Prune(layer_sparsity={"pool": 0.9}), trained, ctx)


def test_layer_block_size_gives_one_layer_blocks_and_leaves_the_others_unstructured(ctx, trained):
    [out] = run(Prune(final_sparsity=0.75, layer_block_size={"dense": [8, 1]}), trained, ctx)
    kernels = stripped_kernels(out)
    dense = kernels["dense"]  # [200, 32]: runs of 8 consecutive inputs of one output
    per_block = np.count_nonzero(dense.reshape(25, 8, 32), axis=1)
    assert set(np.unique(per_block)) <= {0, 8} and abs(np.mean(dense == 0) - 0.75) <= 0.03
    conv = kernels["conv"].reshape(-1, kernels["conv"].shape[-1])
    assert abs(np.mean(conv == 0) - 0.75) <= 0.05
    # the conv is pruned weight by weight: its zeros do not come in whole 8-row runs
    conv_runs = np.count_nonzero(conv[: conv.shape[0] // 8 * 8].reshape(-1, 8, conv.shape[1]), axis=1)
    assert not set(np.unique(conv_runs)) <= {0, 8}
    assert out.meta["block_sizes"] == {"dense": [8, 1]}


def test_layer_block_size_on_a_conv_or_an_unpruned_layer_is_a_config_error(ctx, trained):
    with pytest.raises(ConfigError, match=r"'conv' has kernel shape \(3, 3, 1, 8\)"):
        run(Prune(layer_block_size={"conv": (4, 1)}), trained, ctx)
    with pytest.raises(ConfigError, match=r"layer_block_size selector 'logits' selects none of the layers this stage can work on \(dense\)"):
        run(Prune(layers=["dense"], layer_block_size={"logits": (4, 1)}), trained, ctx)


@pytest.mark.parametrize("layers", [("dense", "nope"), ("pool",)])
def test_unknown_or_unprunable_layer_names_list_the_prunable_ones(ctx, trained, layers):
    with pytest.raises(ConfigError, match=r"selects none of the layers this stage can work on \(conv, dense, logits\): fix the name"):
        run(Prune(layers=layers), trained, ctx)


def groups_along_input_channels(kernel, n):
    """tfmot's m:n layout (TFLite's): rows per output value, consecutive input channels."""
    if kernel.ndim == 4:  # [h, w, c_in, c_out] -> [c_out * h * w, c_in]
        kernel = kernel.transpose(3, 0, 1, 2).reshape(-1, kernel.shape[2])
    else:  # [c_in, c_out] -> [c_out, c_in]
        kernel = kernel.T
    pad = (-kernel.shape[1]) % n
    return np.pad(kernel, [(0, 0), (0, pad)], constant_values=0).reshape(kernel.shape[0], -1, n)


def test_m_by_n_keeps_at_most_two_of_every_four_input_channels(ctx, trained):
    [out] = run(Prune(sparsity_m_by_n=(2, 4)), trained, ctx)
    kernels = stripped_kernels(out)
    for name, kernel in kernels.items():
        assert (np.count_nonzero(groups_along_input_channels(kernel, 4), axis=-1) <= 2).all(), name
    # Dense kernels have 200 and 32 input channels: exactly half of them are zero.
    assert np.mean(kernels["dense"] == 0) == 0.5 and np.mean(kernels["logits"] == 0) == 0.5
    assert out.meta["target_sparsity"] == 0.5


def test_block_sparsity_zeroes_whole_blocks(ctx, trained):
    [out] = run(Prune(final_sparsity=0.75, block_size=(1, 4)), trained, ctx)
    dense = stripped_kernels(out)["dense"]  # [200, 32]: 1x4 blocks along the outputs
    nonzero_per_block = np.count_nonzero(dense.reshape(200, 8, 4), axis=-1)
    assert set(np.unique(nonzero_per_block)) <= {0, 4}
    assert abs(np.mean(dense == 0) - 0.75) <= 0.03
    # Conv kernels are 4-D and logits' [32, 4] pools to a single column: tfmot fails on both.
    assert any("left conv, logits dense" in note for note in ctx.notes)


def test_end_step_past_the_last_step(ctx, trained):
    with pytest.raises(ConfigError, match=r"end_step=5000 is past the last fine-tune step "
                                          r"\(16 = 2 epochs x 8 steps\): lower end_step or raise epochs"):
        run(Prune(end_step=5000), trained, ctx)


def test_begin_step_after_the_pruning_window(ctx, trained):
    with pytest.raises(ConfigError, match="begin_step=14 leaves no pruning window"):
        run(Prune(begin_step=14), trained, ctx)


@pytest.mark.parametrize("kwargs, match", [
    ({"schedule": "cubic"}, "schedule must be 'polynomial' or 'constant'"),
    ({"final_sparsity": 1.0}, r"final_sparsity must be in \[0, 1\)"),
    ({"initial_sparsity": -0.1}, r"initial_sparsity must be in \[0, 1\)"),
    ({"initial_sparsity": 0.5, "final_sparsity": 0.3}, "final_sparsity must be >= initial_sparsity"),
    ({"epochs": 0}, "epochs must be an integer >= 1"),
    ({"begin_step": -1}, "begin_step must be an integer >= 0"),
    ({"begin_step": 10, "end_step": 10}, "end_step must be an integer > begin_step=10"),
    ({"frequency": 0}, "frequency must be an integer >= 1"),
    ({"batch_size": 0}, "batch_size must be an integer >= 1"),
    ({"learning_rate": 0.0}, "learning_rate must be a number > 0"),
    ({"block_size": (0, 4)}, "block_size must be two integers >= 1"),
    ({"block_size": (4,)}, "block_size must be two integers >= 1"),
    ({"sparsity_m_by_n": (4, 2)}, r"sparsity_m_by_n must be \(m, n\)"),
    ({"sparsity_m_by_n": (2, 4), "block_size": (1, 4)}, "either block_size/layer_block_size or sparsity_m_by_n"),
    ({"sparsity_m_by_n": (2, 4), "layer_block_size": {"dense": (8, 1)}}, "or sparsity_m_by_n, not both"),
    ({"layer_block_size": {"dense": (0, 1)}}, "layer_block_size must map layer selectors to two integers >= 1"),
    ({"layer_block_size": {"dense": 16}}, "layer_block_size must map layer selectors to two integers >= 1"),
    ({"layers": 5}, "layers must be a list of layer selectors"),
    ({"layers": ["@bogus"]}, "selector '@bogus' is not one of"),
    ({"layers": ["re:conv("]}, "selector 're:conv\\(' is not a valid regular expression"),
    ({"layer_sparsity": {"@share:2": 0.9}}, r"F a fraction in \(0, 1\]"),
    ({"layer_sparsity": {"@largest:0": 0.9}}, "N a whole number >= 1"),
    ({"layer_sparsity": {"dense": 1.2}}, r"layer_sparsity\['dense'\] must be in \[0, 1\)"),
    ({"ramp": 0}, r"ramp must be in \(0, 1\]"),
    ({"layer_sparsity": ["dense"]}, "layer_sparsity must map layer selectors to values"),
    ({"initial_sparsity": 0.5, "layer_sparsity": {"dense": 0.3}}, "must be >= initial_sparsity"),
])
def test_bad_parameters_raise_config_error(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        Prune(**kwargs)


def test_lists_from_a_recipe_become_tuples():
    stage = Prune(block_size=[1, 4], layers=["dense"], layer_block_size={"dense": [4, 1]})
    assert stage.block_size == (1, 4) and stage.layers == ("dense",)
    assert stage.layer_block_size == (("dense", (4, 1)),)
    assert Prune(layers="@dense").layers == ("@dense",)


def test_ramp_ends_pruning_at_that_share_of_the_steps(ctx, trained):
    [out] = run(Prune(final_sparsity=0.6, epochs=2, ramp=0.5), trained, ctx)
    steps, end, freq = out.meta["steps"], out.meta["end_step"], out.meta["frequency"]
    assert steps // 2 - freq < end <= steps // 2 and end % freq == 0
    assert abs(out.meta["achieved_sparsity"] - 0.6) <= 0.03
