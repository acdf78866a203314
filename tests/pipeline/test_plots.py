"""Pareto frontiers, 'smallest within N points', and the PNG plots, from report dicts alone."""
import copy
import io

import pytest

from slimpipe.pipeline.pareto import pareto_front, pareto_table, smallest_sentence, smallest_within
from slimpipe.pipeline.plots import plot_pareto

PNG = b"\x89PNG\r\n\x1a\n"


def _lat(p50, runtime="litert"):
    return {"runtime": runtime, "device": "cpu", "threads": 1, "batch": 1, "engine": None,
            "p50_ms": p50, "p90_ms": p50 * 1.2, "p99_ms": p50 * 1.5, "runs": 100}


def _row(name, fmt, parent, bytes_, gzip, acc, p50=None, mode="float32", passed=True,
         sparse=False, runtime="litert"):
    return {"name": name, "format": fmt, "kind": fmt, "stage": "export", "parent": parent,
            "bytes": bytes_, "gzip_bytes": gzip, "sparsity": 0.0, "accuracy": acc,
            "latency": [_lat(p50, runtime)] if p50 else [], "mode": None if fmt == "keras" else mode,
            "validation": None if fmt == "keras" or passed is None else
            {"passed": passed, "max_abs_diff": 1e-6 if passed else 1e-2},
            "sparse_storage": sparse}


@pytest.fixture
def report():
    return {"model": "cnn", "dataset": "fashion_mnist", "baseline": "trained.h5",
            "artifacts": [
                _row("trained.h5", "keras", None, 900_000, 830_000, 0.90),
                _row("pruned.h5", "keras", "trained.h5", 900_000, 260_000, 0.895),
                _row("trained.tflite", "tflite", "trained.h5", 800_000, 700_000, 0.90, p50=2.0),
                _row("pruned.tflite", "tflite", "pruned.h5", 800_000, 200_000, 0.895, p50=1.96),
                _row("pruned.sparse.tflite", "tflite", "pruned.h5", 200_000, 150_000, 0.895,
                     p50=4.0, sparse=True),
                _row("pruned.int8.tflite", "tflite", "pruned.h5", 205_000, 60_000, 0.88,
                     p50=0.9, mode="int8", passed=None),
                _row("pruned.onnx", "onnx", "pruned.h5", 790_000, 50_000, 0.90, p50=1.5,
                     passed=False, mode=None, runtime="onnxruntime"),
            ]}


def test_pareto_front_excludes_dominated_points_and_keeps_ties():
    pts = [("a", 1.0, 0.80), ("b", 2.0, 0.90), ("c", 3.0, 0.85),  # c: dominated by b
           ("d", 2.0, 0.90),  # identical to b: neither dominates, both stay
           ("e", 2.0, 0.88),  # same cost as b, less accurate: dominated
           ("f", 5.0, 0.95), ("g", 0.5, None)]  # g has no accuracy: ignored
    assert pareto_front(pts) == ["a", "b", "d", "f"]
    assert pareto_front([]) == []
    assert pareto_front([("only", 3, 0.5)]) == ["only"]


def test_pareto_table_marks_both_frontiers_and_never_a_failed_export(report):
    rows = {r["name"]: r for r in pareto_table(report)}
    assert set(rows) == {a["name"] for a in report["artifacts"]}
    assert rows["pruned.onnx"]["on_size_front"] is False  # smallest, but failed parity
    assert rows["pruned.int8.tflite"]["on_size_front"] and rows["pruned.int8.tflite"]["on_latency_front"]
    assert rows["pruned.sparse.tflite"]["on_size_front"]  # 150k at 89.5%
    assert not rows["pruned.tflite"]["on_size_front"]  # same accuracy, bigger than sparse
    assert rows["pruned.tflite"]["on_latency_front"] and not rows["pruned.sparse.tflite"]["on_latency_front"]
    assert rows["pruned.tflite"]["p50_ms"] == 1.96 and rows["trained.h5"]["p50_ms"] is None
    assert rows["pruned.onnx"]["p50_ms"] == 1.5  # onnxruntime counts


def test_smallest_within_picks_the_smallest_deployable_artifact(report):
    best = smallest_within(report, points=0.5)
    assert best["name"] == "pruned.sparse.tflite"  # int8 is 2 points down, onnx failed parity
    assert best["x_smaller_gzip"] == pytest.approx(700_000 / 150_000)
    assert best["x_smaller_raw"] == pytest.approx(800_000 / 200_000)
    assert smallest_within(report, points=2.0)["name"] == "pruned.int8.tflite"
    text = smallest_sentence(report)
    assert "pruned.sparse.tflite" in text and "4.67x smaller than trained.tflite" in text


def test_smallest_within_returns_none_when_nothing_qualifies(report):
    worse = copy.deepcopy(report)
    for r in worse["artifacts"]:
        if r["format"] != "keras":
            r["accuracy"] = 0.80
    assert smallest_within(worse, points=0.5) is None
    assert "No deployable artifact is within 0.5 points" in smallest_sentence(worse)
    worse["artifacts"][0]["accuracy"] = None
    assert smallest_within(worse) is None and "not measured" in smallest_sentence(worse)


def test_plots_are_decodable_non_blank_pngs(report):
    from matplotlib.image import imread

    images = plot_pareto(report)
    assert set(images) == {"size_vs_accuracy.png", "latency_vs_accuracy.png"}
    for data in images.values():
        assert data.startswith(PNG)
        pixels = imread(io.BytesIO(data))
        assert pixels.shape[0] > 100 and pixels.shape[1] > 100
        assert pixels[..., :3].std() > 0.01  # not a blank canvas
    assert plot_pareto(report) == images  # deterministic bytes


def test_a_plot_without_data_is_left_out(report):
    for r in report["artifacts"]:
        r["latency"] = []
    assert set(plot_pareto(report)) == {"size_vs_accuracy.png"}
    for r in report["artifacts"]:
        r["accuracy"] = None
    assert plot_pareto(report) == {}
