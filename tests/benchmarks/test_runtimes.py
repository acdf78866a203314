"""Runtimes: LiteRT and onnxruntime reproduce Keras at any batch size; providers; GPU requests."""
import os

import slimpipe.pipeline  # noqa: F401

import numpy as np
import pytest

from slimpipe.benchmarks.runtimes import gpu_devices, open_runtime, ort_provider_options, select_ort_providers
from slimpipe.pipeline.errors import ConfigError


@pytest.fixture
def files(tiny_model, tmp_path):
    from slimpipe.exporters.onnx import export_onnx
    from slimpipe.exporters.tflite import export_tflite
    from slimpipe.pipeline.kerasio import save_keras

    return {"keras": save_keras(tiny_model, tmp_path / "m.h5"),
            "tflite": export_tflite(tiny_model, tmp_path / "m.tflite"),
            "onnx": export_onnx(tiny_model, tmp_path / "m.onnx")}


def test_every_runtime_matches_keras_at_batch_1_and_7(files, tiny_data):
    keras_rt = open_runtime(files["keras"], "keras", threads=4)
    assert (keras_rt.runtime, keras_rt.threads, keras_rt.delegate) == ("keras", 0, "tensorflow")
    runtimes = [open_runtime(files["tflite"], "tflite"),
                open_runtime(files["tflite"], "tflite", resolver="builtin"),
                open_runtime(files["onnx"], "onnx")]
    assert [(r.runtime, r.delegate) for r in runtimes] == [
        ("litert", "xnnpack"), ("litert", "builtin"), ("onnxruntime", "CPUExecutionProvider")]
    for batch in (1, 7, 1, 3):  # shrink and grow again: the tflite input is resized each time
        x = tiny_data.x_test[:batch]
        ref = keras_rt.predict(x)
        assert ref.shape == (batch, 4) and ref.dtype == np.float32
        for rt in runtimes:
            out = rt.predict(x)
            assert out.shape == (batch, 4) and out.dtype == np.float32, rt
            np.testing.assert_allclose(out, ref, atol=1e-4, err_msg=repr(rt))
    for rt in [keras_rt, *runtimes]:
        assert rt.device == "cpu" and rt.load_ms > 0 and rt.fallback is None
        assert rt.provider == rt.delegate
        assert set(rt.describe()) >= {"runtime", "device", "threads", "delegate", "load_ms"}
        assert rt.threads == (0 if rt.runtime == "keras" else 1)


def test_threads_zero_means_all_cores(files):
    assert open_runtime(files["onnx"], "onnx", threads=0).threads == os.cpu_count()
    assert open_runtime(files["tflite"], "tflite", threads=0).threads == os.cpu_count()
    assert open_runtime(files["tflite"], "tflite", threads=2).threads == 2


def test_wrong_input_shape_is_a_config_error(files):
    for fmt in ("tflite", "onnx", "keras"):
        rt = open_runtime(files[fmt], fmt)
        with pytest.raises(ConfigError, match=r"\(N, 12, 12, 1\)"):
            rt.predict(np.zeros((2, 28, 28, 1), np.float32))


def test_bad_arguments(files, tmp_path):
    with pytest.raises(ConfigError, match="fmt"):
        open_runtime(files["onnx"], "pt")
    with pytest.raises(ConfigError, match="threads"):
        open_runtime(files["onnx"], "onnx", threads=-1)
    with pytest.raises(ConfigError, match="resolver"):
        open_runtime(files["tflite"], "tflite", resolver="xnnpack")
    with pytest.raises(ConfigError, match="does not exist"):
        open_runtime(tmp_path / "missing.onnx", "onnx")


def test_gpu_request_without_gpu_is_a_config_error(files):
    if gpu_devices():
        pytest.skip("this machine has a GPU path")
    for fmt in ("onnx", "tflite", "keras"):
        with pytest.raises(ConfigError, match="gpu"):
            open_runtime(files[fmt], fmt, device="gpu")


def test_gpu_devices_is_a_list_of_strings():
    found = gpu_devices()
    assert isinstance(found, list) and all(isinstance(d, str) for d in found)
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert not any(d.startswith("onnxruntime:") for d in found)


@pytest.mark.parametrize("available, device, expected", [
    (["CPUExecutionProvider"], "cpu", ["CPUExecutionProvider"]),
    (["CUDAExecutionProvider", "CPUExecutionProvider"], "cpu", ["CPUExecutionProvider"]),
    (["CUDAExecutionProvider", "CPUExecutionProvider"], "gpu",
     ["CUDAExecutionProvider", "CPUExecutionProvider"]),
    (["CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"], "gpu",
     ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]),
    (["TensorrtExecutionProvider", "CPUExecutionProvider"], "gpu",
     ["TensorrtExecutionProvider", "CPUExecutionProvider"]),
])
def test_select_ort_providers(available, device, expected):
    assert select_ort_providers(available, device) == expected


def test_select_ort_providers_errors():
    with pytest.raises(ConfigError, match="AzureExecutionProvider, CPUExecutionProvider"):
        select_ort_providers(["AzureExecutionProvider", "CPUExecutionProvider"], "gpu")
    with pytest.raises(ConfigError, match="device"):
        select_ort_providers(["CPUExecutionProvider"], "tpu")


def test_tensorrt_gets_its_2_4_sparse_tactics_and_the_others_no_options():
    providers = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert ort_provider_options(providers) == [{"trt_sparsity_enable": True}, {}, {}]
    assert ort_provider_options(["CUDAExecutionProvider", "CPUExecutionProvider"]) == [{}, {}]


def test_gpu_session_asks_tensorrt_for_sparsity_without_a_gpu(files, tiny_data, monkeypatch):
    """Provider selection end to end, with onnxruntime's GPU providers faked: the session gets
    TensorRT first with trt_sparsity_enable, and the runtime records what it was given."""
    import onnxruntime as ort

    real, seen = ort.InferenceSession, {}

    class FakeGpuSession:
        def __init__(self, path, sess_options=None, providers=None, provider_options=None):
            seen.update(providers=providers, options=provider_options)
            self._cpu = real(path, sess_options=sess_options, providers=["CPUExecutionProvider"])

        def get_providers(self):
            return list(seen["providers"])

        def get_provider_options(self):
            return dict(zip(seen["providers"], seen["options"]))

        def __getattr__(self, name):
            return getattr(self._cpu, name)

    monkeypatch.setattr(ort, "get_available_providers", lambda: [
        "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", FakeGpuSession)
    rt = open_runtime(files["onnx"], "onnx", device="gpu")
    assert seen["providers"] == ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert seen["options"] == [{"trt_sparsity_enable": True}, {}, {}]
    assert (rt.device, rt.delegate) == ("gpu", "TensorrtExecutionProvider")
    assert rt.provider_options == {"trt_sparsity_enable": True}
    assert rt.predict(tiny_data.x_test[:3]).shape == (3, 4)


def test_litert_fast_path_and_checked_path_agree(files, tiny_data):
    rt = open_runtime(files["tflite"], "tflite")
    x = tiny_data.x_test[:2].astype(np.float32)
    fast = rt.predict(x)  # float32 ndarray of the allocated shape after the first call
    np.testing.assert_array_equal(rt.predict(x), fast)
    np.testing.assert_allclose(rt.predict(x.astype(np.float64).tolist()), fast, atol=1e-6)
    with pytest.raises(ConfigError, match="expects input of shape"):
        rt.predict(np.zeros((2, 3), np.float32))
