"""A trial's answer from its report: the best file within the budget, or the closest miss."""
import pytest

from slimpipe.pipeline.search.score import score
from slimpipe.pipeline.search.study import best


def lat(p50):
    return [{"runtime": "litert", "threads": 1, "batch": 1, "device": "cpu", "p50_ms": p50}]


def row(name, parent, acc, gz, p50, mode=None, sparse=False, passed=True):
    return {"name": name, "format": "tflite", "parent": parent, "accuracy": acc, "gzip_bytes": gz,
            "bytes": gz * 2, "latency": lat(p50), "mode": mode, "sparse_storage": sparse,
            "validation": {"passed": passed}}


def report():
    return {"baseline": "source", "artifacts": [
        {"name": "source", "format": "keras", "parent": None, "accuracy": 0.900, "latency": []},
        row("source.tflite", "source", 0.900, 100_000, 1.0),
        row("pruned.tflite", "pruned", 0.899, 60_000, 1.0),
        row("clustered.int8.sparse.tflite", "clustered", 0.896, 5_000, 2.0, mode="int8-full", sparse=True),
        row("tiny.tflite", "clustered", 0.850, 2_000, 0.5),
        row("broken.tflite", "clustered", 0.900, 1_000, 0.1, passed=False),
    ]}


def test_size_picks_the_smallest_file_within_the_budget():
    s = score(report(), objective="size", max_drop=0.5)
    assert (s.file, s.feasible) == ("clustered.int8.sparse.tflite", True)
    assert s.cost == pytest.approx(0.05) and s.drop == pytest.approx(0.4)
    assert {p[0] for p in s.points} == {"pruned.tflite", "clustered.int8.sparse.tflite", "tiny.tflite"}


def test_latency_and_balanced_costs():
    assert score(report(), objective="latency", max_drop=0.5).file == "pruned.tflite"
    assert score(report(), objective="latency", max_drop=5).file == "tiny.tflite"
    s = score(report(), objective="balanced", max_drop=0.5)
    assert s.file == "clustered.int8.sparse.tflite" and s.cost == pytest.approx((0.05 * 2.0) ** 0.5)


def test_with_nothing_within_the_budget_the_least_loss_is_the_answer():
    s = score(report(), objective="size", max_drop=0.0)
    assert (s.file, s.feasible) == ("pruned.tflite", False)
    assert s.drop == pytest.approx(0.1)


def test_best_trial():
    recs = [{"number": 0, "cost": 0.05, "drop": 0.4, "feasible": True},
            {"number": 1, "cost": 0.03, "drop": 0.9, "feasible": False},
            {"number": 2, "cost": 0.04, "drop": 0.5, "feasible": True},
            {"number": 3, "cost": None, "drop": None, "feasible": False}]
    assert best(recs)["number"] == 2
    assert best([r for r in recs if not r["feasible"]])["number"] == 1
    assert best([recs[3]]) is None
