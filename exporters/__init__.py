"""Exporters: turn a Keras model into deployable files (TFLite, ONNX) and check them.

Every file is written atomically (`slimpipe.pipeline.atomic`): the converter runs first, the
bytes go to a temporary file in the destination folder, and only a complete file is renamed
onto the final name. A failed export never leaves a half-written file behind.

>>> from slimpipe.exporters.tflite import export_tflite
>>> from slimpipe.exporters.onnx import export_onnx
>>> from slimpipe.exporters.validate import check_parity, raise_on_mismatch

This package imports nothing from `stages/`; it may use `benchmarks.runtimes` to run what it
exported.
"""
import slimpipe.pipeline  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
# The one atomic writer of the package, under the names exporters have always imported.
from slimpipe.pipeline.atomic import atomic_output, write_bytes_atomic

__all__ = ["atomic_output", "write_bytes_atomic"]
