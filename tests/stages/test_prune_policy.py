"""prune's pruning_policy="xnnpack": tfmot's PruneForLatencyOnXNNPack as a checked option."""
import re

import numpy as np
import pytest
from tensorflow_model_optimization.python.core.sparsity.keras import pruning_wrapper

import tf_keras as keras

from slimpipe.pipeline.artifacts import make_artifact
from slimpipe.pipeline.context import RunContext
from slimpipe.pipeline.data import Dataset
from slimpipe.pipeline.errors import ConfigError
from slimpipe.pipeline.kerasio import load_keras, save_keras
from slimpipe.pipeline.models import build_model
from slimpipe.pipeline.runner import run_stage
from slimpipe.stages.prune import Prune
from tests.conftest import make_tiny_model


@pytest.fixture(autouse=True)
def quiet(monkeypatch):
    monkeypatch.setenv("SLIMPIPE_QUIET", "1")


def _xnnpack_shaped():
    """Padded 3x3 stride-2 stem, depthwise and 1x1 convs, a residual Add, global mean."""
    L = keras.layers
    keras.utils.set_random_seed(0)
    inp = L.Input((16, 16, 3))
    x = L.ZeroPadding2D(1)(inp)
    x = L.Conv2D(8, 3, strides=2, padding="valid", activation="relu", name="stem")(x)
    x = L.DepthwiseConv2D(3, padding="same", activation="relu", name="dw1")(x)
    x = L.Conv2D(32, 1, activation="relu", name="pw1")(x)
    y = L.DepthwiseConv2D(3, padding="same", name="dw2")(x)
    y = L.Conv2D(32, 1, name="pw2")(y)
    x = L.Add()([x, y])
    x = L.GlobalAveragePooling2D(keepdims=True)(x)
    x = L.Flatten()(x)
    return keras.Model(inp, L.Dense(4, name="logits")(x))


def _art(tmp_path, model, name="trained"):
    return make_artifact(name, save_keras(model, tmp_path / f"{name}.h5"), fmt="keras", kind="keras",
                         stage="train", config={}, parent=None, meta={"trained": True})


def test_unknown_policy_is_refused():
    with pytest.raises(ConfigError, match="pruning_policy must be one of 'xnnpack' or unset"):
        Prune(pruning_policy="gpu")


def test_a_model_xnnpack_cannot_run_sparse_passes_unpruned_with_the_reason(tmp_path, tiny_data):
    ctx = RunContext(data=tiny_data, out_dir=tmp_path)
    ctx.stage_dir = tmp_path / "prune"
    stage, model = Prune(pruning_policy="xnnpack", epochs=1), make_tiny_model()
    [warning] = stage.check(model, tiny_data)  # said before anything trains
    assert re.search(r"pruning_policy='xnnpack' prunes only layers that XNNPACK's sparse inference can "
                     r"run, and it cannot run 'tiny' \(tfmot: .*Conv2D 3x3.*\): no layer was pruned", warning)
    [out] = run_stage(stage, _art(tmp_path, model), ctx)
    assert warning in ctx.notes
    assert out.meta["achieved_sparsity"] == 0 and out.meta["layers"] == {}
    pruned = load_keras(out.path)
    assert not any(isinstance(l, pruning_wrapper.PruneLowMagnitude) for l in pruned.layers)
    assert all(np.array_equal(a, b) for a, b in zip(pruned.get_weights(), model.get_weights()))


def test_only_the_1x1_convs_are_pruned(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((128, 16, 16, 3), dtype=np.float32)
    y = rng.integers(0, 4, 128)
    data = Dataset("fake", x, y, x[:32], y[:32], labels=("a", "b", "c", "d"))
    ctx = RunContext(data=data, out_dir=tmp_path)
    ctx.stage_dir = tmp_path / "prune"
    (out,) = run_stage(Prune(pruning_policy="xnnpack", final_sparsity=0.8, epochs=2),
                       _art(tmp_path, _xnnpack_shaped()), ctx)
    model = load_keras(out.path)
    wrapped = {l.layer.name for l in model.layers if isinstance(l, pruning_wrapper.PruneLowMagnitude)}
    assert wrapped == {"pw1", "pw2"}
    assert set(out.meta["layers"]) == {"pw1", "pw2"}
    assert all(abs(s - 0.8) < 0.05 for s in out.meta["layers"].values())


@pytest.mark.parametrize("shape", [(28, 28, 1), (32, 32, 3)])
def test_mobilenet_v2_is_a_graph_the_xnnpack_policy_accepts(shape):
    import tensorflow_model_optimization as tfmot

    model = build_model("mobilenet_v2", shape, 10, width=0.35)
    policy = tfmot.sparsity.keras.PruneForLatencyOnXNNPack()
    policy.ensure_model_supports_pruning(model)  # raises ValueError otherwise
    assert sum(policy.allow_pruning(layer) for layer in model.layers) == 34  # 1x1 convs
