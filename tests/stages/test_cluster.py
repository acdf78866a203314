"""The cluster stage: kernels really end with <= clusters values, a pruned model stays sparse,
the input model is never modified, and bad parameters fail before any work."""
import numpy as np
import pytest

from slimpipe.pipeline.errors import ConfigError
from slimpipe.pipeline.kerasio import clone_with_weights, load_keras, save_keras
from slimpipe.stages.cluster import Cluster
from slimpipe.pipeline.runner import run_stage
from tests.stages.conftest import keras_artifact

KERNELS = ("conv", "dense", "logits")


def run(stage, art, ctx):
    ctx.stage_dir = ctx.out_dir / "cluster"
    return run_stage(stage, art, ctx)


def kernels(path):
    model = load_keras(path)
    return {layer.name: layer.kernel.numpy() for layer in model.layers if hasattr(layer, "kernel")}


def test_every_kernel_has_at_most_clusters_values_and_the_input_is_untouched(ctx, trained_path):
    art = keras_artifact(trained_path)
    source = ctx.keras_model(art)
    before = [w.copy() for w in source.get_weights()]

    [out] = run(Cluster(clusters=8, preserve_sparsity=False, epochs=1), art, ctx)

    assert (out.name, out.kind, out.parent) == ("clustered", "keras", "trained")
    found = kernels(out.path)
    for name in KERNELS:
        assert np.unique(found[name]).size <= 8, name
    meta = {entry["name"]: entry for entry in out.meta["layers"]}
    assert set(meta) == set(KERNELS) and out.meta["clusters"] == 8
    for name in KERNELS:  # the meta is measured, not assumed
        assert meta[name]["unique_values"] == np.unique(found[name]).size
        assert meta[name]["params"] == found[name].size
    assert all(np.array_equal(a, b) for a, b in zip(before, source.get_weights()))
    assert all(type(layer).__name__ != "ClusterWeights" for layer in source.layers)


def test_preserve_sparsity_keeps_a_pruned_model_sparse(ctx, trained_path, tmp_path):
    pruned = clone_with_weights(load_keras(trained_path))
    dense = pruned.get_layer("dense")
    kernel, bias = dense.get_weights()
    kernel[np.abs(kernel) < np.quantile(np.abs(kernel), 0.7)] = 0.0
    dense.set_weights([kernel, bias])
    art = keras_artifact(save_keras(pruned, tmp_path / "pruned.h5"), "pruned")

    [out] = run(Cluster(clusters=8, preserve_sparsity=True, layers=("dense",), epochs=1), art, ctx)

    found = kernels(out.path)
    assert np.mean(found["dense"] == 0) >= 0.69
    assert np.unique(found["dense"]).size <= 8 + 1
    # only the named layer was clustered
    assert np.unique(found["conv"]).size > 9
    assert [e["name"] for e in out.meta["layers"]] == ["dense"]
    assert out.meta["layers"][0]["sparsity"] >= 0.69


def test_unknown_layer_names_are_listed(ctx, trained_path):
    with pytest.raises(ConfigError, match=r"'nope' selects none of the layers this stage can work on \(conv, dense, logits\)"):
        run(Cluster(layers=("dense", "nope")), keras_artifact(trained_path), ctx)


@pytest.mark.parametrize("kwargs, field", [
    ({"clusters": 1, "preserve_sparsity": False}, "clusters"),
    ({"clusters": 2}, "clusters"),  # preserve_sparsity needs a centroid besides zero
    ({"clusters": 8.0}, "clusters"),
    ({"init": "kmeans"}, "init"),
    ({"epochs": -1}, "epochs"),
    ({"batch_size": 0}, "batch_size"),
    ({"learning_rate": 0}, "learning_rate"),
    ({"preserve_sparsity": "yes"}, "preserve_sparsity"),
    ({"layers": ("dense", 3)}, "layers"),
])
def test_bad_parameters(kwargs, field):
    with pytest.raises(ConfigError, match=rf"stage 'cluster': {field} .*Received"):
        Cluster(**kwargs)


def test_two_clusters_without_sparsity_and_lists_from_recipes():
    assert Cluster(clusters=2, preserve_sparsity=False).clusters == 2
    assert Cluster(layers=["dense"]).layers == ("dense",)


def test_layer_clusters_gives_a_layer_its_own_count(ctx, trained_path):
    art = keras_artifact(trained_path)
    [out] = run(Cluster(clusters=4, preserve_sparsity=False, epochs=0, layer_clusters={"dense": 16}), art, ctx)
    found = kernels(out.path)
    assert np.unique(found["conv"]).size <= 4 and np.unique(found["logits"]).size <= 4
    assert 4 < np.unique(found["dense"]).size <= 16
    assert {e["name"]: e["clusters"] for e in out.meta["layers"]} == {"conv": 4, "dense": 16, "logits": 4}


def test_layer_clusters_are_checked():
    with pytest.raises(ConfigError, match="layer_clusters"):
        Cluster(layer_clusters={"dense": 1})
    with pytest.raises(ConfigError, match="selects none"):
        Cluster(layer_clusters={"nope": 8}).check(__import__("tests.conftest", fromlist=["x"]).make_tiny_model(), None)
