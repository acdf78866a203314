"""Benchmarks: measure model files, never trust a stage's own account of them.

- `benchmarks.runtimes`: open a .h5 / .tflite / .onnx file in its runtime (Keras, LiteRT,
  onnxruntime) behind one `Runtime` interface, with recorded threads, delegate and load time.
- `benchmarks.measure`: file sizes (raw and gzip -9) and latency statistics.
- `benchmarks.accuracy`: batched prediction, accuracy and top-1 agreement.
- `benchmarks.sparsity`: weight sparsity measured from the file itself.
- `benchmarks.environment`: versions, CPU, ISA flags and GPUs, for the report.

This package is a library: it imports nothing from `stages/` or `exporters/`, and nothing
from pytest outside its pytest-benchmark suite files.
"""
import slimpipe.pipeline  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
