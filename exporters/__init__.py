"""Exporters: turn a Keras model into deployable files (TFLite, ONNX) and check them.

Every file is written atomically (see `atomic_output`): the converter runs first, the bytes go
to a temporary file in the destination folder, and only a complete file is renamed onto the
final name. A failed export never leaves a half-written file behind.

>>> from exporters.tflite import export_tflite
>>> from exporters.onnx import export_onnx
>>> from exporters.validate import check_parity, raise_on_mismatch

This package imports nothing from `stages/`; it may use `benchmarks.runtimes` to run what it
exported.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

import slimpipe.pipeline  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

__all__ = ["atomic_output", "write_bytes_atomic"]


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success rename it onto `path`.

    On any exception the temporary file is removed and the exception propagates, so nothing
    ever exists under the final name unless it was completely written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically (temp file in the same folder, fsync, os.replace)."""
    path = Path(path)
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    return path
