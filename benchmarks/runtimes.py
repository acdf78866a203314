"""Run a model file in its runtime behind one interface.

>>> rt = open_runtime("out/pruned.tflite", "tflite", threads=1)
>>> rt.runtime, rt.delegate, rt.threads, round(rt.load_ms)
('litert', 'xnnpack', 1, 3)
>>> rt.predict(x[:7]).shape
(7, 10)

Every runtime takes float32 inputs of any batch size and returns float32 logits. A LiteRT
model with int8 inputs/outputs gets its inputs quantized with the input tensor's scale and
zero point and its outputs dequantized, so callers never see the integer domain.

`delegate` (alias `provider`) records what actually executes the graph:
- keras: "tensorflow";
- litert: "xnnpack" when the XNNPACK delegate took nodes, "builtin" for the builtin kernels
  (resolver "builtin", or resolver "default" after XNNPACK failed to prepare: then `fallback`
  holds the one-line reason);
- onnxruntime: the session's first execution provider, e.g. "CPUExecutionProvider".
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

import slimpipe.pipeline  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from slimpipe.pipeline.errors import ConfigError

FORMATS = ("keras", "tflite", "onnx")
RUNTIME_OF = {"keras": "keras", "tflite": "litert", "onnx": "onnxruntime"}  # by file format
DEVICES = ("cpu", "gpu")
RESOLVERS = ("default", "builtin")
ORT_GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
ORT_CPU = "CPUExecutionProvider"


class Runtime:
    """A loaded model. Subclasses set the attributes and implement `predict`."""

    runtime: str  # "keras" | "litert" | "onnxruntime"
    device: str  # "cpu" | "gpu"
    threads: int  # threads the runtime was told to use (0: not controllable)
    load_ms: float  # time to load and initialize, milliseconds
    delegate: str  # see the module docstring
    fallback: str | None  # why the preferred path was not used, or None
    path: Path
    fmt: str

    def __init__(self, *, path: Path, fmt: str, runtime: str, device: str, threads: int,
                 delegate: str, load_ms: float = 0.0, fallback: str | None = None) -> None:
        self.path, self.fmt, self.runtime, self.device = Path(path), fmt, runtime, device
        self.threads, self.delegate, self.load_ms, self.fallback = threads, delegate, load_ms, fallback

    @property
    def provider(self) -> str:
        return self.delegate

    def predict(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """JSON-ready record of how this runtime runs the file (for the report)."""
        return {"runtime": self.runtime, "format": self.fmt, "device": self.device,
                "threads": self.threads, "delegate": self.delegate, "fallback": self.fallback,
                "load_ms": round(self.load_ms, 3)}

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} {self.path.name} {self.runtime}/{self.delegate} "
                f"{self.device} threads={self.threads}>")


def select_ort_providers(available: list[str], device: str) -> list[str]:
    """onnxruntime providers for `device`, best first. Pure: testable without a GPU."""
    if device == "cpu":
        return [ORT_CPU]
    if device == "gpu":
        gpu = [p for p in ORT_GPU_PROVIDERS if p in available]
        if not gpu:
            raise ConfigError(
                f"device 'gpu' needs onnxruntime's TensorRT or CUDA execution provider. "
                f"Received: available providers {', '.join(available) or 'none'}; "
                f"fix: install onnxruntime-gpu on a machine with a CUDA driver, or use device='cpu'")
        return [*gpu, ORT_CPU]
    raise ConfigError(f"device must be one of {', '.join(DEVICES)}. Received: device={device!r}")


# TensorRT's sparse tactics take 2:4 structured-sparse weights (prune's sparsity_m_by_n=(2, 4))
# only when asked; they are then timed against the dense ones and kept where faster.
TRT_OPTIONS = {"trt_sparsity_enable": True}


def ort_provider_options(providers: list[str]) -> list[dict[str, object]]:
    """Options for each of `providers` (same order), as InferenceSession's provider_options
    takes them. Pure: testable without a GPU.

    >>> ort_provider_options(["TensorrtExecutionProvider", "CPUExecutionProvider"])
    [{'trt_sparsity_enable': True}, {}]
    """
    return [dict(TRT_OPTIONS) if p == "TensorrtExecutionProvider" else {} for p in providers]


def gpu_devices() -> list[str]:
    """GPU execution paths usable in this process, e.g. ["onnxruntime:CUDAExecutionProvider",
    "tensorflow:/physical_device:GPU:0"]. Empty on a machine without a GPU."""
    found: list[str] = []
    try:
        import onnxruntime as ort

        found += [f"onnxruntime:{p}" for p in ort.get_available_providers()
                  if p in ORT_GPU_PROVIDERS or p in ("ROCMExecutionProvider", "MIGraphXExecutionProvider")]
    except ImportError:
        pass
    try:
        import tensorflow as tf

        found += [f"tensorflow:{d.name}" for d in tf.config.list_physical_devices("GPU")]
    except ImportError:
        pass
    return found


def open_runtime(path, fmt: str, *, threads: int = 1, device: str = "cpu",
                 resolver: str = "default") -> Runtime:
    """Load `path` (format `fmt`: "keras" | "tflite" | "onnx") for inference.

    threads: intra-op threads (0 = all cores, os.cpu_count()); Keras ignores it and records 0.
    resolver (tflite only): "default" = XNNPACK, falling back to the builtin kernels if XNNPACK
    fails to prepare; "builtin" = builtin kernels without default delegates.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"runtime format must be one of {', '.join(FORMATS)}. Received: fmt={fmt!r}")
    if device not in DEVICES:
        raise ConfigError(f"device must be one of {', '.join(DEVICES)}. Received: device={device!r}")
    if resolver not in RESOLVERS:
        raise ConfigError(f"resolver must be one of {', '.join(RESOLVERS)}. Received: resolver={resolver!r}")
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 0:
        raise ConfigError(f"threads must be an integer >= 0 (0 = all cores). Received: threads={threads!r}")
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"cannot open {fmt} model: {path} does not exist; fix: check the path")
    n_threads = threads or (os.cpu_count() or 1)
    if fmt == "keras":
        return KerasRuntime(path, device=device)
    if fmt == "tflite":
        if device != "cpu":
            raise ConfigError("device 'gpu' is not supported for tflite: slimpipe runs LiteRT on CPU "
                              "only. Received: fmt='tflite', device='gpu'; fix: use device='cpu', "
                              "or the onnx file with device='gpu'")
        return LiteRTRuntime(path, threads=n_threads, resolver=resolver)
    return OrtRuntime(path, threads=n_threads, device=device)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300] or type(exc).__name__


def _check_input(x: np.ndarray, expected: tuple, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != len(expected) or any(e not in (None, -1) and e != s
                                      for e, s in zip(expected[1:], x.shape[1:])):
        shape = ", ".join("N" if i == 0 else str(e) for i, e in enumerate(expected))
        raise ConfigError(f"{name} expects input of shape ({shape}). Received: shape {x.shape}")
    return x


class KerasRuntime(Runtime):
    def __init__(self, path: Path, *, device: str) -> None:
        import tensorflow as tf

        from slimpipe.pipeline.kerasio import load_keras

        if device == "gpu" and not tf.config.list_physical_devices("GPU"):
            raise ConfigError("device 'gpu' for keras needs a GPU visible to TensorFlow. "
                              "Received: no TensorFlow GPU in this process; fix: use device='cpu'")
        start = time.perf_counter_ns()
        self.model = load_keras(path)
        load_ms = (time.perf_counter_ns() - start) / 1e6
        self._tf_device = "/GPU:0" if device == "gpu" else "/CPU:0"
        super().__init__(path=path, fmt="keras", runtime="keras", device=device, threads=0,
                         delegate="tensorflow", load_ms=load_ms)

    def predict(self, x: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        x = _check_input(x, tuple(self.model.input_shape), self.path.name)
        with tf.device(self._tf_device):
            out = self.model(x, training=False)
        return np.asarray(out, dtype=np.float32)


class LiteRTRuntime(Runtime):
    def __init__(self, path: Path, *, threads: int, resolver: str) -> None:
        start = time.perf_counter_ns()
        fallback = None
        if resolver == "default":
            try:
                interp = self._make(path, threads, builtin=False)
            except RuntimeError as exc:  # "... (TfLiteXNNPackDelegate) failed to prepare."
                fallback = f"XNNPACK failed to prepare, ran builtin kernels: {_one_line(exc)}"
                interp = self._make(path, threads, builtin=True)
        else:
            interp = self._make(path, threads, builtin=True)
        load_ms = (time.perf_counter_ns() - start) / 1e6
        delegated = any(op.get("op_name") == "DELEGATE" for op in interp._get_ops_details())
        self.interpreter = interp
        inputs, outputs = interp.get_input_details(), interp.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ConfigError(f"{path.name}: slimpipe runs models with one input and one output. "
                              f"Received: {len(inputs)} inputs, {len(outputs)} outputs")
        self._in, self._out = inputs[0], outputs[0]
        self._in_index, self._out_index = self._in["index"], self._out["index"]
        self._float_in = np.dtype(self._in["dtype"]) == np.float32
        self._float_out = np.dtype(self._out["dtype"]) == np.float32
        self._shape = tuple(int(d) for d in self._in["shape"])
        sig = self._in.get("shape_signature")
        self._expected = tuple(int(d) for d in (sig if sig is not None and len(sig) else self._shape))
        super().__init__(path=path, fmt="tflite", runtime="litert", device="cpu", threads=threads,
                         delegate="xnnpack" if delegated else "builtin", load_ms=load_ms,
                         fallback=fallback)

    @staticmethod
    def _make(path: Path, threads: int, *, builtin: bool):
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        kind = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES if builtin else OpResolverType.AUTO
        interp = Interpreter(model_path=str(path), num_threads=threads,
                             experimental_op_resolver_type=kind)
        interp.allocate_tensors()  # delegates prepare here
        return interp

    @property
    def input_dtype(self) -> np.dtype:
        return np.dtype(self._in["dtype"])

    def predict(self, x: np.ndarray) -> np.ndarray:
        interp = self.interpreter
        # Fast path for the timed loop: a float32 array of the allocated shape needs no checks,
        # so a small model's latency is the kernels', not this method's (~1 us saved per call).
        if not (type(x) is np.ndarray and x.dtype == np.float32 and x.shape == self._shape):
            x = _check_input(x, self._expected, self.path.name)
            if x.shape != self._shape:
                interp.resize_tensor_input(self._in["index"], list(x.shape), strict=False)
                interp.allocate_tensors()
                self._shape = x.shape
        interp.set_tensor(self._in_index, x if self._float_in else _quantize(x, self._in))
        interp.invoke()
        y = interp.get_tensor(self._out_index)
        return y if self._float_out else _dequantize(y, self._out)


def _quantize(x: np.ndarray, detail: dict) -> np.ndarray:
    dtype = np.dtype(detail["dtype"])
    if dtype.kind == "f":
        return x.astype(dtype, copy=False)
    scale, zero_point = detail["quantization"]
    if not scale:
        raise ConfigError(f"tflite input {detail['name']!r} is {dtype} without quantization "
                          f"parameters; expected a float input or a quantized one")
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale) + zero_point, info.min, info.max).astype(dtype)


def _dequantize(y: np.ndarray, detail: dict) -> np.ndarray:
    if y.dtype.kind == "f":
        return y.astype(np.float32, copy=False)
    scale, zero_point = detail["quantization"]
    if not scale:
        return y.astype(np.float32)
    return ((y.astype(np.float32) - np.float32(zero_point)) * np.float32(scale)).astype(np.float32)


class OrtRuntime(Runtime):
    def __init__(self, path: Path, *, threads: int, device: str) -> None:
        import onnxruntime as ort

        providers = select_ort_providers(ort.get_available_providers(), device)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        start = time.perf_counter_ns()
        self.session = ort.InferenceSession(str(path), sess_options=opts, providers=providers,
                                            provider_options=ort_provider_options(providers))
        load_ms = (time.perf_counter_ns() - start) / 1e6
        used = self.session.get_providers()
        if device == "gpu" and used[0] not in ORT_GPU_PROVIDERS:
            raise ConfigError(f"device 'gpu' requested, but onnxruntime fell back to {used[0]} "
                              f"(providers tried: {', '.join(providers)}); fix: check the CUDA/cuDNN "
                              f"installation onnxruntime-gpu needs, or use device='cpu'")
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ConfigError(f"{path.name}: slimpipe runs models with one input and one output. "
                              f"Received: {len(inputs)} inputs, {len(outputs)} outputs")
        self._input = inputs[0].name
        self._expected = tuple(d if isinstance(d, int) else None for d in inputs[0].shape)
        super().__init__(path=path, fmt="onnx", runtime="onnxruntime", device=device,
                         threads=threads, delegate=used[0], load_ms=load_ms)
        self.provider_options = self.session.get_provider_options().get(used[0], {})

    def predict(self, x: np.ndarray) -> np.ndarray:
        x = _check_input(x, self._expected, self.path.name)
        (out,) = self.session.run(None, {self._input: x})
        return np.asarray(out, dtype=np.float32)
