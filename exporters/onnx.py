"""Export a Keras model to ONNX with tf2onnx.

tf2onnx's `from_keras` needs an explicit input signature on TF >= 2.16
(onnx/tensorflow-onnx#2329); the input is named "input" with a free batch dimension. The
result is checked with `onnx.checker.check_model` before it is written (atomically).

>>> export_onnx(model, "out/pruned.onnx")
PosixPath('out/pruned.onnx')
"""
from __future__ import annotations

from pathlib import Path

import pipeline  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from exporters import write_bytes_atomic
from pipeline.errors import ConfigError, ExportValidationError, StageError

MIN_OPSET, MAX_OPSET = 13, 18
_PROTOBUF_LIMIT = 2 * 1024 ** 3


def export_onnx(model, path, *, opset: int = 17) -> Path:
    """Convert `model` to ONNX (opset `opset`), check it and write it atomically to `path`.

    Raises ConfigError for bad arguments, StageError if tf2onnx fails and ExportValidationError
    if the converted graph does not pass `onnx.checker.check_model`; causes are chained.
    """
    if not isinstance(opset, int) or isinstance(opset, bool) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise ConfigError(f"ONNX export: opset must be an integer in [{MIN_OPSET}, {MAX_OPSET}]. "
                          f"Received: opset={opset!r}")
    path = Path(path)
    name = getattr(model, "name", "?")

    import onnx
    import tensorflow as tf
    import tf2onnx

    input_shape = tuple(model.input_shape[1:])
    signature = (tf.TensorSpec((None, *input_shape), tf.float32, name="input"),)
    try:
        proto, _ = tf2onnx.convert.from_keras(model, input_signature=signature, opset=opset)
    except Exception as exc:
        raise StageError(
            f"ONNX export of model {name!r} (opset {opset}) failed in tf2onnx: "
            f"{type(exc).__name__}: {_first_line(exc)}. Expected a model of standard Keras layers; "
            f"fix: strip training wrappers (tfmot strip_*) or try another opset"
        ) from exc
    try:
        onnx.checker.check_model(proto)
    except Exception as exc:
        raise ExportValidationError(
            f"ONNX export of model {name!r}: the converted graph fails onnx.checker: "
            f"{_first_line(exc)}; fix: try another opset or report a tf2onnx bug"
        ) from exc
    data = proto.SerializeToString()
    if len(data) >= _PROTOBUF_LIMIT:
        raise StageError(f"ONNX export of model {name!r}: {len(data)} bytes exceeds the 2 GiB "
                         f"protobuf limit; external-data export is not supported")
    return write_bytes_atomic(path, data)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
