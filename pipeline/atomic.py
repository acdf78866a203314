"""Atomic file writes: a file exists under its final name only once it is completely written.

    write_text_atomic(out / "report.md", text)
    write_bytes_atomic(out / "model.tflite", data)
    with atomic_output(out / "model.onnx") as tmp:   # for tools that write a path themselves
        tool.save(tmp)

The bytes go to a temporary file in the destination folder (`.NAME.XXXX.tmp`), are flushed to
disk, and the temporary file is renamed onto the final name. If anything fails on the way, the
temporary file is removed and the exception propagates: a previous file of that name stays as
it was, and a new one never appears half-written.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator


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
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a written file gets the usual mode
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically (temporary file in the same folder, fsync, rename)."""
    path = Path(path)
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` atomically, encoded as UTF-8."""
    return write_bytes_atomic(path, text.encode("utf-8"))
