"""int8 ONNX files: smaller, really integer (initializers and ops), still agreeing with the float
model in onnxruntime; bad input fails with one-line errors and leaves no file behind."""
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from slimpipe.benchmarks.accuracy import predict_all, top1_agreement
from slimpipe.benchmarks.runtimes import open_runtime
from slimpipe.exporters.onnx import export_onnx
from slimpipe.exporters.onnx_quant import quantize_onnx_dynamic, quantize_onnx_static
from slimpipe.pipeline.errors import ConfigError, StageError
from tests.conftest import make_tiny_model


@pytest.fixture(scope="module")
def float_onnx(tmp_path_factory, tiny_data):
    """A trained tiny model as float ONNX (an untrained one has near-tied logits)."""
    import tf_keras as keras

    model = make_tiny_model()
    model.compile(keras.optimizers.Adam(1e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(tiny_data.x_train, tiny_data.y_train, epochs=3, batch_size=32, verbose=0)
    return export_onnx(model, tmp_path_factory.mktemp("onnx") / "tiny.onnx")


def initializer_dtypes(path):
    return {numpy_helper.to_array(t).dtype.name for t in onnx.load(str(path)).graph.initializer}


def op_types(path):
    return {node.op_type for node in onnx.load(str(path)).graph.node}


def agreement(path, reference_path, x):
    quantized = predict_all(open_runtime(path, "onnx"), x)
    reference = predict_all(open_runtime(reference_path, "onnx"), x)
    return top1_agreement(quantized, reference)


@pytest.mark.parametrize("weight_type", ["uint8", "int8"])
def test_dynamic_is_smaller_integer_and_agrees(float_onnx, tiny_data, tmp_path, weight_type):
    out = quantize_onnx_dynamic(float_onnx, tmp_path / "tiny.dynamic.onnx", weight_type=weight_type,
                                keep_first_float=False)

    assert out == tmp_path / "tiny.dynamic.onnx"
    assert out.stat().st_size < float_onnx.stat().st_size
    assert weight_type in initializer_dtypes(out)
    assert {"DynamicQuantizeLinear", "MatMulInteger", "ConvInteger"} <= op_types(out)
    assert agreement(out, float_onnx, tiny_data.x_test) >= 0.9
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.dynamic.onnx"]  # no temporaries left


def test_dynamic_keeps_the_first_layer_float_by_default(float_onnx, tiny_data, tmp_path):
    out = quantize_onnx_dynamic(float_onnx, tmp_path / "tiny.dynamic.onnx")

    nodes = onnx.load(str(out)).graph.node
    weighted = [n.op_type for n in nodes if n.op_type in ("Conv", "ConvInteger", "MatMul", "MatMulInteger", "Gemm")]
    assert weighted[0] == "Conv"  # the first layer reads the raw image in float
    assert "ConvInteger" not in weighted and "MatMulInteger" in weighted  # the dense layers are int8
    assert {"float32", "int8"} <= initializer_dtypes(out)
    assert agreement(out, float_onnx, tiny_data.x_test) >= 0.9


def test_static_qdq_is_smaller_integer_and_agrees(float_onnx, tiny_data, tmp_path):
    out = quantize_onnx_static(float_onnx, tmp_path / "tiny.static.onnx", tiny_data.x_train[:200])

    assert out.stat().st_size < float_onnx.stat().st_size
    assert "int8" in initializer_dtypes(out)
    assert {"QuantizeLinear", "DequantizeLinear"} <= op_types(out)
    assert agreement(out, float_onnx, tiny_data.x_test) >= 0.9
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.static.onnx"]


def test_bad_input_is_refused_in_one_line(float_onnx, tiny_data, tmp_path):
    cases = [
        (lambda: quantize_onnx_dynamic(tmp_path / "missing.onnx", tmp_path / "q.onnx"), ConfigError, "does not exist"),
        (lambda: quantize_onnx_dynamic(float_onnx, float_onnx), ConfigError, "dst must differ"),
        (lambda: quantize_onnx_dynamic(float_onnx, tmp_path / "q.onnx", weight_type="int4"), ConfigError, "weight_type"),
        (lambda: quantize_onnx_dynamic(float_onnx, tmp_path / "q.onnx", keep_first_float="no"),
         ConfigError, "keep_first_float"),
        (lambda: quantize_onnx_static(float_onnx, tmp_path / "q.onnx", tiny_data.x_train[:8], input_name="x"),
         ConfigError, r"no model input named 'x'.*'input'"),
        (lambda: quantize_onnx_static(float_onnx, tmp_path / "q.onnx", np.zeros((4, 28, 28, 1))),
         ConfigError, r"shape \(N, 12, 12, 1\).*\(4, 28, 28, 1\)"),
        (lambda: quantize_onnx_static(float_onnx, tmp_path / "q.onnx", tiny_data.x_train[:8], per_channel="yes"),
         ConfigError, "per_channel"),
    ]
    for call, error, pattern in cases:
        with pytest.raises(error, match=pattern) as info:
            call()
        assert "\n" not in str(info.value)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx model")
    with pytest.raises(ConfigError, match=r"broken\.onnx, which is not one") as info:
        quantize_onnx_dynamic(broken, tmp_path / "q.onnx")
    assert "\n" not in str(info.value)


def test_a_failing_quantizer_leaves_nothing_behind(float_onnx, tmp_path, monkeypatch):
    import onnxruntime.quantization as ortq

    def fail(model, out, **kwargs):
        with open(out, "wb") as fh:  # a half-written file, then the failure
            fh.write(b"partial")
        raise RuntimeError("quantizer exploded\nwith details")

    monkeypatch.setattr(ortq, "quantize_dynamic", fail)
    with pytest.raises(StageError, match=r"^ONNX dynamic quantization of tiny\.onnx failed in "
                                         r"onnxruntime: RuntimeError: quantizer exploded\. ") as info:
        quantize_onnx_dynamic(float_onnx, tmp_path / "q.onnx")
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []
