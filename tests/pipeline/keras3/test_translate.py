"""pipeline.keras3: Keras 3 models -> tf_keras -> Keras 3, outputs equal within 1e-5 of scale."""
import os

import numpy as np
import pytest

import slimpipe.pipeline  # noqa: F401  (legacy Keras before TensorFlow)
import keras
import tf_keras

from slimpipe.pipeline.errors import ConfigError
from slimpipe.pipeline.keras3.check import outputs, sample_inputs
from slimpipe.pipeline.models import load_user_model

L = keras.layers
pytestmark = pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file")


def two_branches():
    """Two branches from one input and a shared layer applied to both."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12, 12, 3), name="image")
    a = L.Conv2D(6, 3, padding="same", activation="relu", name="branch_a")(inputs)
    b = L.SeparableConv2D(6, 5, padding="same", name="branch_b")(inputs)
    b = L.BatchNormalization(name="bn_b")(b)
    shared = L.Conv2D(4, 1, name="shared")
    x = L.Concatenate(name="join")([shared(a), shared(b)])
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, L.Dense(5, name="logits")(x), name="two_branches")


@pytest.mark.parametrize("name", ["two.keras", "two.h5"])
def test_functional_two_branches_and_a_shared_layer(tmp_path, round_trip, jitter, name):
    source = jitter(two_branches())
    model, info, back = round_trip(source, tmp_path, name)
    assert isinstance(model, tf_keras.Model) and not isinstance(model, tf_keras.Sequential)
    shared = model.get_layer("shared")
    assert len(shared._inbound_nodes) == 2  # one layer called twice, not two copies
    np.testing.assert_array_equal(shared.get_weights()[0], source.get_layer("shared").get_weights()[0])
    assert info["keras_version"] == keras.__version__ and info["format"] == name.split(".")[1]
    assert info["params"] == source.count_params() and info["tolerance"] == 1e-5
    assert [layer.name for layer in back.layers] == [layer.name for layer in model.layers]


@pytest.mark.parametrize("name", ["seq.keras", "seq.h5"])
def test_sequential_stays_sequential(tmp_path, round_trip, jitter, name):
    keras.utils.set_random_seed(0)
    source = jitter(keras.Sequential([
        keras.Input((20, 20, 1), name="image"), L.Conv2D(4, 3, activation="relu", name="conv1"),
        L.MaxPooling2D(2, name="pool1"), L.Flatten(name="flatten"), L.Dropout(0.25, name="dropout"),
        L.Dense(8, activation="relu", name="fc1"), L.Dense(3, name="logits")], name="cnn"))
    model, _, back = round_trip(source, tmp_path, name)
    assert isinstance(model, tf_keras.Sequential) and isinstance(back, keras.Sequential)
    assert [layer.name for layer in model.layers] == [layer.name for layer in source.layers]
    assert model.get_layer("dropout").rate == 0.25


def every_layer(ops=True):
    """One model holding every layer class the table maps (and keras.ops arithmetic)."""
    keras.utils.set_random_seed(0)
    i = keras.Input((16, 16, 3), name="image")
    x = L.Rescaling(1 / 255.0, offset=-0.1, name="rescale")(i)
    x = L.Normalization(mean=[0.1, 0.2, 0.3], variance=[1.0, 2.0, 3.0], name="norm")(x)
    x = L.CenterCrop(14, 14, name="center")(L.Resizing(20, 20, name="resize")(x))
    for layer in (L.RandomFlip(name="flip"), L.RandomRotation(0.1, name="rot"), L.RandomZoom(0.1, name="zoom"),
                  L.RandomTranslation(0.1, 0.1, name="shift"), L.RandomContrast(0.1, name="contrast"),
                  L.ZeroPadding2D(2, name="pad"), L.Cropping2D(1, name="crop")):
        x = layer(x)
    a = L.Conv2D(8, 3, padding="same", activation="relu6", name="conv")(x)
    b = L.SeparableConv2D(8, 3, padding="same", activation="silu", name="sep")(x)
    shared = L.Conv2D(8, 1, activation="hard_silu", name="shared")
    a, b = shared(a), shared(b)
    merged = [L.Add(name="m_add")([a, b]), L.Multiply(name="m_mul")([a, b]), L.Subtract(name="m_sub")([a, b]),
              L.Average(name="m_avg")([a, b]), L.Maximum(name="m_max")([a, b]), L.Minimum(name="m_min")([a, b])]
    x = L.BatchNormalization(name="bn")(L.Concatenate(name="cat")(merged))
    x = L.DepthwiseConv2D(3, padding="same", activation="gelu", name="dw")(x)
    x = L.Conv2D(48, 3, groups=48, padding="same", name="grouped")(x)
    x = L.Conv2DTranspose(8, 3, strides=2, padding="same", activation="hard_sigmoid", name="tconv")(x)
    x = L.MaxPooling2D(4, name="shrink")(L.UpSampling2D(2, name="upsample")(x))
    for layer in (L.LayerNormalization(name="ln"), L.GroupNormalization(4, name="gn"), L.LeakyReLU(name="leaky"),
                  L.ReLU(6.0, name="relu6"), L.ELU(name="elu"), L.PReLU(name="prelu"), L.Activation("mish", name="mish"),
                  L.Activation("hard_silu", name="hswish"), L.Activation("hard_sigmoid", name="hsig"),
                  L.Softmax(name="softmax"), L.SpatialDropout2D(0.1, name="sdrop"), L.GaussianNoise(0.1, name="noise"),
                  L.GaussianDropout(0.1, name="gdrop"), L.MaxPooling2D(name="maxpool"), L.AveragePooling2D(2, name="avgpool")):
        x = layer(x)
    if ops:  # keras.ops calls stored as graph nodes
        x = 3.0 - (x * 2.0 + 1.0) / 4.0
    x = L.Concatenate(name="cat2")([L.GlobalAveragePooling2D(name="gap")(x), L.GlobalMaxPooling2D(name="gmp")(x)])
    x = L.Permute((2, 1), name="permute")(L.Reshape((4, 4), name="reshape")(L.UnitNormalization(name="unit")(x)))
    for layer in (L.ZeroPadding1D(1, name="pad1"), L.Cropping1D(1, name="crop1"), L.Conv1D(4, 2, padding="same", name="c1"),
                  L.SeparableConv1D(4, 2, padding="same", name="s1"), L.DepthwiseConv1D(2, padding="same", name="d1"),
                  L.Conv1DTranspose(4, 2, padding="same", name="t1"), L.MaxPooling1D(name="mp1"),
                  L.AveragePooling1D(1, name="ap1"), L.SpatialDropout1D(0.1, name="sd1")):
        x = layer(x)
    x = L.Concatenate(name="cat3")([L.GlobalAveragePooling1D(name="gap1")(x), L.GlobalMaxPooling1D(name="gmp1")(x)])
    for layer in (L.Flatten(name="flatten"), L.Dropout(0.5, name="drop"), L.Identity(name="identity")):
        x = layer(x)
    return keras.Model(i, L.Dense(10, activation="softmax", name="probs")(x), name="every_layer")


def test_every_mapped_layer(tmp_path, round_trip, jitter):
    source = jitter(every_layer())
    model, _, _ = round_trip(source, tmp_path, "all.keras")
    from slimpipe.pipeline.keras3.table import LAYERS

    assert {type(layer).__name__ for layer in source.layers} == LAYERS  # the table, all of it
    assert {type(layer).__name__ for layer in model.layers} == LAYERS
    # Keras 3's hard_sigmoid is relu6(x + 3) / 6, tf_keras's is clip(0.2 x + 0.5): rebuilt from layers.
    assert model.get_layer("tconv").activation.__name__ == "linear"
    assert type(model.get_layer("hswish")).__name__ == "Multiply"
    assert type(model.get_layer("hsig")).__name__ == "Rescaling"


def test_every_mapped_layer_from_h5(tmp_path, jitter):
    """Keras 3's .h5 stores no keras.ops calls it could load back, so this one has none."""
    source = jitter(every_layer(ops=False))
    source.save(tmp_path / "all.h5")
    model = load_user_model(tmp_path / "all.h5")
    x = sample_inputs(model)
    np.testing.assert_allclose(outputs(model, x)[0], outputs(source, x)[0], rtol=0, atol=1e-5)


def test_activations_as_arguments(tmp_path, round_trip, jitter):
    names = ["linear", "relu", "relu6", "elu", "selu", "softplus", "softsign", "tanh", "sigmoid", "exponential",
             "softmax", "gelu", "mish", "leaky_relu", "silu", "swish", "hard_silu", "hard_swish",
             "hard_sigmoid"]
    inputs = keras.Input((2, 2, 3), name="image")
    x = L.Rescaling(0.01)(inputs)  # exponential and softplus stay finite on [0, 255] inputs
    heads = [L.Dense(3, activation=name, name=f"dense_{name}")(x) for name in names]
    model, _, _ = round_trip(jitter(keras.Model(inputs, L.Concatenate()(heads))), tmp_path)
    assert model.get_layer("dense_silu").activation.__name__ == "swish"


def test_nested_models_are_inlined(tmp_path, round_trip, jitter):
    """A Sequential augmentation block and a base model called with training=False, nested."""
    keras.utils.set_random_seed(0)
    augment = keras.Sequential([keras.Input((16, 16, 3)), L.RandomFlip(name="flip"),
                                L.Rescaling(1 / 255.0, name="scale")], name="augment")
    base_in = keras.Input((16, 16, 3))
    base = keras.Model(base_in, L.BatchNormalization(name="base_bn")(L.Conv2D(4, 3, name="base_conv")(base_in)),
                       name="base")
    inputs = keras.Input((16, 16, 3), name="image")
    x = base(augment(inputs), training=False)
    source = jitter(keras.Model(inputs, L.Dense(3, name="logits")(L.Flatten(name="flat")(x))))
    model, _, _ = round_trip(source, tmp_path)
    names = [layer.name for layer in model.layers]
    assert {"flip", "scale", "base_conv", "base_bn"} <= set(names) and "base" not in names
    assert not any(isinstance(layer, tf_keras.Model) for layer in model.layers)  # flat, as tfmot needs


def test_tiny_convnext_layer_scale_and_stochastic_depth(tmp_path, round_trip, jitter):
    from keras.src.applications.convnext import ConvNeXt

    source = jitter(ConvNeXt(depths=[1, 1, 1, 1], projection_dims=[8, 8, 16, 16], drop_path_rate=0.2,
                             input_shape=(32, 32, 3), weights=None, classes=4, name="tiny_convnext"), scale=0.02)
    model, _, back = round_trip(source, tmp_path)
    classes = {type(layer).__name__ for layer in model.layers}
    assert {"LayerScale", "StochasticDepth"} <= classes
    assert {"LayerScale", "StochasticDepth"} <= {type(layer).__name__ for layer in back.layers}
    depth = next(layer for layer in model.layers if type(layer).__name__ == "StochasticDepth")
    x = np.ones((64, 2, 2, 1), np.float32)
    assert np.array_equal(depth(x, training=False), x)
    dropped = (depth(x, training=True).numpy().reshape(64, -1) == 0).all(axis=1).mean()
    assert 0 < dropped < 0.6  # whole samples dropped at rate 0.2..0.4 (the last block's rate)


def test_mixed_precision_becomes_float32(tmp_path, round_trip, jitter):
    keras.config.set_dtype_policy("mixed_float16")
    try:
        inputs = keras.Input((8, 8, 3), name="image")
        x = L.GlobalAveragePooling2D()(L.Conv2D(4, 3, name="conv")(inputs))
        source = keras.Model(inputs, L.Dense(3, dtype="float32", name="logits")(x))
    finally:
        keras.config.set_dtype_policy("float32")
    source.save(tmp_path / "mixed.keras")
    record = {}
    model = load_user_model(tmp_path / "mixed.keras", record=record)
    assert all(layer.dtype == "float32" for layer in model.layers)
    assert "mixed precision (mixed_float16, 2 layers)" in record["keras3"]["notes"][0]
    x = sample_inputs(model)
    ours, theirs = outputs(model, x)[0], outputs(source, x)[0]  # float32 vs the model's float16 math
    assert 0 < np.abs(ours - theirs).max() <= 1e-2 * np.abs(theirs).max()


def test_a_translation_that_changes_outputs_is_refused(tmp_path):
    """A custom pair whose tf_keras class computes something else fails the output check."""
    from slimpipe.pipeline.keras3.custom import CustomObjects

    class Twice3(L.Layer):
        def call(self, x):
            return x * 2.0

    class Twice2(tf_keras.layers.Layer):
        def call(self, x):
            return x * 2.001

    inputs = keras.Input((4,), name="x")
    keras.Model(inputs, Twice3(name="twice")(inputs)).save(tmp_path / "m.keras")
    custom = CustomObjects({"Twice3": Twice3}, {"Twice3": Twice2})
    with pytest.raises(ConfigError, match=r"the tf_keras translation of 'm.keras': its outputs differ from "
                                          r"the original's by up to .* \(allowed: 0.005"):
        load_user_model(tmp_path / "m.keras", custom=custom)


def _same_outputs(source, tmp_path):
    """Translate an application in (the way out is covered by the smaller models above)."""
    source.save(tmp_path / "app.keras")
    record = {}
    model = load_user_model(tmp_path / "app.keras", record=record)
    x = sample_inputs(model)
    reference, got = outputs(source, x)[0], outputs(model, x)[0]
    assert np.abs(reference - got).max() <= 1e-5 * max(1.0, np.abs(reference).max())
    assert record["keras3"]["params"] == source.count_params() == model.count_params()
    return model


def test_mobilenet_v2(tmp_path, jitter):
    source = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=10,
                                            classifier_activation=None)
    model = _same_outputs(jitter(source, scale=0.02), tmp_path)
    assert len(model.layers) == len(source.layers)


def test_resnet50(tmp_path, jitter):
    _same_outputs(jitter(keras.applications.ResNet50(input_shape=(32, 32, 3), weights=None, classes=10,
                                                     classifier_activation=None), scale=0.01), tmp_path)


def test_efficientnet_b0(tmp_path, jitter):
    model = _same_outputs(jitter(keras.applications.EfficientNetB0(
        input_shape=(32, 32, 3), weights=None, classes=10, classifier_activation=None), scale=0.01), tmp_path)
    assert {"Normalization", "Rescaling"} <= {type(layer).__name__ for layer in model.layers}


@pytest.mark.slow
def test_mobilenet_v3_small_hard_swish_from_ops(tmp_path, jitter):
    model = _same_outputs(jitter(keras.applications.MobileNetV3Small(
        input_shape=(32, 32, 3), weights=None, classes=10, classifier_activation=None), scale=0.01), tmp_path)
    assert sum(type(layer).__name__ == "Multiply" for layer in model.layers) > 20


# Each takes 15-95 s on a 2-core machine; the layers they use are covered above.
@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("SLIMPIPE_ALL_APPLICATIONS"),
                    reason="set SLIMPIPE_ALL_APPLICATIONS=1 to translate every keras.applications model")
@pytest.mark.parametrize("build", [
    lambda: keras.applications.MobileNetV3Large(input_shape=(32, 32, 3), weights=None, classes=10),
    lambda: keras.applications.DenseNet121(input_shape=(32, 32, 3), weights=None, classes=10),
    lambda: keras.applications.ConvNeXtTiny(input_shape=(32, 32, 3), weights=None, classes=10),
], ids=["mobilenet_v3_large", "densenet121", "convnext_tiny"])
def test_more_applications_both_ways(tmp_path, round_trip, jitter, build):
    source = build()
    _, info, _ = round_trip(jitter(source, scale=0.01), tmp_path)
    assert info["params"] == source.count_params()
