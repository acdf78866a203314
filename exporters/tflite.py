"""Export a Keras model to a TFLite flatbuffer.

Modes:
- "float32": plain float model.
- "dynamic": dynamic-range quantization (`Optimize.DEFAULT`): int8 weights, float activations.
- "int8": full-integer quantization calibrated on `representative` (np array of model inputs);
  int8 weights and activations; int8 inputs and outputs unless `io="float"` (`benchmarks.runtimes`
  quantizes inputs and dequantizes outputs, so callers still pass and get floats).
- "float16": float16 weights (`Optimize.DEFAULT` + `supported_types=[float16]`).

`sparse=True` adds `Optimize.EXPERIMENTAL_SPARSITY`: weight tensors that are mostly zeros are
stored in a sparse format (only non-zeros, plus indices) and densified by a DENSIFY op. With
`sparse_layout="smallest"` (the default) each such tensor is then stored in the traversal order
whose index arrays compress best (`exporters.tflite_sparse`; a Dense kernel indexed along its
outputs needs uint8 instead of uint16 indices), checked by running the converter's file and the
rewritten one on the same inputs: their outputs must be bit-identical, or the converter's file
is kept with a warning. `sparse_layout="converter"` keeps the converter's layout.

`strip_names=True` removes the strings the runtime does not need (tensor and subgraph names,
the description and the signature defs; TFLite's own `flatbuffer_utils.strip_strings`): ~2 KB
off a small model, for microcontroller-class targets. Inputs and outputs are then found by
index (`get_input_details()`), not by signature name.

>>> export_tflite(model, "out/pruned.tflite", sparse=True)
PosixPath('out/pruned.tflite')
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

import slimpipe.pipeline  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from slimpipe.exporters.tflite_pack import pack_model
from slimpipe.pipeline.atomic import write_bytes_atomic
from slimpipe.pipeline.errors import ConfigError, StageError

MODES = ("float32", "dynamic", "int8", "float16")
IO_TYPES = ("int8", "float")
SPARSE_LAYOUTS = ("smallest", "converter")

# Calibration samples fed to the int8 converter at most (the converter's own default is 100+).
MAX_CALIBRATION_SAMPLES = 500


def export_tflite(model, path, *, mode: str = "float32", sparse: bool = False,
                  representative=None, strip_names: bool = False, io: str = "int8",
                  per_channel: bool = True, sparse_layout: str = "smallest") -> Path:
    """Convert `model` with `tf.lite.TFLiteConverter.from_keras_model` and write it atomically.

    `io` (mode "int8" only): "int8" makes the model's inputs and outputs int8 too; "float" keeps
    them float (the converter adds QUANTIZE/DEQUANTIZE at the edges). `per_channel=False` gives
    conv kernels one int8 scale per tensor instead of one per output channel (the converter's
    `_experimental_disable_per_channel`): a clustered kernel's k shared values then stay k int8
    codes, which compress to log2(k) bits, at some accuracy risk for kernels whose channels
    differ in range.

    Raises ConfigError for bad arguments and StageError (cause chained) if the converter fails.
    """
    _check_options(mode, sparse, strip_names, io, per_channel, sparse_layout)
    rep = _check_representative(model, mode, representative)
    path = Path(path)

    import tensorflow as tf

    try:
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        optimizations = []
        if mode in ("dynamic", "int8", "float16"):
            optimizations.append(tf.lite.Optimize.DEFAULT)
        if sparse:
            optimizations.append(tf.lite.Optimize.EXPERIMENTAL_SPARSITY)
        converter.optimizations = optimizations
        if mode == "float16":
            converter.target_spec.supported_types = [tf.float16]
        elif mode == "int8":
            converter.representative_dataset = _representative_dataset(rep)
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            if io == "int8":
                converter.inference_input_type = tf.int8
                converter.inference_output_type = tf.int8
        converter._experimental_disable_per_channel = not per_channel
        flatbuffer = converter.convert()
    except Exception as exc:  # the converter raises many types (ConverterError, ValueError, ...)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise StageError(
            f"TFLite export of model {getattr(model, 'name', '?')!r} (mode={mode}, sparse={sparse}) "
            f"failed: {type(exc).__name__}: {first}. Expected a model of TFLite builtin ops; "
            f"fix: strip training wrappers (tfmot strip_pruning/strip_clustering) or try mode='float32'"
        ) from exc
    flatbuffer = bytes(flatbuffer)
    if sparse and sparse_layout == "smallest":
        flatbuffer = smallest_checked(flatbuffer)
    return write_bytes_atomic(path, _stripped(flatbuffer) if strip_names else flatbuffer)


def _check_options(mode, sparse, strip_names, io, per_channel, sparse_layout) -> None:
    if mode not in MODES:
        raise ConfigError(f"TFLite export mode must be one of {', '.join(MODES)}. "
                          f"Received: mode={mode!r}")
    if not isinstance(sparse, bool):
        raise ConfigError(f"TFLite export: sparse must be True or False. Received: sparse={sparse!r}")
    if not isinstance(strip_names, bool):
        raise ConfigError(f"TFLite export: strip_names must be True or False. "
                          f"Received: strip_names={strip_names!r}")
    if io not in IO_TYPES:
        raise ConfigError(f"TFLite export: io must be 'int8' or 'float'. Received: io={io!r}")
    if not isinstance(per_channel, bool):
        raise ConfigError(f"TFLite export: per_channel must be True or False. "
                          f"Received: per_channel={per_channel!r}")
    if sparse_layout not in SPARSE_LAYOUTS:
        raise ConfigError(f"TFLite export: sparse_layout must be one of {', '.join(SPARSE_LAYOUTS)}. "
                          f"Received: sparse_layout={sparse_layout!r}")


def smallest_checked(flatbuffer: bytes, *, samples: int = 4) -> bytes:
    """`smallest_sparse_layout(flatbuffer)`, kept only if LiteRT's builtin kernels give
    bit-identical outputs for both files on `samples` seeded random inputs (otherwise the input
    comes back, with a warning)."""
    from slimpipe.exporters.tflite_sparse import smallest_sparse_layout

    smaller, changes = smallest_sparse_layout(flatbuffer)
    if not changes:
        return flatbuffer
    try:
        same = _same_outputs(flatbuffer, smaller, samples)
    except (RuntimeError, ValueError) as exc:
        same, why = False, f"{type(exc).__name__}: {exc}"
    else:
        why = "outputs differ"
    if not same:
        warnings.warn(f"TFLite export: kept the converter's sparse layout ({why.splitlines()[0][:200]} "
                      f"after re-encoding tensors {[c['tensor'] for c in changes]})", RuntimeWarning,
                      stacklevel=2)
        return flatbuffer
    return smaller


def _same_outputs(a: bytes, b: bytes, samples: int) -> bool:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    rng = np.random.default_rng(0)
    runs = []
    for content in (a, b):
        interp = Interpreter(model_content=content, num_threads=1,
                             experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        interp.allocate_tensors()
        runs.append(interp)
    feeds = []
    for detail in runs[0].get_input_details():
        dtype, shape = np.dtype(detail["dtype"]), tuple(int(d) for d in detail["shape"])
        if dtype.kind == "f":
            feeds.append([rng.standard_normal(shape).astype(dtype) for _ in range(samples)])
        else:
            info = np.iinfo(dtype)
            feeds.append([rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)
                          for _ in range(samples)])
    for k in range(samples):
        outs = []
        for interp in runs:
            for detail, feed in zip(interp.get_input_details(), feeds):
                interp.set_tensor(detail["index"], feed[k])
            interp.invoke()
            outs.append([interp.get_tensor(d["index"]).tobytes() for d in interp.get_output_details()])
        if outs[0] != outs[1]:
            return False
    return True


def _stripped(flatbuffer: bytes) -> bytes:
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
    flatbuffer_utils.strip_strings(model)
    return pack_model(model)


def _check_representative(model, mode: str, representative):
    if mode != "int8":
        if representative is not None:
            raise ConfigError(f"TFLite export: representative data is only used with mode='int8'. "
                              f"Received: mode={mode!r} with representative data; "
                              f"fix: drop representative or use mode='int8'")
        return None
    if representative is None:
        raise ConfigError("TFLite export mode='int8' needs representative inputs for calibration. "
                          "Received: representative=None; fix: pass e.g. ds.x_train[:200]")
    rep = np.asarray(representative, dtype=np.float32)
    expected = tuple(d for d in model.input_shape[1:])
    if rep.ndim != len(expected) + 1 or len(rep) == 0 or any(
            e is not None and e != r for e, r in zip(expected, rep.shape[1:])):
        raise ConfigError(f"TFLite export mode='int8': representative must be an array of shape "
                          f"(N, {', '.join(str(e) for e in expected)}) with N >= 1. "
                          f"Received: shape {rep.shape}")
    return rep[:MAX_CALIBRATION_SAMPLES]


def _representative_dataset(rep: np.ndarray):
    def gen():
        for i in range(len(rep)):
            yield [rep[i:i + 1]]
    return gen
