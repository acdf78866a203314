"""Export a Keras model to ONNX with tf2onnx.

tf2onnx's `from_keras` needs an explicit input signature on TF >= 2.16
(onnx/tensorflow-onnx#2329); the input is named "input" with a free batch dimension. The
result is checked with `onnx.checker.check_model` before it is written (atomically).

>>> export_onnx(model, "out/pruned.onnx")
PosixPath('out/pruned.onnx')
"""
from __future__ import annotations

import re
from pathlib import Path

import slimpipe.pipeline  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from slimpipe.pipeline.atomic import write_bytes_atomic
from slimpipe.pipeline.errors import ConfigError, ExportValidationError, StageError

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
    _renumber_generated_names(proto)
    data = proto.SerializeToString(deterministic=True)
    if len(data) >= _PROTOBUF_LIMIT:
        raise StageError(f"ONNX export of model {name!r}: {len(data)} bytes exceeds the 2 GiB "
                         f"protobuf limit; external-data export is not supported")
    return write_bytes_atomic(path, data)


_GENERATED = re.compile(r"__(\d+)(?=(:\d+)?$)")


def _renumber_generated_names(proto) -> None:
    """Number the names tf2onnx made up ("Conv2D__22") 1, 2, 3... in the order of their numbers.

    tf2onnx takes those numbers from a process-wide counter, so the same model exported twice
    in one process got other names, and other bytes, the second time. The renumbering is a
    bijection on the numbers, so names stay unique. Graphs with subgraphs are left as they are.
    """
    import onnx

    g = proto.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
           for n in g.node for a in n.attribute):
        return
    infos = [*g.input, *g.output, *g.value_info]
    dims = [d for v in infos if v.type.HasField("tensor_type")
            for d in v.type.tensor_type.shape.dim if d.HasField("dim_param")]  # "unk__17"
    names = ([n.name for n in g.node] + [x for n in g.node for x in (*n.input, *n.output)]
             + [t.name for t in g.initializer] + [v.name for v in infos]
             + [d.dim_param for d in dims])
    numbers = sorted({int(m.group(1)) for x in names if (m := _GENERATED.search(x))})
    rank = {n: i for i, n in enumerate(numbers, 1)}

    def fix(name: str) -> str:
        return _GENERATED.sub(lambda m: f"__{rank[int(m.group(1))]}", name)

    for n in g.node:
        n.name = fix(n.name)
        n.input[:] = [fix(x) for x in n.input]
        n.output[:] = [fix(x) for x in n.output]
    for item in (*g.initializer, *infos):
        item.name = fix(item.name)
    for d in dims:
        d.dim_param = fix(d.dim_param)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
