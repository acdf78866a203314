"""The export stage: float files match Keras to atol, sparse models also get sparse TFLite
storage, and onnx_int8 adds int8 ONNX files that really hold int8 weights and agree with Keras."""
import gzip

import numpy as np
import onnx
import pytest

from slimpipe.pipeline.artifacts import make_artifact
from slimpipe.pipeline.context import RunContext
from slimpipe.pipeline.errors import ConfigError
from slimpipe.pipeline.kerasio import save_keras
from slimpipe.stages.export import Export
from slimpipe.pipeline.runner import run_stage
from slimpipe.stages.train import Train
from tests.conftest import make_tiny_model


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_data):
    tmp = tmp_path_factory.mktemp("trained")
    ctx = RunContext(data=tiny_data, out_dir=tmp)
    src = make_artifact("source", save_keras(make_tiny_model(), tmp / "source.h5"), fmt="keras",
                        kind="keras", stage="source", config={}, parent=None)
    ctx.stage_dir = tmp / "train"
    return run_stage(Train(epochs=3), src, ctx)[0]


def _run(stage, art, tmp_path, tiny_data):
    ctx = RunContext(data=tiny_data, out_dir=tmp_path)
    ctx.artifacts.append(art)
    ctx.baseline = art.name
    ctx.stage_dir = tmp_path / "export"
    return {a.name: a for a in run_stage(stage, art, ctx)}


def _initializer_types(path):
    return {onnx.TensorProto.DataType.Name(t.data_type) for t in onnx.load(str(path)).graph.initializer
            if len(t.dims) >= 2}


def _float_weight_share(path):
    """The share of weight-matrix elements (initializers of rank >= 2) stored as float."""
    counts = {}
    for t in onnx.load(str(path)).graph.initializer:
        if len(t.dims) >= 2:
            kind = onnx.TensorProto.DataType.Name(t.data_type)
            counts[kind] = counts.get(kind, 0) + int(np.prod(t.dims))
    return counts.get("FLOAT", 0) / sum(counts.values())


def test_onnx_int8_files_hold_int8_weights_and_agree_with_keras(trained, tmp_path, tiny_data):
    arts = _run(Export(onnx_int8=("dynamic", "static"), calibration_samples=64), trained,
                tmp_path, tiny_data)
    assert set(arts) == {"trained.tflite", "trained.onnx", "trained.dynamic.onnx", "trained.static.onnx"}
    assert _initializer_types(arts["trained.onnx"].path) == {"FLOAT"}
    for mode in ("dynamic", "static"):
        art = arts[f"trained.{mode}.onnx"]
        assert art.meta["mode"] == f"int8-{mode}" and art.parent == "trained"
        assert _initializer_types(art.path) & {"INT8", "UINT8"}
        # static: every weight int8; dynamic keeps the first conv (8x3x3x3 of the tiny model's
        # ~4,000 weights) in float by default
        assert _float_weight_share(art.path) < (0.1 if mode == "dynamic" else 1e-9)
        check = art.meta["validation"]
        assert check["passed"] and check["top1_agreement"] >= 0.97
        assert art.path.stat().st_size < arts["trained.onnx"].path.stat().st_size
    ops = {n.op_type for n in onnx.load(str(arts["trained.static.onnx"].path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_sparse_model_also_gets_sparse_tflite_storage(trained, tmp_path, tiny_data):
    from slimpipe.pipeline.kerasio import clone_with_weights, load_keras

    model = clone_with_weights(load_keras(trained.path))
    layer = model.get_layer("dense")
    kernel, bias = layer.get_weights()
    kernel[np.abs(kernel) < np.quantile(np.abs(kernel), 0.9)] = 0
    layer.set_weights([kernel, bias])
    sparse = make_artifact("sparse", save_keras(model, tmp_path / "sparse.h5"), fmt="keras",
                           kind="keras", stage="strip", config={}, parent=trained)
    arts = _run(Export(formats=("tflite",), targets="current", sparse_threshold=0.5), sparse,
                tmp_path, tiny_data)
    assert set(arts) == {"sparse.tflite", "sparse.sparse.tflite"}
    assert arts["sparse.sparse.tflite"].meta["sparse_storage"]
    assert arts["sparse.sparse.tflite"].path.stat().st_size < arts["sparse.tflite"].path.stat().st_size
    assert "sparse_layout" not in arts["sparse.tflite"].meta

    # the converter's own layout: the same tensor in its own order, a file no smaller
    kept = _run(Export(formats=("tflite",), targets="current", sparse_threshold=0.5,
                       sparse_layout="converter"), sparse, tmp_path / "converter", tiny_data)
    ours, theirs = arts["sparse.sparse.tflite"], kept["sparse.sparse.tflite"]
    assert (ours.meta["sparse_layout"], theirs.meta["sparse_layout"]) == ("smallest", "converter")
    assert theirs.meta["sparse_orders"] == [{"shape": [32, 200], "order": [0, 1]}]
    assert [o["shape"] for o in ours.meta["sparse_orders"]] == [[32, 200]]
    a, b = ours.path.read_bytes(), theirs.path.read_bytes()
    assert len(a) <= len(b) and len(gzip.compress(a, 9)) <= len(gzip.compress(b, 9))
    assert (a == b) == (ours.meta["sparse_orders"] == theirs.meta["sparse_orders"])


@pytest.mark.parametrize("kwargs, match", [
    ({"onnx_int8": ("static", "fp8")}, "onnx_int8 must be a subset"),
    ({"onnx_int8": ("dynamic",), "formats": ("tflite",)}, "add 'onnx' to formats"),
    ({"calibration_samples": 0}, "calibration_samples must be an integer >= 1"),
    ({"min_agreement": 1.5}, "min_agreement must be in"),
    ({"formats": ("tflite", "coreml")}, "formats must be a non-empty subset"),
    ({"sparse_layout": "csc"}, "sparse_layout must be one of 'smallest', 'converter'"),
])
def test_bad_parameters_are_refused_when_built(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        Export(**kwargs)


def test_an_int8_file_below_min_agreement_is_recorded_not_raised(tmp_path, tiny_data):
    # An untrained model's logits are near-ties, so int8 flips top-1 classes and 1.0 is strict; a
    # float file of the same model still has to match (it would raise).
    untrained = make_artifact("untrained", save_keras(make_tiny_model(), tmp_path / "u.h5"), fmt="keras",
                              kind="keras", stage="source", config={}, parent=None)
    ctx = RunContext(data=tiny_data, out_dir=tmp_path, stage_dir=tmp_path / "export")
    files = {a.name: a for a in run_stage(Export(formats=("onnx",), onnx_int8=("dynamic",), min_agreement=1.0),
                                          untrained, ctx)}
    assert files["untrained.onnx"].meta["validation"]["passed"]
    check = files["untrained.dynamic.onnx"].meta["validation"]
    assert check["passed"] is False and check["top1_agreement"] < 1.0
    assert any(n.startswith("export: untrained.dynamic.onnx agrees with its Keras model on") and
               "its parity is recorded as failed" in n for n in ctx.notes)
