"""The final run's second candidate: one step further (or back) from the chosen settings, as a
branch of the same recipe that names its steps and files apart."""
import pytest

from slimpipe.pipeline.search.space import FULL, SPACES, branch, name_steps, neighbour, tag_of


def test_the_neighbour_keeps_a_fixed_share_of_what_the_chosen_settings_keep():
    size = SPACES["size"]
    chosen = {"sparsity": 0.9, "clusters": 64, "quant": "pcqat"}
    further, back = neighbour(size, chosen, further=True), neighbour(size, chosen, further=False)
    assert further == {**chosen, "sparsity": 0.94} and back["sparsity"] == pytest.approx(0.8333, abs=1e-4)
    assert neighbour(size, {**chosen, "sparsity": 0.985}, further=True)["sparsity"] == 0.99  # capped
    assert neighbour(size, {**chosen, "sparsity": 0.99}, further=True) is None  # nowhere further to go
    assert neighbour(size, {**chosen, "sparsity": 0.2}, further=False) is None  # nothing left to prune
    assert neighbour(SPACES["latency"], {"reduction": 0.6, "quant": "int8"}, further=True)["reduction"] == 0.76
    assert tag_of(size, further) == "s94"


def test_a_branch_starts_from_the_baseline_and_names_its_steps_and_outputs_apart():
    ladder = ("0.5", "0.9", "0.95")
    table = {"baseline_accuracy": 0.9, "examples": 1000, "layers": [
        {"name": "fc1", "weights": 1000, "prune": dict(zip(ladder, (0.9, 0.89, 0.88))),
         "cluster": {"64": 0.9, "16": 0.9}, "int8": 0.9}]}
    space = SPACES["size"]
    params = {"sparsity": 0.94, "clusters": 64, "quant": "pcqat"}
    steps = branch(space.steps(params, table, schedule=FULL, tolerance=0.5), "s94", start="train")
    assert [s["stage"] for s in steps] == ["prune", "strip", "cluster", "quantize"]  # no export, no benchmark
    assert steps[0]["input"] == "train" and all("input" not in s for s in steps[1:])
    assert [s["name"] for s in steps] == ["prune-s94", "strip-s94", "cluster-s94", "quantize-s94"]
    assert [s.get("name_as") for s in steps] == ["pruning.s94", "pruned.s94", "clustered.s94", None]
    main = name_steps(space.steps(params, table, schedule=FULL, tolerance=0.5))
    names = [s["name"] for s in name_steps([*main, *steps])]
    assert len(names) == len(set(names))  # one recipe holds both
