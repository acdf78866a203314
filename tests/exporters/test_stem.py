"""The space-to-depth stem rewrite: the rewritten model computes the original's function (for
several kernels, paddings, channel counts, activations, Sequential and functional models), the
input model is left alone, models without the pattern are named and left as they are, a wrong
rewrite cannot pass silently, and the int8 file runs as one XNNPACK graph."""
import numpy as np
import pytest

from slimpipe.pipeline.errors import ExportValidationError
from slimpipe.exporters import stem
from slimpipe.exporters.stem import space_to_depth_stem
from slimpipe.exporters.tflite import export_tflite
from slimpipe.benchmarks.runtimes import open_runtime
from slimpipe.benchmarks.accuracy import top1_agreement


def _model(shape=(12, 12, 1), kernel=3, padding="valid", filters=6, activation="relu",
           use_bias=True, functional=False, seed=0):
    import tf_keras as keras

    L = keras.layers
    keras.utils.set_random_seed(seed)
    layers = [L.Conv2D(filters, kernel, padding=padding, activation=activation, use_bias=use_bias, name="c1"),
              L.MaxPooling2D(name="p1"), L.Conv2D(4, 3, activation="relu", name="c2"),
              L.Flatten(name="flat"), L.Dense(3, name="logits")]
    if not functional:
        model = keras.Sequential([L.Input(shape), *layers], name="seq")
    else:
        x = inp = L.Input(shape)
        for layer in layers:
            x = layer(x)
        model = keras.Model(inp, x, name="fun")
    # Non-zero biases, so a bias in the wrong group shows.
    w = model.get_layer("c1").get_weights()
    if use_bias:
        w[1] = np.random.default_rng(seed).normal(0, 0.3, w[1].shape).astype("float32")
    model.get_layer("c1").set_weights(w)
    return model


@pytest.mark.parametrize("kw, new_kernel", [
    ({}, [2, 2, 4, 24]),
    ({"padding": "same"}, [2, 2, 4, 24]),
    ({"kernel": 5}, [3, 3, 4, 24]),
    ({"kernel": 1}, [1, 1, 4, 24]),
    ({"shape": (16, 12, 3), "activation": "tanh"}, [2, 2, 12, 24]),
    ({"use_bias": False, "activation": None}, [2, 2, 4, 24]),
    ({"functional": True, "padding": "same", "shape": (10, 14, 2)}, [2, 2, 8, 24]),
])
def test_rewritten_model_computes_the_same_function(kw, new_kernel):
    model = _model(**kw)
    before = [w.copy() for w in model.get_weights()]
    x = np.random.default_rng(1).normal(0, 1, (16, *model.input_shape[1:])).astype("float32")

    new, info = space_to_depth_stem(model)

    assert (info["conv"], info["pool"], info["filters"], info["new_kernel"]) == ("c1", "p1", 6, new_kernel)
    assert new.get_layer("c1_s2d").get_weights()[0].shape == tuple(new_kernel)
    np.testing.assert_allclose(new.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-5)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    assert len(model.get_layer("c1").inbound_nodes) == 1  # the input model's layers were not reused


def _bad(case):
    import tf_keras as keras

    L = keras.layers
    inp = L.Input((12, 12, 1))
    if case == "stride":
        return keras.Sequential([inp, L.Conv2D(4, 3, strides=2), L.Flatten()])
    if case == "even kernel":
        return keras.Sequential([inp, L.Conv2D(4, 2), L.MaxPooling2D()])
    if case == "odd input":
        return keras.Sequential([L.Input((11, 12, 1)), L.Conv2D(4, 3), L.MaxPooling2D()])
    if case == "batch norm":
        return keras.Sequential([inp, L.Conv2D(4, 3), L.BatchNormalization(), L.MaxPooling2D()])
    if case == "3x3 pool":
        return keras.Sequential([inp, L.Conv2D(4, 3), L.MaxPooling2D(3)])
    if case == "depthwise":
        return keras.Sequential([inp, L.DepthwiseConv2D(3), L.MaxPooling2D()])
    if case == "two readers of the input":
        a = L.Flatten()(L.MaxPooling2D()(L.Conv2D(4, 3)(inp)))
        return keras.Model(inp, L.Concatenate()([a, L.Flatten()(inp)]))
    if case == "two readers of the conv":
        c = L.Conv2D(4, 3)(inp)
        return keras.Model(inp, L.Add()([L.MaxPooling2D()(c), L.MaxPooling2D()(c)]))
    raise AssertionError(case)


@pytest.mark.parametrize("case, why", [
    ("stride", "strides (2, 2)"),
    ("even kernel", "needs an odd kernel"),
    ("odd input", "11x12 (needs even height and width)"),
    ("batch norm", "feeds batch_normalization (BatchNormalization), not one MaxPooling2D"),
    ("3x3 pool", "pools (3, 3)"),
    ("depthwise", "(DepthwiseConv2D), not one Conv2D"),
    ("two readers of the input", "not one Conv2D"),
    ("two readers of the conv", "not one MaxPooling2D"),
])
def test_models_without_the_stem_are_named_and_left_alone(case, why):
    new, reason = space_to_depth_stem(_bad(case))
    assert new is None and why in reason


def test_a_wrong_rewrite_raises_instead_of_returning_a_different_model(monkeypatch):
    right = stem._stem_weights

    def transposed(conv):  # rows and columns of the new kernel swapped: a plausible indexing bug
        kernel, bias = right(conv)
        return np.ascontiguousarray(kernel.transpose(1, 0, 2, 3)), bias

    # (Exchanging whole groups would not be a bug: the max over the groups does not see it.)
    monkeypatch.setattr(stem, "_stem_weights", transposed)
    with pytest.raises(ExportValidationError, match=r"space_to_depth_stem: the rewritten 'seq' differs"):
        space_to_depth_stem(_model())


def test_int8_file_is_one_xnnpack_graph_starting_with_space_to_depth(tmp_path):
    model = _model(shape=(28, 28, 1), filters=8)
    new, _ = space_to_depth_stem(model)
    x = np.random.default_rng(2).random((64, 28, 28, 1), dtype=np.float32)
    path = export_tflite(new, tmp_path / "m.int8.tflite", mode="int8", representative=x, io="float")

    rt = open_runtime(path, "tflite")
    ops = [op["op_name"] for op in rt.interpreter._get_ops_details()]
    assert ops[:3] == ["QUANTIZE", "SPACE_TO_DEPTH", "CONV_2D"], ops
    assert not {"SHAPE", "PACK", "STRIDED_SLICE"} & set(ops), ops  # a dynamic reshape splits the graph
    assert ops.count("DELEGATE") == 1 and rt.delegate == "xnnpack"
    assert top1_agreement(rt.predict(x), model.predict(x, verbose=0)) >= 0.95
