"""int8 ONNX files from a float ONNX file, with onnxruntime's quantization tools.

>>> quantize_onnx_dynamic("out/pruned.onnx", "out/pruned.dynamic.onnx")
PosixPath('out/pruned.dynamic.onnx')
>>> quantize_onnx_static("out/pruned.onnx", "out/pruned.static.onnx", ds.x_train[:500])
PosixPath('out/pruned.static.onnx')

- dynamic: int8 weights, per output channel by default; activations are quantized at run time
  (DynamicQuantizeLinear -> MatMulInteger / ConvInteger). No calibration data.
  Measured on the default recipe's Fashion-MNIST CNNs (2,000 test images, top-1 agreement with
  Keras): per-tensor uint8 weights 0.968 / 0.988 / 0.991 for the clustered / pruned / dense
  model, per-channel int8 0.994 / 0.988 / 0.992; in another run's clustered / structured models
  0.980 / 0.985 with every layer int8 and 0.998 / 0.997 with the first conv left float
  (`keep_first_float`, the default): the run-time per-tensor quantization of the raw image hurt
  most. Clustered kernels have a few outlying centroids that stretch a per-tensor weight range.
  `weight_type="uint8"` remains available: with int8 weights onnxruntime runs U8S8, whose VPMADDUBSW on AVX2 without VNNI can saturate 16-bit sums
  (on a tiny test model max |diff| vs float was 0.084 with int8 weights and 0.015 with uint8).
- static: QDQ format (QuantizeLinear/DequantizeLinear pairs that onnxruntime fuses into
  QLinearConv/QLinearMatMul), int8 activations and symmetric int8 weights (onnxruntime's
  recommended S8S8 on CPU), per-channel weights by default (conv output channels often have
  very different ranges), ranges calibrated (MinMax) on `calibration` inputs from the training set.

Both run `quant_pre_process` first (ONNX shape inference and onnxruntime's graph optimization,
e.g. MatMul+Add -> Gemm, which onnxruntime recommends before quantizing). Its symbolic shape
inference needs sympy, which is not installed here, and is skipped: the exported models' only
free dimension is the batch. Files are written atomically and pass `onnx.checker` first.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

import slimpipe.pipeline  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from slimpipe.pipeline.atomic import atomic_output
from slimpipe.pipeline.errors import ConfigError, SlimpipeError, StageError

WEIGHT_TYPES = ("uint8", "int8")
CALIBRATION_BATCH = 32


def quantize_onnx_dynamic(src, dst, *, weight_type: str = "int8", per_channel: bool = True,
                          keep_first_float: bool = True) -> Path:
    """Dynamic-range int8 quantization of `src` written to `dst`. Returns `dst`.

    `keep_first_float` leaves the first Conv/MatMul/Gemm (the one reading the raw input) in
    float32: quantizing the image itself per tensor at run time is where dynamic int8 lost the
    most (see the module docstring), and a first layer holds few weights."""
    src, dst = _paths(src, dst, per_channel)
    if not isinstance(keep_first_float, bool):
        raise ConfigError(f"ONNX dynamic quantization: keep_first_float must be True or False. "
                          f"Received: keep_first_float={keep_first_float!r}")
    if weight_type not in WEIGHT_TYPES:
        raise ConfigError(f"ONNX dynamic quantization: weight_type must be 'uint8' or 'int8'. "
                          f"Received: weight_type={weight_type!r}")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    wtype = QuantType.QUInt8 if weight_type == "uint8" else QuantType.QInt8
    return _quantize("dynamic", src, dst, lambda model, out: quantize_dynamic(
        model, out, weight_type=wtype, per_channel=per_channel,
        nodes_to_exclude=_first_weight_node(model) if keep_first_float else []))


def _first_weight_node(path) -> list[str]:
    """The name of the first Conv/MatMul/Gemm node (graph nodes are in topological order)."""
    for node in _graph(Path(path)).node:
        if node.op_type in ("Conv", "MatMul", "Gemm"):
            return [node.name]
    return []


def quantize_onnx_static(src, dst, calibration: np.ndarray, *, input_name: str = "input",
                         per_channel: bool = True) -> Path:
    """Static int8 (QDQ) quantization of `src`, calibrated on `calibration`, written to `dst`."""
    src, dst = _paths(src, dst, per_channel)
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                          QuantType, quantize_static)

    graph = _graph(src)
    known = {i.name for i in graph.initializer}
    inputs = {i.name: i for i in graph.input if i.name not in known}
    if input_name not in inputs:
        raise ConfigError(f"ONNX static quantization of {src.name}: no model input named {input_name!r}. "
                          f"Received model inputs: {', '.join(map(repr, inputs)) or 'none'}; fix: pass input_name")
    dims = [d.dim_value if d.HasField("dim_value") else None
            for d in inputs[input_name].type.tensor_type.shape.dim]
    x = np.asarray(calibration, dtype=np.float32) if calibration is not None else np.zeros((0,))
    if x.ndim != len(dims) or len(x) == 0 or any(
            d is not None and d != n for d, n in zip(dims[1:], x.shape[1:])):
        shape = ", ".join("N" if i == 0 else str(d) for i, d in enumerate(dims))
        raise ConfigError(f"ONNX static quantization of {src.name}: calibration must be an array of "
                          f"shape ({shape}) with N >= 1 training inputs. Received: shape {x.shape}")
    batch = dims[0] or CALIBRATION_BATCH  # a model with a fixed batch gets batches of that size
    if len(x) < batch and dims[0]:
        raise ConfigError(f"ONNX static quantization of {src.name}: the model's batch is fixed at "
                          f"{batch}; received {len(x)} calibration inputs: pass at least {batch}")
    stop = len(x) - len(x) % batch if dims[0] else len(x)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._batches = iter([{input_name: x[i:i + batch]} for i in range(0, stop, batch)])

        def get_next(self):
            return next(self._batches, None)

    return _quantize("static", src, dst, lambda model, out: quantize_static(
        model, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax))


def _paths(src, dst, per_channel) -> tuple[Path, Path]:
    if not isinstance(per_channel, bool):
        raise ConfigError(f"ONNX quantization: per_channel must be True or False. Received: per_channel={per_channel!r}")
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise ConfigError(f"ONNX quantization: expected a float .onnx file. Received: {src} does not exist; "
                          f"fix: export it first (exporters.onnx.export_onnx)")
    if dst.resolve() == src.resolve():
        raise ConfigError(f"ONNX quantization: dst must differ from src. Received: both {src}; "
                          f"fix: write e.g. {src.with_suffix('.int8.onnx').name}")
    _graph(src)
    return src, dst


def _graph(src: Path):
    import onnx

    try:
        graph = onnx.load(str(src), load_external_data=False).graph
    except Exception as exc:
        graph, why = None, f"{type(exc).__name__}: {_first_line(exc)}"
    else:
        why = "it holds no graph"
    if graph is None or not graph.node:
        raise ConfigError(f"ONNX quantization: expected an ONNX model. Received: {src.name}, which is "
                          f"not one ({why}); fix: pass a file written by exporters.onnx.export_onnx")
    return graph


def _quantize(kind: str, src: Path, dst: Path, quantize) -> Path:
    import onnx

    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dst.parent, prefix=f".{dst.name}.") as work:
        model = _preprocess(src, Path(work) / "pre.onnx")
        try:
            with atomic_output(dst) as tmp:
                quantize(str(model), str(tmp))
                onnx.checker.check_model(str(tmp))
        except SlimpipeError:
            raise
        except Exception as exc:
            raise StageError(f"ONNX {kind} quantization of {src.name} failed in onnxruntime: "
                             f"{type(exc).__name__}: {_first_line(exc)}. Expected a float ONNX model "
                             f"from exporters.onnx; fix: re-export it, or try another opset") from exc
    return dst


def _preprocess(src: Path, out: Path) -> Path:
    from onnxruntime.quantization import quant_pre_process

    try:
        quant_pre_process(str(src), str(out), skip_symbolic_shape=True)
        return out
    except Exception:  # optional step: quantizing the unprocessed model still works, if less fused
        return src


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]

