"""export_tflite: parity with Keras, atomic writes, quantized modes, argument checks."""
import os

import slimpipe.pipeline  # noqa: F401

import numpy as np
import pytest

from slimpipe.benchmarks.runtimes import open_runtime
from slimpipe.pipeline.atomic import write_bytes_atomic
from slimpipe.exporters.tflite import export_tflite
from slimpipe.exporters.validate import check_parity, raise_on_mismatch
from slimpipe.pipeline.errors import ConfigError, ExportValidationError, StageError


KERNEL_SHAPES = {(8, 3, 3, 1), (32, 200), (4, 32)}  # conv, dense, logits (TFLite layout)


def _kernel_dtypes(path):
    """{shape: set of dtypes} of the kernel-shaped tensors the interpreter reports."""
    from ai_edge_litert.interpreter import Interpreter

    found = {}
    for d in Interpreter(model_path=str(path)).get_tensor_details():
        shape = tuple(int(s) for s in d["shape"])
        if shape in KERNEL_SHAPES:
            found.setdefault(shape, set()).add(np.dtype(d["dtype"]))
    assert set(found) == KERNEL_SHAPES, found
    return found


def test_float32_parity_and_mismatch_report(tiny_model, tiny_data, tmp_path):
    x = tiny_data.x_test
    ref = tiny_model(x, training=False).numpy()
    path = export_tflite(tiny_model, tmp_path / "tiny.tflite")
    assert path == tmp_path / "tiny.tflite" and path.read_bytes()[4:8] == b"TFL3"

    ok = check_parity(ref, path, "tflite", x, atol=1e-4)
    assert ok["passed"] and ok["max_abs_diff"] <= 1e-4
    assert ok["samples"] == len(x) and ok["mismatched_samples"] == 0 and ok["top1_agreement"] == 1.0
    raise_on_mismatch({"tiny.tflite": ok})  # nothing to report

    bad_ref = ref.copy()
    bad_ref[:12] += 3e-3
    bad = check_parity(bad_ref, path, "tflite", x, atol=1e-4)
    assert not bad["passed"] and bad["mismatched_samples"] == 12
    assert 2e-3 < bad["max_abs_diff"] < 4e-3
    with pytest.raises(ExportValidationError) as err:
        raise_on_mismatch({"tiny.tflite": ok, "pruned.tflite": bad})
    msg = str(err.value)
    assert "pruned.tflite" in msg and "tiny.tflite" not in msg
    assert "on 12 of 128 samples" in msg and "\n" not in msg

    # rtol scales the tolerance with each logit's size (numpy.allclose's rule)
    rtol = float(3.5e-3 / np.abs(bad_ref[:12]).min())
    assert check_parity(bad_ref, path, "tflite", x, atol=1e-4, rtol=rtol)["passed"]
    assert check_parity(bad_ref, path, "tflite", x, atol=1e-4, rtol=1e-4)["mismatched_samples"] == 12


def test_failed_conversion_leaves_no_file(tiny_model, tmp_path, monkeypatch):
    import tensorflow as tf

    real = tf.lite.TFLiteConverter.from_keras_model

    def failing_converter(model):
        converter = real(model)

        def boom():
            raise RuntimeError("converter exploded\nsecond line")

        converter.convert = boom
        return converter

    monkeypatch.setattr(tf.lite.TFLiteConverter, "from_keras_model", failing_converter)
    target = tmp_path / "out" / "tiny.tflite"
    with pytest.raises(StageError) as err:
        export_tflite(tiny_model, target)
    assert "converter exploded" in str(err.value) and "\n" not in str(err.value)
    assert isinstance(err.value.__cause__, RuntimeError)
    assert not target.exists()
    assert not target.parent.exists() or list(target.parent.iterdir()) == []


def test_failed_write_keeps_old_file_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "model.tflite"
    target.write_bytes(b"old complete file")

    def broken_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        write_bytes_atomic(target, b"new" * 1000)
    assert target.read_bytes() == b"old complete file"
    assert [p.name for p in tmp_path.iterdir()] == ["model.tflite"]


def test_quantized_modes_store_quantized_weights(tiny_model, tiny_data, tmp_path):
    x = tiny_data.x_test[:32]
    ref = tiny_model(x, training=False).numpy()

    dynamic = export_tflite(tiny_model, tmp_path / "dynamic.tflite", mode="dynamic")
    assert _kernel_dtypes(dynamic)[(32, 200)] == {np.dtype(np.int8)}  # the big kernel
    float_only = _kernel_dtypes(export_tflite(tiny_model, tmp_path / "f32.tflite"))
    assert all(v == {np.dtype(np.float32)} for v in float_only.values())

    half = export_tflite(tiny_model, tmp_path / "half.tflite", mode="float16")
    # float16 constants, dequantized to float32 at run time
    assert all(np.dtype(np.float16) in v for v in _kernel_dtypes(half).values())

    full = export_tflite(tiny_model, tmp_path / "int8.tflite", mode="int8",
                         representative=tiny_data.x_train[:100])
    assert all(v == {np.dtype(np.int8)} for v in _kernel_dtypes(full).values())
    rt = open_runtime(full, "tflite")
    assert rt.input_dtype == np.int8
    out = rt.predict(x)  # float in, float out
    assert out.dtype == np.float32 and out.shape == ref.shape
    assert np.abs(out - ref).max() < 0.1 * np.abs(ref).max()
    assert np.mean(out.argmax(1) == ref.argmax(1)) >= 0.9


def test_bad_arguments(tiny_model, tiny_data, tmp_path):
    with pytest.raises(ConfigError, match="mode"):
        export_tflite(tiny_model, tmp_path / "a.tflite", mode="int4")
    with pytest.raises(ConfigError, match="representative"):
        export_tflite(tiny_model, tmp_path / "a.tflite", mode="int8")
    with pytest.raises(ConfigError, match="representative"):
        export_tflite(tiny_model, tmp_path / "a.tflite", representative=tiny_data.x_train)
    with pytest.raises(ConfigError, match=r"shape \(N, 12, 12, 1\)"):
        export_tflite(tiny_model, tmp_path / "a.tflite", mode="int8",
                      representative=np.zeros((4, 28, 28, 1), np.float32))
    with pytest.raises(ConfigError, match="io must be 'int8' or 'float'"):
        export_tflite(tiny_model, tmp_path / "a.tflite", io="uint8")
    with pytest.raises(ConfigError, match="per_channel must be True or False"):
        export_tflite(tiny_model, tmp_path / "a.tflite", per_channel="no")
    with pytest.raises(ConfigError, match="sparse_layout must be one of smallest, converter"):
        export_tflite(tiny_model, tmp_path / "a.tflite", sparse=True, sparse_layout="csc")
    assert not (tmp_path / "a.tflite").exists()
