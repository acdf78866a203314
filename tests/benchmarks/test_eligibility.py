"""Eligibility labels read from real exported files: which layers a sparse kernel can speed up."""
import slimpipe.pipeline  # noqa: F401

import numpy as np
import pytest

from slimpipe.benchmarks.eligibility import eligibility
from slimpipe.exporters.onnx import export_onnx
from slimpipe.exporters.tflite import export_tflite
from slimpipe.pipeline.errors import ConfigError
from slimpipe.pipeline.kerasio import save_keras


def _keras():
    import tf_keras as keras

    return keras


def _zero(layer, fraction, seed=0, block_rows=1):
    """Zero `fraction` of a layer's kernel at random, in blocks of `block_rows` consecutive
    kernel rows (Keras rows = inputs: TFLite's FC weight is [out, in], so 4 rows -> 1x4 blocks)."""
    kernel, *rest = layer.get_weights()
    flat = kernel.reshape(-1, kernel.shape[-1])
    keep = np.random.default_rng(seed).random((flat.shape[0] // block_rows, flat.shape[1])) >= fraction
    flat = flat * np.repeat(keep, block_rows, axis=0)
    layer.set_weights([flat.reshape(kernel.shape), *rest])


def _mlp(block_rows):
    keras = _keras()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.layers.Input((64,)),
                              keras.layers.Dense(128, activation="relu", name="fc1"),
                              keras.layers.Dense(4, name="logits")])
    _zero(model.get_layer("fc1"), 0.8, block_rows=block_rows)
    return model


def _mobilenet(stem="explicit", channels=3, pw_zeros=0.85):
    """3x3 stride-2 stem, depthwise, 1x1 convs, a residual ADD and a global mean: the shape of
    graph XNNPACK runs sparse. stem="same" gives the stem TF SAME padding instead of PAD+VALID."""
    keras = _keras()
    L = keras.layers
    keras.utils.set_random_seed(0)
    inp = L.Input((16, 16, channels))
    x = L.ZeroPadding2D(1)(inp) if stem == "explicit" else inp
    x = L.Conv2D(8, 3, strides=2, padding="valid" if stem == "explicit" else "same",
                 activation="relu", name="stem")(x)
    x = L.DepthwiseConv2D(3, padding="same", activation="relu", name="dw1")(x)
    x = L.Conv2D(32, 1, activation="relu", name="pw1")(x)
    y = L.DepthwiseConv2D(3, padding="same", name="dw2")(x)
    y = L.Conv2D(32, 1, name="pw2")(y)
    x = L.Add()([x, y])
    x = L.GlobalAveragePooling2D(keepdims=True)(x)
    x = L.Flatten()(x)
    model = keras.Model(inp, L.Dense(4, name="logits")(x))
    for name in ("pw1", "pw2"):
        _zero(model.get_layer(name), pw_zeros, seed=len(name))
    return model


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eligibility")
    mb = _mobilenet()
    rep = np.random.default_rng(0).random((16, 16, 16, 3)).astype("float32")
    return {
        "fc_block": export_tflite(_mlp(4), tmp / "fc_block.tflite", sparse=True),
        "fc_random": export_tflite(_mlp(1), tmp / "fc_random.tflite", sparse=True),
        "mb_sparse": export_tflite(mb, tmp / "mb.sparse.tflite", sparse=True),
        "mb_dense": export_tflite(mb, tmp / "mb.tflite"),
        "mb_int8": export_tflite(mb, tmp / "mb.int8.tflite", mode="int8", sparse=True,
                                 representative=rep),
        "mb_same": export_tflite(_mobilenet(stem="same"), tmp / "same.tflite", sparse=True),
        "mb_gray": export_tflite(_mobilenet(channels=1), tmp / "gray.tflite", sparse=True),
        "mb_half": export_tflite(_mobilenet(pw_zeros=0.5), tmp / "half.tflite", sparse=True),
        "mb_onnx": export_onnx(mb, tmp / "mb.onnx"),
        "mb_keras": save_keras(mb, tmp / "mb.h5"),
    }


def _by_op(result, op):
    return [l for l in result["layers"] if l["op"] == op]


def _pointwise(result):
    return [l for l in _by_op(result, "CONV_2D") if l["sparsity"] > 0.3]


def test_block_sparse_fully_connected_uses_the_builtin_sparse_kernel(files):
    res = eligibility(files["fc_block"], "tflite")
    fc1, logits = _by_op(res, "FULLY_CONNECTED")
    assert fc1["sparse_storage"] and not fc1["densify"] and fc1["sparse_fc_block"] == "1x4"
    assert fc1["label"] == "latency-eligible" and "1x4" in fc1["reason"]
    assert fc1["sparsity"] == pytest.approx(0.8, abs=0.05)
    assert logits["label"] == "dense" and not logits["sparse_storage"]
    assert res["summary"]["latency-eligible"] == 1 and res["summary"]["densify_ops"] == 0


def test_random_sparse_fully_connected_is_densified_so_size_only(files):
    res = eligibility(files["fc_random"], "tflite")
    fc1 = _by_op(res, "FULLY_CONNECTED")[0]
    assert fc1["sparse_storage"] and fc1["densify"] and fc1["sparse_fc_block"] is None
    assert fc1["label"] == "size-only" and "DENSIFY" in fc1["reason"]
    assert res["summary"]["latency-eligible"] == 0 and res["summary"]["densify_ops"] == 1


def test_mobilenet_like_graph_is_an_xnnpack_sparse_subgraph(files):
    res = eligibility(files["mb_sparse"], "tflite")
    (sub,) = res["summary"]["xnnpack_subgraphs"]
    assert sub["ok"] and sub["zeros_1x1"] >= 2 / 3
    pw = _pointwise(res)
    assert len(pw) == 2
    for layer in pw:
        assert layer["xnnpack_sparse_subgraph"] and layer["densify"]
        assert layer["label"] == "latency-eligible", layer
    dw = _by_op(res, "DEPTHWISE_CONV_2D")
    assert len(dw) == 2 and all(l["xnnpack_sparse_subgraph"] and l["label"] == "dense" for l in dw)
    head = _by_op(res, "FULLY_CONNECTED")[0]
    assert not head["xnnpack_sparse_subgraph"]  # after the mean: outside the subgraph


def test_same_graph_stored_dense_is_size_only(files):
    res = eligibility(files["mb_dense"], "tflite")
    pw = _pointwise(res)
    assert len(pw) == 2
    assert all(l["xnnpack_sparse_subgraph"] and not l["sparse_storage"] for l in pw)
    assert all(l["label"] == "size-only" and "sparse storage" in l["reason"] for l in pw)


@pytest.mark.parametrize("name, why", [
    ("mb_same", "no 3x3 stride-2 CONV_2D stem"),   # TF SAME stem: no explicit 1-pixel padding
    ("mb_gray", "no 3x3 stride-2 CONV_2D stem"),   # 1 input channel, not 3
    ("mb_half", "under XNNPACK's 2/3"),            # 1x1 convs only half zeros
    ("mb_int8", "int8"),                           # int8 weights: no XNNPACK sparse path
])
def test_graphs_outside_the_xnnpack_rules_are_size_only(files, name, why):
    res = eligibility(files[name], "tflite")
    pw = _pointwise(res)
    assert len(pw) == 2
    for layer in pw:
        assert not layer["xnnpack_sparse_subgraph"]
        assert layer["label"] == "size-only" and why in layer["reason"], layer["reason"]
    assert res["summary"]["latency-eligible"] == 0


def test_int8_weights_are_reported_as_int8(files):
    res = eligibility(files["mb_int8"], "tflite")
    assert {l["weights_dtype"] for l in res["layers"]} == {"int8"}
    (sub,) = res["summary"]["xnnpack_subgraphs"]
    assert not sub["ok"] and "float32/float16 only" in sub["reason"]


def test_onnx_is_always_size_only(files):
    res = eligibility(files["mb_onnx"], "onnx")
    labels = {l["label"] for l in res["layers"]}
    assert labels == {"size-only", "dense"}
    sparse = [l for l in res["layers"] if l["label"] == "size-only"]
    assert len(sparse) == 2 and all("onnxruntime#2121" in l["reason"] for l in sparse)
    assert all(l["op"] == "Conv" and l["densify"] is None for l in sparse)


def test_keras_is_not_applicable_and_bad_input_is_rejected(files, tmp_path):
    res = eligibility(files["mb_keras"], "keras")
    assert res["layers"] == [] and res["summary"]["applicable"] is False
    with pytest.raises(ConfigError, match="fmt must be"):
        eligibility(files["mb_sparse"], "tf")
    with pytest.raises(ConfigError, match="does not exist"):
        eligibility(tmp_path / "missing.tflite", "tflite")


def _tfmot_pruned_fc(block, sparsity, path, rows=64, **export):
    """A 64-input Dense layer pruned by tfmot with `block_size=block`, stripped and exported."""
    import tensorflow_model_optimization as tfmot

    keras = _keras()
    keras.utils.set_random_seed(0)
    wrapped = tfmot.sparsity.keras.prune_low_magnitude(
        keras.layers.Dense(128, activation="relu", name="fc1"), block_size=block,
        pruning_schedule=tfmot.sparsity.keras.ConstantSparsity(sparsity, 0, frequency=1))
    model = keras.Sequential([keras.layers.Input((64,)), wrapped, keras.layers.Dense(4)])
    model.compile("sgd", "mse")
    x = np.random.default_rng(0).random((rows, 64)).astype("float32")
    model.fit(x, x[:, :4], epochs=1, batch_size=32, verbose=0,
              callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
    if export.get("mode") == "int8":
        export["representative"] = x[:64]
    return export_tflite(tfmot.sparsity.keras.strip_pruning(model), path, sparse=True, **export)


def test_tfmot_block_4x1_on_a_dense_kernel_is_tflite_1x4(tmp_path):
    """Keras stores a Dense kernel [in, out], TFLite [out, in]: tfmot's block_size=(4, 1) is
    the 1x4 block the builtin sparse kernel reads; (1, 4) is not and gets densified."""
    labels = {}
    for block in ((4, 1), (1, 4)):
        path = _tfmot_pruned_fc(block, 0.8, tmp_path / f"{block}.tflite")
        labels[block] = _by_op(eligibility(path, "tflite"), "FULLY_CONNECTED")[0]
    assert labels[(4, 1)]["sparse_fc_block"] == "1x4" and labels[(4, 1)]["label"] == "latency-eligible"
    assert labels[(1, 4)]["densify"] and labels[(1, 4)]["label"] == "size-only"
    assert "block_size=(4, 1)" in labels[(1, 4)]["reason"]


def test_tfmot_block_16x1_on_a_dense_kernel_is_stored_as_int8_1x16_blocks(tmp_path):
    """tfmot's block_size=(16, 1) (the prune stage's layer_block_size={fc1 = [16, 1]}) gives
    the 1x16 blocks TFLite stores int8 FULLY_CONNECTED weights in: one index per 16 weights, so
    a far smaller file than the same sparsity weight by weight."""
    sizes, labels = {}, {}
    for block in ((16, 1), (1, 1)):
        path = _tfmot_pruned_fc(block, 0.85, tmp_path / f"{block}.tflite", rows=256, mode="int8")
        sizes[block] = path.stat().st_size
        labels[block] = _by_op(eligibility(path, "tflite"), "FULLY_CONNECTED")[0]
    assert labels[(16, 1)]["weights_dtype"] == "int8" and labels[(16, 1)]["sparse_storage"]
    assert labels[(16, 1)]["sparse_fc_block"] == "1x16"
    assert labels[(1, 1)]["sparse_fc_block"] != "1x16"
    # 8192 weights, 85% zeros: ~1229 non-zeros with a uint8 index each vs ~77 block indices
    assert sizes[(1, 1)] - sizes[(16, 1)] > 900
