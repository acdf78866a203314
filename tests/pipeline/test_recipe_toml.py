"""dumps_recipe writes TOML that reads back to the same recipe data."""
import math
import tomllib

import pytest

from slimpipe.pipeline.recipe import RECIPES_DIR, build_recipe
from slimpipe.pipeline.recipe_toml import dumps_recipe, toml_key, toml_value
from slimpipe.stages import STAGES


@pytest.mark.parametrize("path", sorted(RECIPES_DIR.glob("*.toml")), ids=lambda p: p.stem)
def test_every_shipped_recipe_round_trips(path):
    data = tomllib.loads(path.read_text())
    text = dumps_recipe(data)
    assert tomllib.loads(text) == data
    build_recipe(tomllib.loads(text), STAGES)  # and is still a valid recipe


def test_inline_tables_with_selector_keys_and_odd_strings():
    data = {"name": 'with "quotes" and \\ and\nnewline, tab\t, é, \x7f',
            "stages": [{"stage": "prune", "layer_sparsity": {"fc1": 0.97, "@share:0.5": 0.9,
                                                             "a b": 0.5, "": 0.1},
                        "layer_block_size": {"fc1": (16, 1)}, "layers": [], "ramp": 1e-5,
                        "epochs": 0, "nested": {"x": {"y": [1, [2, 3]]}}}],
            "gate": {"max_accuracy_drop": 1.0, "require_parity": True}}
    text = dumps_recipe(data)
    assert 'layer_sparsity = { fc1 = 0.97, "@share:0.5" = 0.9, "a b" = 0.5, "" = 0.1 }' in text
    assert text.index("[[stages]]") < text.index("[gate]")
    back = tomllib.loads(text)
    assert back["stages"][0]["layer_block_size"] == {"fc1": [16, 1]}
    assert back["name"] == data["name"] and back["gate"] == data["gate"]


def test_values_toml_cannot_hold_are_refused():
    with pytest.raises(ValueError, match="TOML cannot hold NoneType"):
        dumps_recipe({"stages": [{"stage": "train", "epochs": None}]})
    with pytest.raises(ValueError, match="keys are strings"):
        toml_key(3)
    assert toml_value(math.inf) == "inf" and toml_value(-math.inf) == "-inf"
    assert toml_value(True) == "true" and toml_value(3) == "3" and toml_value({}) == "{}"
