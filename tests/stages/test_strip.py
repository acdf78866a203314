"""The strip stage: plain layers out, the same sparse weights kept, sparsity measured per layer."""
import numpy as np
import pytest
from tensorflow_model_optimization.python.core.sparsity.keras.pruning_wrapper import PruneLowMagnitude

from tests.stages.conftest import run_on_tiny
from slimpipe.pipeline.artifacts import make_artifact
from slimpipe.pipeline.errors import ConfigError
from slimpipe.pipeline.kerasio import load_keras, save_keras
from slimpipe.stages.prune import Prune
from slimpipe.pipeline.runner import run_stage
from slimpipe.stages.strip import Strip


@pytest.fixture(scope="module")
def pruning_path(tmp_path_factory, tiny_data):
    """A wrapped model pruned to 0.6 on conv/dense and left dense on logits."""
    tmp = tmp_path_factory.mktemp("pruning")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLIMPIPE_QUIET", "1")
        return run_on_tiny(Prune(final_sparsity=0.6, layers=("conv", "dense")), tmp, tiny_data, "prune")[0].path


@pytest.fixture
def pruning(ctx, pruning_path):
    return make_artifact("pruning", pruning_path, fmt="keras", kind="keras:pruning", stage="prune",
                         config={}, parent=None)


def run(stage, art, ctx, folder="strip"):
    ctx.stage_dir = ctx.out_dir / folder
    return run_stage(stage, art, ctx)


def test_strip_removes_wrappers_and_keeps_the_sparse_weights(ctx, pruning):
    wrapped = ctx.keras_model(pruning)
    before = [w.copy() for w in wrapped.get_weights()]

    [out] = run(Strip(), pruning, ctx)

    assert (out.name, out.kind, out.stage, out.parent) == ("pruned", "keras", "strip", "pruning")
    plain = load_keras(out.path)
    assert [layer.name for layer in plain.layers] == ["conv", "pool", "flatten", "dense", "logits"]
    assert not any(isinstance(layer, PruneLowMagnitude) for layer in plain.layers)
    for layer in plain.layers:
        if hasattr(layer, "kernel"):
            source = {getattr(w, "layer", w).name: getattr(w, "layer", w) for w in wrapped.layers}
            inner = source[layer.name]
            np.testing.assert_array_equal(layer.kernel.numpy(), inner.kernel.numpy())
    x = ctx.data.x_test[:16]
    np.testing.assert_allclose(plain.predict(x, verbose=0), wrapped.predict(x, verbose=0), atol=1e-5)

    # The input keeps its wrappers and its weights, and shares no layer with the output.
    assert sum(isinstance(layer, PruneLowMagnitude) for layer in wrapped.layers) == 2
    assert all(np.array_equal(a, b) for a, b in zip(before, wrapped.get_weights()))
    stripped = ctx.keras_model(out)
    assert not {id(layer) for layer in stripped.layers} & {
        id(getattr(layer, "layer", layer)) for layer in wrapped.layers}


def test_meta_measures_every_kernel(ctx, pruning):
    [out] = run(Strip(), pruning, ctx)
    plain = load_keras(out.path)
    layers = {entry["name"]: entry for entry in out.meta["layers"]}
    assert list(layers) == ["conv", "dense", "logits"]
    for name, entry in layers.items():
        kernel = plain.get_layer(name).kernel.numpy()
        assert entry["params"] == kernel.size and entry["zeros"] == int(np.sum(kernel == 0))
        assert entry["sparsity"] == pytest.approx(entry["zeros"] / entry["params"], abs=1e-4)
    assert abs(layers["conv"]["sparsity"] - 0.6) <= 0.03 and abs(layers["dense"]["sparsity"] - 0.6) <= 0.03
    assert layers["logits"]["zeros"] == 0
    zeros = sum(e["zeros"] for e in layers.values())
    params = sum(e["params"] for e in layers.values())
    assert out.meta["sparsity"] == pytest.approx(zeros / params, abs=1e-4)


def test_name_as_names_the_output(ctx, pruning):
    [out] = run(Strip(name_as="sparse"), pruning, ctx)
    assert out.name == "sparse" and out.path.name == "sparse.h5"


def test_plain_model_is_a_config_error(ctx, tiny_model):
    plain = make_artifact("trained", save_keras(tiny_model, ctx.out_dir / "trained.h5"), fmt="keras",
                          kind="keras", stage="train", config={}, parent=None)
    with pytest.raises(ConfigError, match="expected a model with pruning wrappers .*put 'prune' before 'strip'"):
        run(Strip(), plain, ctx)


def test_empty_name_is_a_config_error():
    with pytest.raises(ConfigError, match="name_as must be a non-empty artifact name"):
        Strip(name_as=" ")
