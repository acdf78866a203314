"""Per-layer sparsity and cluster counts from a sensitivity table."""
import pytest

from slimpipe.pipeline.search.allocate import allocate_clusters, allocate_sparsity, drops, overall_sparsity


def table():
    """Four layers: a big tolerant one, a big sensitive one, a small stem, small logits."""
    def row(name, weights, prune, cluster, int8=0.90):
        return {"name": name, "weights": weights, "prune": prune, "cluster": cluster, "int8": int8}

    ladder = ("0.5", "0.8", "0.9", "0.95")
    return {"baseline_accuracy": 0.90, "examples": 1000, "layers": [
        row("stem", 300, dict(zip(ladder, (0.85, 0.60, 0.40, 0.20))), {"64": 0.90, "16": 0.85, "4": 0.50}),
        row("body", 20_000, dict(zip(ladder, (0.90, 0.88, 0.80, 0.70))), {"64": 0.90, "16": 0.899, "4": 0.80}),
        row("fc", 70_000, dict(zip(ladder, (0.90, 0.90, 0.895, 0.89))), {"64": 0.90, "16": 0.90, "4": 0.88},
            int8=0.85),
        row("logits", 1_000, dict(zip(ladder, (0.89, 0.80, 0.70, 0.50))), {"64": 0.90, "16": 0.897, "4": 0.70}),
    ]}


@pytest.mark.parametrize("target", [0.3, 0.6, 0.75, 0.85])
def test_sparsity_lands_on_the_target(target):
    t = table()
    alloc = allocate_sparsity(t, target)
    assert overall_sparsity(t, alloc) == pytest.approx(target, abs=1e-4)
    assert all(0 <= s <= 0.95 for s in alloc.values())


def test_tolerant_large_layers_are_pruned_first_and_hardest():
    alloc = allocate_sparsity(table(), 0.6)
    assert alloc["fc"] > alloc["body"] >= alloc["stem"]
    assert alloc["stem"] == 0 and alloc["logits"] == 0  # small and sensitive: left dense at 60%
    high = allocate_sparsity(table(), 0.9)
    assert high["fc"] == pytest.approx(0.95)
    assert high["stem"] < high["body"]


def test_an_unreachable_target_stops_at_the_top_of_every_ladder():
    t = table()
    alloc = allocate_sparsity(t, 0.99)
    assert set(alloc.values()) == {0.95}
    capped = allocate_sparsity(t, 0.99, max_sparsity=0.8)
    assert set(capped.values()) == {0.8}


def test_a_noisy_ladder_never_rewards_more_pruning():
    row = {"prune": {"0.5": 0.80, "0.8": 0.85, "0.9": 0.70}}
    assert drops(row, "prune", 0.9) == [(0.5, pytest.approx(10.0)), (0.8, pytest.approx(10.0)),
                                         (0.9, pytest.approx(20.0))]


def test_layers_that_lose_more_than_the_tolerance_keep_more_clusters():
    counts = allocate_clusters(table(), 16, tolerance=0.25)
    assert counts == {"stem": 64, "body": 16, "fc": 16, "logits": 64}
    assert allocate_clusters(table(), 16, tolerance=10) == {n: 16 for n in counts}
    assert allocate_clusters(table(), 64, tolerance=0.0) == {n: 64 for n in counts}
