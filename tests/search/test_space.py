"""The final run's other candidates: steps further (or back) from the chosen settings, each a
branch of the same recipe that names its steps and files apart."""
import pytest

from slimpipe.pipeline.search.final import final_steps
from slimpipe.pipeline.search.space import FULL, SPACES, TRIAL, branch, name_steps, neighbours, tag_of
from slimpipe.stages import STAGES

TABLE = {"baseline_accuracy": 0.9, "examples": 1000, "layers": [
    {"name": "fc1", "weights": 1000, "prune": {"0.5": 0.9, "0.9": 0.89, "0.95": 0.88},
     "cluster": {"64": 0.9, "16": 0.9}, "int8": 0.9}]}


def test_the_neighbours_keep_fixed_shares_of_what_the_chosen_settings_keep():
    size = SPACES["size"]
    chosen = {"sparsity": 0.9, "clusters": 64, "quant": "pcqat"}
    further = neighbours(size, chosen, further=True)
    assert further == [{**chosen, "sparsity": 0.925}, {**chosen, "sparsity": 0.945}]
    back = [p["sparsity"] for p in neighbours(size, chosen, further=False)]
    assert back == pytest.approx([0.8667, 0.8182], abs=1e-4)
    assert [p["sparsity"] for p in neighbours(size, {**chosen, "sparsity": 0.985}, further=True)] == [0.9888]  # 0.99 (the cap) is no further
    assert neighbours(size, {**chosen, "sparsity": 0.99}, further=True) == []  # nowhere further to go
    assert neighbours(size, {**chosen, "sparsity": 0.2}, further=False) == []  # nothing left to prune
    assert neighbours(SPACES["latency"], {"reduction": 0.6, "quant": "int8"}, further=True)[0]["reduction"] == 0.7
    assert [tag_of(size, p) for p in further] == ["s92", "s94"]


def test_a_branch_starts_from_the_baseline_and_names_its_steps_and_outputs_apart():
    ladder = ("0.5", "0.9", "0.95")
    table = {"baseline_accuracy": 0.9, "examples": 1000, "layers": [
        {"name": "fc1", "weights": 1000, "prune": dict(zip(ladder, (0.9, 0.89, 0.88))),
         "cluster": {"64": 0.9, "16": 0.9}, "int8": 0.9}]}
    space = SPACES["size"]
    params = {"sparsity": 0.94, "clusters": 64, "quant": "pcqat"}
    outputs = {kind: cls.name_as for kind, cls in STAGES.items() if hasattr(cls, "name_as")}
    assert outputs == {"prune": "pruning", "strip": "pruned", "cluster": "clustered",
                       "structured_prune": "structured"}
    steps = branch(space.steps(params, table, schedule=FULL, tolerance=0.5), "s94", start="train",
                   outputs=outputs)
    # No export, no benchmark; QAT and, as the final run does, post-training int8 of the clustered model.
    assert [s["stage"] for s in steps] == ["prune", "strip", "cluster", "quantize", "quantize"]
    assert [s.get("mode") for s in steps[3:]] == ["pcqat", "int8"]
    assert steps[0]["input"] == "train" and all("input" not in s for s in steps[1:])
    assert [s["name"] for s in steps] == ["prune-s94", "strip-s94", "cluster-s94", "quantize-s94", "quantize-2-s94"]
    assert [s.get("name_as") for s in steps] == ["pruning.s94", "pruned.s94", "clustered.s94", None, None]
    main = name_steps(space.steps(params, table, schedule=FULL, tolerance=0.5))
    names = [s["name"] for s in name_steps([*main, *steps])]
    assert len(names) == len(set(names))  # one recipe holds both


def test_the_final_recipe_holds_every_candidates_branch_before_its_export():
    table = {"baseline_accuracy": 0.9, "examples": 1000, "layers": [
        {"name": "fc1", "weights": 1000, "prune": {"0.5": 0.9}, "cluster": {"64": 0.9}, "int8": 0.9}]}
    space = SPACES["size"]
    chosen = {"number": 3, "params": {"sparsity": 0.9, "clusters": 64, "quant": "pcqat"}}
    further, back = neighbours(space, chosen["params"], further=True)[0], neighbours(space, chosen["params"], further=False)[0]
    others = [{"role": "further", "params": further}, {"role": "back", "params": back, "added": True}]
    steps, candidates = final_steps(space, chosen, others, table=table, tolerance=0.5, start="train",
                                    outputs={"prune": "pruning", "strip": "pruned", "cluster": "clustered"})
    assert [(c["role"], c["tag"], c.get("added")) for c in candidates] == [
        ("chosen", None, None), ("further", "s92", None), ("back", "s87", True)]
    kinds = [s["stage"] for s in steps]
    assert kinds[-2:] == ["export", "benchmark"] and kinds.count("prune") == 3
    assert [s["input"] for s in steps if "input" in s] == ["train", "train"]  # each branch starts at the baseline
    assert len({s["name"] for s in steps}) == len(steps)


def test_trials_quantize_in_their_own_mode_and_the_final_run_in_every_post_training_mode_too():
    latency = SPACES["latency"]
    modes = lambda params, schedule: [s["mode"] for s in latency.steps(params, {}, schedule=schedule, tolerance=0.5)  # noqa: E731
                                      if s["stage"] == "quantize"]
    assert modes({"reduction": 0.6, "quant": "int8"}, TRIAL) == ["int8"]
    assert modes({"reduction": 0.6, "quant": "none"}, TRIAL) == []
    assert modes({"reduction": 0.6, "quant": "int8"}, FULL) == ["int8", "dynamic"]
    assert modes({"reduction": 0.6, "quant": "none"}, FULL) == ["dynamic", "int8"]
    size = lambda quant, schedule: [s["mode"] for s in SPACES["size"].steps(  # noqa: E731
        {"sparsity": 0.9, "clusters": 32, "quant": quant}, TABLE, schedule=schedule, tolerance=0.5)
        if s["stage"] == "quantize"]
    assert size("pcqat", TRIAL) == ["pcqat"] and size("pcqat", FULL) == ["pcqat", "int8"]
    assert size("int8", FULL) == ["int8"]  # pcqat trains: it is never added, only chosen
    storage = lambda space, params: {s["sparse"] for s in SPACES[space].steps(  # noqa: E731
        params, TABLE, schedule=FULL, tolerance=0.5) if s["stage"] == "quantize"}
    assert storage("size", {"sparsity": 0.9, "clusters": 32, "quant": "pcqat"}) == {"both"}  # smallest on disk, by gzip
    assert storage("latency", {"reduction": 0.6, "quant": "int8"}) == {False}  # nothing mostly zero
