"""The whole compression chain end to end on a slice of real Fashion-MNIST: prune -> strip -> cluster ->
int8 PTQ and PCQAT, a structured branch with dynamic int8, ONNX int8 exports, and a report that
names the smallest artifact at iso-accuracy, measures size floors and writes the Pareto plots."""
import json

import pytest

from slimpipe.pipeline.cli import main
from tests.test_cli import needs_fashion

CHAIN = """
name = "chain"
[[stages]]
stage = "train"
epochs = 2
[[stages]]
stage = "prune"
final_sparsity = 0.8
layer_sparsity = {fc1 = 0.9}
epochs = 1
[[stages]]
stage = "strip"
[[stages]]
stage = "cluster"
clusters = 8
epochs = 1
[[stages]]
name = "int8_sparse"
stage = "quantize"
mode = "int8"
sparse = true
min_agreement = 0.9
[[stages]]
name = "pcqat"
stage = "quantize"
mode = "pcqat"
epochs = 1
min_agreement = 0.9
[[stages]]
stage = "structured_prune"
input = "train"
reduction = 0.5
rounds = 1
epochs = 0
final_epochs = 1
[[stages]]
name = "structured_dynamic"
stage = "quantize"
mode = "dynamic"
min_agreement = 0.9
[[stages]]
stage = "export"
formats = ["tflite", "onnx"]
onnx_int8 = ["dynamic"]
min_agreement = 0.9
[[stages]]
stage = "benchmark"
latency = [[1, 1]]
min_runs = 5
min_seconds = 0.05
warmup = 2
"""


@pytest.fixture(autouse=True)
def quiet(monkeypatch):
    monkeypatch.setenv("SLIMPIPE_QUIET", "1")


@pytest.mark.slow
@needs_fashion
def test_cluster_quantize_chain_on_real_data(tmp_path):
    recipe = tmp_path / "chain.toml"
    recipe.write_text(CHAIN)
    out = tmp_path / "run"
    assert main(["compress", "--limit", "4000", "--recipe", str(recipe), "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    rows = {r["name"]: r for r in report["artifacts"]}
    base = rows["trained"]["accuracy"]
    assert base > 0.7

    # Clustering: at most 8 distinct non-zero values per kernel, measured from the file, and the
    # pruned zeros kept (preserve_sparsity).
    kernels = [l for l in rows["clustered"]["layers"] if l["name"].endswith("kernel:0") or "kernel" in l["name"]]
    assert kernels and all(l["distinct"] <= 8 for l in kernels)
    assert rows["clustered"]["sparsity"] >= rows["pruned"]["sparsity"] - 0.005 > 0.8

    # int8 files: 8-bit weights in the file, sparsity kept through PCQAT, agreement with float.
    for name in ("clustered.int8.sparse.tflite", "clustered.pcqat.tflite", "structured.dynamic.tflite",
                 "trained.dynamic.onnx", "clustered.dynamic.onnx"):
        row = rows[name]
        big = [l for l in row["layers"] if l["params"] >= 1024]
        assert big and all(l["bits"] == 8 for l in big), name
        assert row["top1_agreement"] > 0.8 and row["accuracy"] > base - 0.1, name
    assert rows["clustered.pcqat.tflite"]["sparsity"] >= rows["pruned"]["sparsity"] - 0.01
    assert rows["clustered.int8.sparse.tflite"]["bytes"] < rows["clustered.tflite"]["bytes"] / 6

    # The structured branch started from 'trained' and is physically smaller.
    assert rows["structured"]["parent"] == "trained"
    assert rows["structured.tflite"]["bytes"] < rows["trained.tflite"]["bytes"] * 0.8

    # Size floors are lower bounds of the files as stored (gzip can beat the 32 bits of a float
    # weight, not the 4 bits of a 16-value clustered int8 one); the smallest artifact is named.
    for row in rows.values():
        if row.get("size_floor_bytes"):
            assert row["size_floor_bytes"] <= row["bytes"], row["name"]
    for name in ("clustered.int8.sparse.tflite", "clustered.pcqat.tflite"):
        assert rows[name]["size_floor_bytes"] <= rows[name]["gzip_bytes"], name
    assert rows["clustered"]["size_floor_bytes"] < rows["pruned"]["size_floor_bytes"] / 2
    md = (out / "report.md").read_text()
    assert "## Size, accuracy and the Pareto frontiers" in md
    assert ("Smallest deployable artifact within 0.5 points" in md
            or "No deployable artifact is within 0.5 points" in md)
    assert sorted(report["plots"]) == ["latency_vs_accuracy.png", "size_vs_accuracy.png"]
    assert all((out / p).read_bytes()[:4] == b"\x89PNG" for p in report["plots"])
