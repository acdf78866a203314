"""keras_complexity: hand-computed params and MACs (multiply-accumulates per example)."""
import slimpipe.pipeline  # noqa: F401
import tf_keras as keras

from slimpipe.benchmarks.complexity import keras_complexity


def test_hand_computed_macs_and_params_of_a_tiny_model():
    L = keras.layers
    inp = L.Input((8, 8, 3))
    x = L.Conv2D(4, 3, name="conv")(inp)                              # 6x6x4
    y = L.DepthwiseConv2D(3, padding="same", name="dw")(x)            # 6x6x4
    x = L.Add(name="add")([x, y])
    x = L.BatchNormalization(name="bn")(x)
    x = L.MaxPooling2D(name="pool")(x)                                # 3x3x4
    x = L.Conv2D(2, 1, strides=1, use_bias=False, name="pw")(x)       # 3x3x2
    x = L.Flatten(name="flat")(x)                                     # 18
    out = L.Dense(5, name="fc")(x)
    c = keras_complexity(keras.Model(inp, out))
    rows = {r["name"]: r for r in c["layers"]}
    assert rows["conv"] == {"name": "conv", "type": "Conv2D", "params": 3 * 3 * 3 * 4 + 4,
                            "macs": 6 * 6 * 3 * 3 * 3 * 4}
    assert (rows["dw"]["params"], rows["dw"]["macs"]) == (3 * 3 * 4 + 4, 6 * 6 * 3 * 3 * 4)
    assert (rows["pw"]["params"], rows["pw"]["macs"]) == (4 * 2, 3 * 3 * 4 * 2)
    assert (rows["fc"]["params"], rows["fc"]["macs"]) == (18 * 5 + 5, 18 * 5)
    # Elementwise layers count 0 MACs; batch norm's 4 vectors all count as params.
    assert rows["add"]["macs"] == rows["bn"]["macs"] == rows["pool"]["macs"] == 0
    assert rows["bn"]["params"] == 16
    assert c["macs"] == 3888 + 1296 + 72 + 90
    assert c["params"] == 112 + 40 + 16 + 8 + 95


def test_dense_on_a_sequence_strided_conv_and_the_cnn_zoo_model():
    L = keras.layers
    model = keras.Sequential([L.Input((10, 10, 2)),
                              L.Conv2D(3, 3, strides=2, padding="same", name="c"),  # 5x5x3
                              L.Dense(4, name="d")])                                # per position
    rows = {r["name"]: r["macs"] for r in keras_complexity(model)["layers"]}
    assert rows == {"c": 5 * 5 * 9 * 2 * 3, "d": 5 * 5 * 3 * 4}

    from slimpipe.pipeline.models import build_model

    c = keras_complexity(build_model("cnn", (28, 28, 1), 10))
    # conv1 26x26x32, conv2 11x11x64 from 32, conv3 3x3x64 from 64, fc1 576 -> 128, logits.
    assert c["macs"] == 26 * 26 * 9 * 32 + 11 * 11 * 9 * 32 * 64 + 3 * 3 * 9 * 64 * 64 + 576 * 128 + 1280
    assert c["params"] == build_model("cnn", (28, 28, 1), 10).count_params()
