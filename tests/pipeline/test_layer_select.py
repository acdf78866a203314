"""pipeline.layer_select: selectors by name, regular expression and rule, on real model graphs."""
import pytest

from slimpipe.pipeline.errors import ConfigError
from slimpipe.pipeline.layer_select import (check_selectors, layer_infos, select, select_mapping,
                                            selector_pairs, selector_tuple)
from slimpipe.pipeline.models import build_model


@pytest.fixture(scope="module")
def cnn():
    return [i for i in layer_infos(build_model("cnn", (28, 28, 1), 10)) if i.weights]


def two_branch_model():
    """Rescaling and padding before the stem; two branches joined by Add; softmax after the logits."""
    import tf_keras as keras

    L = keras.layers
    inputs = L.Input((16, 16, 3), name="pixels")
    x = L.Rescaling(1 / 255.0, name="scale")(inputs)
    x = L.ZeroPadding2D(1, name="pad")(x)
    stem = L.Conv2D(8, 3, name="Stem")(x)
    a = L.Conv2D(8, 3, padding="same", name="left")(stem)
    b = L.DepthwiseConv2D(3, padding="same", name="right_dw")(stem)
    b = L.BatchNormalization(name="right_bn")(b)
    x = L.Add(name="join")([a, b])
    x = L.GlobalAveragePooling2D(name="gap")(x)
    x = L.Dense(5, name="Head")(x)
    outputs = L.Activation("softmax", name="probs")(x)
    return keras.Model(inputs, outputs)


def test_rules_on_the_cnn(cnn):
    names = [i.name for i in cnn]
    assert names == ["conv1", "conv2", "conv3", "fc1", "logits"]
    assert [i.weights for i in cnn] == [288, 18432, 36864, 73728, 1280]
    assert select(("!@input", "!@output"), cnn) == ["conv2", "conv3", "fc1"]
    assert select(("@all",), cnn) == names
    assert select((), cnn) == names
    assert select(("@conv",), cnn) == ["conv1", "conv2", "conv3"]
    assert select(("@dense", "!@output"), cnn) == ["fc1"]
    assert select(("@largest",), cnn) == ["fc1"]
    assert select(("@largest:2",), cnn) == ["conv3", "fc1"]
    assert select(("@weights>=18432",), cnn) == ["conv2", "conv3", "fc1"]
    assert select(("re:conv[23]",), cnn) == ["conv2", "conv3"]
    with pytest.raises(ConfigError, match="'re:conv' selects none"):  # the whole name must match
        select(("re:conv",), cnn)
    # @share: the largest layers until they hold the share; fc1 alone holds 57% of 129,024 weights.
    middle = [i for i in cnn if i.name in ("conv2", "conv3", "fc1")]
    assert select(("@share:0.5",), middle) == ["fc1"]
    assert select(("@share:0.6",), middle) == ["conv3", "fc1"]
    assert select(("@share:1",), middle) == ["conv2", "conv3", "fc1"]


def test_input_and_output_see_through_layers_without_kernels():
    infos = [i for i in layer_infos(two_branch_model()) if i.weights]
    assert select(("@input",), infos) == ["Stem"]
    assert select(("@output",), infos) == ["Head"]
    assert select(("@depthwise",), infos) == ["right_dw"]
    assert sorted(select(("!@input", "!@output"), infos)) == ["left", "right_dw"]


def test_a_positive_selector_that_selects_nothing_names_the_candidates(cnn):
    with pytest.raises(ConfigError, match=r"layers selector 'conv9' selects none of the layers this "
                                          r"stage can work on \(conv1, conv2, conv3, fc1, logits\): fix the name"):
        select(("conv9",), cnn, stage="prune")
    with pytest.raises(ConfigError, match="'@weights>=1000000' selects none.*use a rule that fits this model"):
        select(("@weights>=1000000",), cnn, stage="prune")
    # An exclusion that matches nothing excludes nothing: shipped recipes say "!@output" for models
    # whose logits layer is no candidate of the stage.
    assert select(("!nothing-here",), cnn) == [i.name for i in cnn]


def test_mappings_let_a_later_entry_win(cnn):
    values = select_mapping((("@all", 0.5), ("@largest", 0.9)), cnn, stage="prune", field="layer_sparsity")
    assert values == {"conv1": 0.5, "conv2": 0.5, "conv3": 0.5, "fc1": 0.9, "logits": 0.5}
    with pytest.raises(ConfigError, match="layer_sparsity selector 'pool1' selects none"):
        select_mapping((("pool1", 0.5),), cnn, stage="prune", field="layer_sparsity")


@pytest.mark.parametrize("selector, match", [
    ("@bogus", "is not one of"),
    ("@largest:0", "N a whole number >= 1"),
    ("@share:1.5", r"F a fraction in \(0, 1\]"),
    ("@share:0", r"F a fraction in \(0, 1\]"),
    ("@weights>=x", "is not one of"),
    ("re:[", "not a valid regular expression"),
    ("!", "must hold layer selectors"),
    ("", "must hold layer selectors"),
])
def test_malformed_selectors_fail_when_the_stage_is_built(selector, match):
    with pytest.raises(ConfigError, match=match):
        check_selectors("prune", "layers", [selector])


def test_recipe_values_become_checked_tuples():
    assert selector_tuple("prune", "layers", "@all") == ("@all",)
    assert selector_tuple("prune", "layers", ["a", "!b"]) == ("a", "!b")
    assert selector_pairs("prune", "layer_block_size", {"fc1": [16, 1]}) == (("fc1", (16, 1)),)
    with pytest.raises(ConfigError, match="must map layer selectors to values"):
        selector_pairs("prune", "layer_sparsity", ["fc1"])
    with pytest.raises(ConfigError, match="must be a list of layer selectors"):
        selector_tuple("prune", "layers", 3)
