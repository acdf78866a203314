"""The sensitivity stage: each layer alone pruned, clustered and rounded to int8, on the evaluation split."""
import json

import numpy as np
import pytest

from slimpipe.pipeline.errors import ConfigError
from slimpipe.stages.sensitivity import Sensitivity, cluster_kernel, int8_kernel, prune_kernel


def test_kernel_transforms():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 3, 4, 8)).astype("float32")
    p = prune_kernel(w, 0.75)
    assert np.mean(p == 0) == pytest.approx(0.75, abs=1 / w.size)
    assert np.min(np.abs(w[p != 0])) >= np.max(np.abs(w[p == 0]))  # the smallest went
    c = cluster_kernel(w, 16)
    assert np.unique(c).size <= 16 and c.shape == w.shape
    assert np.mean(np.abs(c - w)) < np.mean(np.abs(cluster_kernel(w, 4) - w))
    q = int8_kernel(w)
    scale = np.max(np.abs(w), axis=(0, 1, 2)) / 127
    assert np.all(np.abs(q - w) <= scale / 2 + 1e-7)
    assert all(np.unique(np.round(q[..., k] / scale[k])).size <= 255 for k in range(8))


def test_every_candidate_layer_is_measured_and_the_model_is_unchanged(ctx, tiny_model):
    import tf_keras as keras

    from slimpipe.pipeline.runner import save_source
    from slimpipe.stages.train import Train

    source = save_source(ctx, tiny_model, spec="tiny", width=1, trained=False)
    ctx.stage_dir = ctx.out_dir / "a"
    keras.utils.set_random_seed(0)
    trained = Train(epochs=3, learning_rate=1e-2).run(source, ctx)
    art = trained.artifacts[0]
    before = [w.copy() for w in ctx.keras_model(art).get_weights()]
    ctx.stage_dir = ctx.out_dir / "b"
    stage = Sensitivity(sparsities=(0.5, 0.99), clusters=(8, 2), examples=100)
    result = stage.run(art, ctx)
    table = result.measurements["sensitivity"]
    assert [r["name"] for r in table["layers"]] == ["conv", "dense", "logits"]  # the stem and logits too
    assert table["examples"] == 100 and 0.5 < table["baseline_accuracy"] <= 1
    dense = next(r for r in table["layers"] if r["name"] == "dense")
    assert set(dense["prune"]) == {"0.5", "0.99"} and set(dense["cluster"]) == {"8", "2"}
    assert min(r["prune"]["0.99"] for r in table["layers"]) < table["baseline_accuracy"]
    assert json.loads((ctx.out_dir / "b" / "sensitivity.json").read_text())["layers"] == table["layers"]
    assert not result.artifacts
    assert all(np.array_equal(a, b) for a, b in zip(before, ctx.keras_model(art).get_weights()))


def test_a_model_with_nothing_to_prune_is_refused(tiny_data):
    import tf_keras as keras

    model = keras.Sequential([keras.layers.Input((12, 12, 1)), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(4, name="logits")])
    with pytest.raises(ConfigError, match="no prunable layer"):
        Sensitivity().check(model, tiny_data)


@pytest.mark.parametrize("bad", [{"sparsities": (0.5, 1.0)}, {"clusters": (1,)}, {"examples": 0},
                                 {"int8": "yes"}, {"layers": ("re:(",)}])
def test_bad_parameters(bad):
    with pytest.raises(ConfigError):
        Sensitivity(**bad)
