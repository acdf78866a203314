"""The quantize stage: each mode really yields the weight/IO types it promises, files agree with
the float model, pqat/cqat keep sparsity/shared values, QAT models reload, the input model is
never modified, and unsupported input fails with a ConfigError naming the layer."""
import re

import numpy as np
import pytest

from slimpipe.pipeline.errors import ConfigError
from slimpipe.pipeline.kerasio import clone_with_weights, load_keras, save_keras
from slimpipe.benchmarks.runtimes import open_runtime
from slimpipe.benchmarks.accuracy import top1_agreement
from slimpipe.stages.cluster import Cluster
from slimpipe.stages.quantize import Quantize, tflite_weight_tensors
from slimpipe.pipeline.runner import run_stage
from tests.stages.conftest import keras_artifact
from tests.conftest import TINY_SHAPE

# Dynamic-range quantization leaves tensors under 1024 values in float (TFLite's threshold):
# of the tiny model only the 200x32 "dense" kernel is that large.
BIG = (32, 200)


@pytest.fixture
def trained(trained_path):
    return keras_artifact(trained_path)


def run(stage, art, ctx, folder="quantize"):
    ctx.stage_dir = ctx.out_dir / folder
    return run_stage(stage, art, ctx)


def weights_of(model):
    return [w.copy() for w in model.get_weights()]


def unchanged(before, model):
    return len(before) == len(model.get_weights()) and all(
        np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


def dtype_by_shape(path):
    return {tuple(t["shape"]): t["dtype"] for t in tflite_weight_tensors(path)}


def test_dynamic_has_int8_weights_and_leaves_the_input_alone(ctx, trained):
    source = ctx.keras_model(trained)
    before = weights_of(source)

    [out] = run(Quantize(mode="dynamic"), trained, ctx)

    assert (out.name, out.format, out.parent) == ("trained.dynamic.tflite", "tflite", "trained")
    assert dtype_by_shape(out.path)[BIG] == "int8"
    assert "int8" in out.meta["weight_dtypes"]
    check = out.meta["validation"]
    assert check["passed"] and check["top1_agreement"] >= 0.97 and check["samples"] == len(ctx.data.x_test)
    assert unchanged(before, source)


def test_int8_with_int8_io_runs_with_float_in_and_out(ctx, trained):
    [out] = run(Quantize(mode="int8", io="int8", representative_samples=100), trained, ctx)

    assert out.name == "trained.int8.io-int8.tflite"
    assert out.meta["weight_dtypes"] == ["int8"] and out.meta["io"] == "int8"
    rt = open_runtime(out.path, "tflite")
    assert rt.interpreter.get_input_details()[0]["dtype"] == np.int8
    assert rt.interpreter.get_output_details()[0]["dtype"] == np.int8
    x = ctx.data.x_test[:32]
    logits = rt.predict(x)
    assert logits.dtype == np.float32 and logits.shape == (32, 4)
    reference = ctx.keras_model(trained).predict(x, verbose=0)
    assert top1_agreement(logits, reference) >= 0.9


def test_int8_with_float_io_keeps_float_edges(ctx, trained):
    [out] = run(Quantize(mode="int8", representative_samples=100), trained, ctx)

    assert out.name == "trained.int8.tflite" and out.meta["weight_dtypes"] == ["int8"]
    rt = open_runtime(out.path, "tflite")
    assert rt.interpreter.get_input_details()[0]["dtype"] == np.float32
    assert rt.interpreter.get_output_details()[0]["dtype"] == np.float32
    assert out.meta["validation"]["passed"]


def test_float16_has_float16_weights(ctx, trained):
    [out] = run(Quantize(mode="float16"), trained, ctx)

    assert out.meta["weight_dtypes"] == ["float16"]
    assert out.meta["validation"]["top1_agreement"] >= 0.97


def test_qat_saves_a_reloadable_model_and_an_int8_file(ctx, trained):
    source = ctx.keras_model(trained)
    before = weights_of(source)

    keras_art, tfl = run(Quantize(mode="qat", epochs=1), trained, ctx)

    assert (keras_art.name, keras_art.kind, keras_art.parent) == ("trained.qat", "keras:qat", "trained")
    assert (tfl.name, tfl.parent, tfl.parent_id) == ("trained.qat.tflite", "trained.qat", keras_art.id)
    reloaded = load_keras(keras_art.path)
    assert any(type(layer).__name__ == "QuantizeWrapperV2" for layer in reloaded.layers)
    dtypes = dtype_by_shape(tfl.path)
    assert dtypes[BIG] == "int8" and dtypes[(8, 3, 3, 1)] == "int8" and tfl.meta["weight_dtypes"] == ["int8"]
    assert tfl.meta["validation"]["top1_agreement"] >= 0.9
    assert unchanged(before, source)
    assert all(type(layer).__name__ not in ("QuantizeWrapperV2", "QuantizeAnnotate") for layer in source.layers)


def test_pqat_keeps_the_sparsity_of_a_pruned_input(ctx, trained_path, tmp_path):
    pruned = clone_with_weights(load_keras(trained_path))
    for layer in pruned.layers:
        if hasattr(layer, "kernel"):
            kernel, bias = layer.get_weights()
            kernel[np.abs(kernel) < np.quantile(np.abs(kernel), 0.7)] = 0.0
            layer.set_weights([kernel, bias])
    art = keras_artifact(save_keras(pruned, tmp_path / "pruned.h5"), "pruned")

    keras_art, tfl = run(Quantize(mode="pqat", epochs=1), art, ctx)

    meta = keras_art.meta
    assert meta["sparsity_in"] >= 0.69
    assert meta["sparsity_out"] >= meta["sparsity_in"] - 0.01
    assert tfl.meta["sparsity"] >= meta["sparsity_in"] - 0.01  # measured in the .tflite itself
    for layer in meta["layers"]:
        assert layer["zeros_out"] >= layer["zeros_in"] * 0.99, layer
    assert load_keras(keras_art.path) is not None
    assert tfl.meta["validation"]["passed"]


def test_sparse_int8_records_its_layout_and_is_no_larger_than_the_converters(ctx, trained_path, tmp_path):
    art = _mostly_zero(trained_path, tmp_path)

    ours = run(Quantize(mode="int8", sparse=True), art, ctx, "smallest")[0]
    theirs = run(Quantize(mode="int8", sparse=True, sparse_layout="converter"), art, ctx, "converter")[0]
    assert ours.name == theirs.name == "pruned.int8.sparse.tflite"
    assert ours.meta["sparse_storage"] and ours.meta["validation"]["passed"]
    assert (ours.meta["sparse_layout"], theirs.meta["sparse_layout"]) == ("smallest", "converter")
    assert theirs.meta["sparse_orders"] == [{"shape": list(BIG), "order": [0, 1]}]
    assert [o["shape"] for o in ours.meta["sparse_orders"]] == [list(BIG)]
    assert ours.path.stat().st_size <= theirs.path.stat().st_size
    assert ours.meta["validation"]["top1_agreement"] == theirs.meta["validation"]["top1_agreement"]


def _mostly_zero(trained_path, tmp_path, zeros=0.9):
    pruned = clone_with_weights(load_keras(trained_path))
    kernel, bias = pruned.get_layer("dense").get_weights()  # BIG: [200, 32] in Keras
    kernel[np.abs(kernel) < np.quantile(np.abs(kernel), zeros)] = 0.0
    pruned.get_layer("dense").set_weights([kernel, bias])
    return keras_artifact(save_keras(pruned, tmp_path / "pruned.h5"), "pruned")


def _outputs(path, x):
    """On LiteRT's builtin kernels: XNNPACK takes only the dense-storage file, and its kernels
    round differently."""
    from slimpipe.benchmarks.accuracy import predict_all

    return predict_all(open_runtime(path, "tflite", threads=1, resolver="builtin"), x)


def _gzip(path):
    import gzip

    return len(gzip.compress(path.read_bytes(), 9))


def test_sparse_both_writes_the_same_int8_model_in_sparse_and_dense_storage(ctx, trained_path, tmp_path):
    art = _mostly_zero(trained_path, tmp_path)

    sparse, dense = run(Quantize(mode="int8", sparse="both", strip_names=True), art, ctx)

    assert (sparse.name, dense.name) == ("pruned.int8.sparse.tflite", "pruned.int8.tflite")
    assert sparse.parent == dense.parent == "pruned"
    assert (sparse.meta["sparse_storage"], dense.meta["sparse_storage"]) == (True, False)
    assert "sparse_orders" in sparse.meta and "sparse_orders" not in dense.meta
    np.testing.assert_array_equal(_outputs(sparse.path, ctx.data.x_test), _outputs(dense.path, ctx.data.x_test))
    assert sparse.path.stat().st_size < dense.path.stat().st_size  # sparse storage: smaller on disk
    assert _gzip(dense.path) < _gzip(sparse.path)  # dense storage: its runs of zeros gzip smaller


def test_sparse_both_converts_one_qat_model_twice(ctx, trained_path, tmp_path):
    art = _mostly_zero(trained_path, tmp_path)

    keras_art, sparse, dense = run(Quantize(mode="pqat", epochs=1, sparse="both"), art, ctx)

    assert (keras_art.name, sparse.name, dense.name) == (
        "pruned.pqat", "pruned.pqat.sparse.tflite", "pruned.pqat.tflite")
    assert sparse.parent == dense.parent == keras_art.name
    assert sparse.meta["sparsity"] == pytest.approx(dense.meta["sparsity"]) and dense.meta["sparsity"] > 0.5
    np.testing.assert_array_equal(_outputs(sparse.path, ctx.data.x_test), _outputs(dense.path, ctx.data.x_test))
    assert dense.meta["validation"]["passed"] and dense.meta["vs_input"]["samples"] == len(ctx.data.x_test)


def test_cqat_keeps_the_clusters(ctx, trained):
    ctx.stage_dir = ctx.out_dir / "cluster"
    [clustered] = run_stage(Cluster(clusters=8, preserve_sparsity=False, epochs=0), trained, ctx)

    keras_art, tfl = run(Quantize(mode="cqat", epochs=1), clustered, ctx)

    for layer in keras_art.meta["layers"]:
        assert layer["unique_in"] <= 8 and layer["unique_out"] <= 8, layer
    reloaded = load_keras(keras_art.path)  # only loads once the centroid variables are stripped
    kernels = [w.numpy() for w in reloaded.weights if w.name.endswith("/kernel:0")]
    assert len(kernels) == 3 and all(np.unique(k).size <= 8 for k in kernels)
    assert tfl.meta["weight_dtypes"] == ["int8"] and tfl.meta["validation"]["passed"]


def bn_model():
    import tf_keras as keras

    return keras.Sequential([
        keras.layers.Input(TINY_SHAPE),
        keras.layers.Flatten(name="flatten"),
        keras.layers.Dense(16, activation="relu", name="dense"),
        keras.layers.BatchNormalization(name="bn_after_dense"),
        keras.layers.Dense(4, name="logits"),
    ], name="bn")


def test_a_layer_tfmot_cannot_quantize_stays_float_and_is_named(ctx, tmp_path):
    art = keras_artifact(save_keras(bn_model(), tmp_path / "bn.h5"), "bn")
    stage = Quantize(mode="qat", min_agreement=0.0)
    note = ("quantize qat: bn_after_dense stay float in the QAT model and its file: tfmot's 8-bit "
            "quantization-aware training does not support them")
    assert stage.check(load_keras(art.path), ctx.data) == [note]  # said before anything trains
    keras_art, tfl = run(stage, art, ctx)
    assert note in ctx.notes
    qat = load_keras(keras_art.path)
    wrapped = {getattr(layer, "layer", layer).name for layer in qat.layers if hasattr(layer, "quantize_config")}
    assert "dense" in wrapped and "logits" in wrapped and "bn_after_dense" not in wrapped
    assert tfl.meta["validation"]["samples"] > 0
    # post-training modes are fine with it
    [out] = run(Quantize(mode="dynamic", min_agreement=0.0), art, ctx)
    assert out.meta["validation"]["samples"] > 0


def test_wrapped_input_is_refused(ctx, tmp_path, trained_path):
    import tensorflow_model_optimization as tfmot

    wrapped = tfmot.sparsity.keras.prune_low_magnitude(clone_with_weights(load_keras(trained_path)))
    art = keras_artifact(save_keras(wrapped, tmp_path / "pruning.h5"), "pruning")
    with pytest.raises(ConfigError, match=r"pruning wrappers on prune_low_magnitude_conv.*put 'strip' after 'prune'"):
        run(Quantize(mode="dynamic"), art, ctx)


def test_disagreement_is_recorded_as_failed_parity_with_a_note(ctx, tiny_model, tmp_path):
    # An untrained model's logits are near-ties: int8 flips many top-1 classes, and 1.0 is strict.
    art = keras_artifact(save_keras(tiny_model, tmp_path / "untrained.h5"), "untrained")
    [out] = run(Quantize(mode="int8", representative_samples=50, min_agreement=1.0), art, ctx)
    check = out.meta["validation"]
    assert check["passed"] is False and check["top1_agreement"] < 1.0 and check["min_agreement"] == 1.0
    [note] = [n for n in ctx.notes if "below min_agreement" in n]
    assert re.match(r"quantize: untrained\.int8\.tflite agrees with its Keras model on 0\.\d+ of top-1 "
                    r"classes \(\d+ samples\), below min_agreement 1\.0: its parity is recorded as failed", note)


@pytest.mark.parametrize("kwargs, field", [
    ({"mode": "int4"}, "mode"),
    ({"io": "uint8"}, "io"),
    ({"mode": "dynamic", "io": "int8"}, "io"),
    ({"epochs": 0}, "epochs"),
    ({"batch_size": 0}, "batch_size"),
    ({"learning_rate": -1e-4}, "learning_rate"),
    ({"representative_samples": 0}, "representative_samples"),
    ({"sparse": 1}, "sparse"),
    ({"sparse": "dense"}, "sparse must be true, false or 'both'"),
    ({"sparse": True, "sparse_layout": "csc"}, "sparse_layout must be one of 'smallest', 'converter'"),
    ({"per_channel": "no"}, "per_channel"),
    ({"min_agreement": 1.5}, "min_agreement"),
    ({"parity_samples": 0}, "parity_samples"),
    ({"space_to_depth_stem": 1}, "space_to_depth_stem"),
    ({"mode": "qat", "space_to_depth_stem": True}, "space_to_depth_stem rewrites the float model"),
])
def test_bad_parameters(kwargs, field):
    with pytest.raises(ConfigError, match=rf"stage 'quantize': {field}\W.*Received"):
        Quantize(**kwargs)


def test_strip_names_gives_a_smaller_file_that_still_passes_parity(ctx, trained):
    [named] = run(Quantize(mode="int8", representative_samples=100), trained, ctx, folder="named")
    [bare] = run(Quantize(mode="int8", representative_samples=100, strip_names=True), trained, ctx,
                 folder="bare")
    assert bare.meta["names_stripped"] and "names_stripped" not in named.meta
    assert bare.path.stat().st_size < named.path.stat().st_size - 300
    assert bare.meta["validation"]["passed"] and bare.meta["weight_dtypes"] == named.meta["weight_dtypes"]
    assert all(t["name"].startswith("tensor") for t in bare.meta["weight_tensors"])
    with pytest.raises(ConfigError, match="strip_names must be true or false"):
        Quantize(strip_names=1)


def conv_kernel(path, shape=(8, 3, 3, 1)):
    """(number of scales, distinct int8 codes) of the tiny model's conv kernel in a .tflite file."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interp = Interpreter(model_path=str(path),
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interp.allocate_tensors()
    [d] = [d for d in interp.get_tensor_details() if tuple(d["shape"]) == shape]
    return len(d["quantization_parameters"]["scales"]), np.unique(interp.get_tensor(d["index"])).size


def test_per_tensor_int8_has_one_scale_per_kernel(ctx, trained):
    [channel] = run(Quantize(mode="int8", representative_samples=100), trained, ctx, folder="pc")
    [tensor] = run(Quantize(mode="int8", representative_samples=100, per_channel=False), trained, ctx,
                   folder="pt")

    assert tensor.name == "trained.int8.per-tensor.tflite" and tensor.meta["validation"]["passed"]
    assert conv_kernel(channel.path)[0] == 8 and conv_kernel(tensor.path)[0] == 1


def test_per_tensor_cqat_keeps_k_int8_codes_and_reloads(ctx, trained):
    ctx.stage_dir = ctx.out_dir / "cluster"
    [clustered] = run_stage(Cluster(clusters=8, preserve_sparsity=False, epochs=0), trained, ctx)

    _, channel = run(Quantize(mode="cqat", epochs=1), clustered, ctx, folder="pc")
    keras_art, tensor = run(Quantize(mode="cqat", epochs=1, per_channel=False), clustered, ctx, folder="pt")

    # Per channel, each filter's scale maps the 8 shared values to codes of its own.
    scales, codes = conv_kernel(channel.path)
    assert scales == 8 and codes > 8
    assert conv_kernel(tensor.path) == (1, 8)
    assert tensor.meta["validation"]["passed"] and tensor.meta["weight_dtypes"] == ["int8"]
    # The saved file loads with its per-tensor quantizers and predicts as the model in memory.
    x = ctx.data.x_test[:32]
    in_memory = ctx.keras_model(keras_art)
    assert np.allclose(in_memory.predict(x, verbose=0), load_keras(keras_art.path).predict(x, verbose=0))
    with pytest.raises(ConfigError, match="per_channel=false needs an int8 mode"):
        Quantize(mode="float16", per_channel=False)


@pytest.mark.parametrize("mode", ["qat", "pqat"])
def test_per_tensor_qat_modes_have_one_scale_per_kernel(ctx, trained, mode):
    keras_art, tfl = run(Quantize(mode=mode, epochs=1, per_channel=False), trained, ctx, folder=mode)

    assert tfl.name == f"trained.{mode}.per-tensor.tflite" and tfl.meta["per_channel"] is False
    assert conv_kernel(tfl.path)[0] == 1 and tfl.meta["validation"]["passed"]
    x = ctx.data.x_test[:32]  # the saved file loads (per-tensor quantizers) and predicts the same
    assert np.allclose(ctx.keras_model(keras_art).predict(x, verbose=0),
                       load_keras(keras_art.path).predict(x, verbose=0))


def test_space_to_depth_stem_file_counts_its_own_macs_and_agrees_with_the_model(ctx, trained):
    from slimpipe.benchmarks.complexity import keras_complexity

    source = ctx.keras_model(trained)
    before = weights_of(source)

    [out] = run(Quantize(mode="int8", representative_samples=100, space_to_depth_stem=True), trained, ctx)

    assert out.name == "trained.int8.s2d.tflite" and out.meta["validation"]["passed"]
    assert out.meta["space_to_depth_stem"]["conv"] == "conv"
    # The tiny model's conv: 3x3x1 -> 8 filters on a 10x10 map (7,200 MACs). Rewritten: a 2x2
    # conv from 4 to 32 channels on 5x5 (12,800 MACs) and 16/9 the weights.
    counted = keras_complexity(source)
    assert out.meta["complexity"]["macs"] == counted["macs"] - 7_200 + 12_800
    assert out.meta["complexity"]["params"] == counted["params"] - (72 + 8) + (2 * 2 * 4 * 32 + 32)
    ops = [op["op_name"] for op in open_runtime(out.path, "tflite").interpreter._get_ops_details()]
    assert "SPACE_TO_DEPTH" in ops and ops.count("DELEGATE") == 1
    assert any("computes conv + pool on a space-to-depth view" in n for n in ctx.notes)
    assert unchanged(before, source)


def test_space_to_depth_stem_leaves_other_models_as_they_are_with_a_note(ctx, tmp_path):
    import tf_keras as keras

    L = keras.layers
    model = keras.Sequential([L.Input(TINY_SHAPE), L.Conv2D(8, 3, strides=2, activation="relu"),
                              L.Flatten(), L.Dense(4)], name="strided")
    art = keras_artifact(save_keras(model, tmp_path / "strided.h5"), "strided")

    [out] = run(Quantize(mode="dynamic", space_to_depth_stem=True), art, ctx)

    assert out.name == "strided.dynamic.tflite" and "space_to_depth_stem" not in out.meta
    assert any("space_to_depth_stem left strided as it is" in n and "strides (2, 2)" in n for n in ctx.notes)
