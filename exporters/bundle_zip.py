"""Reproducible zips and atomically replaced folders, for edge bundles.

A zip's bytes depend only on its entries: they are written in the given order, dated
1980-01-01 00:00:00, with mode 0644, creator "unix" and deflate level 9 (the deflate stream is
zlib's; another zlib build may compress differently).
"""
from __future__ import annotations

import io
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Sequence

ZIP_DATE = (1980, 1, 1, 0, 0, 0)
ZIP_MODE = 0o100644  # regular file, rw-r--r--
ZIP_LEVEL = 9


def reproducible_zip(entries: Sequence[tuple[str, bytes]], *, compress: bool = True) -> bytes:
    """A zip of (name, bytes) entries, in the given order, whose bytes depend only on them."""
    bio = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(bio, "w") as zf:
        add_entries(zf, entries, method)
    return bio.getvalue()


def add_entries(zf: zipfile.ZipFile, entries, method: int) -> None:
    """Add (name, bytes) entries to an open zip with fixed dates, modes and compression."""
    for arcname, data in entries:
        info = zipfile.ZipInfo(arcname, date_time=ZIP_DATE)
        info.compress_type = method
        info.create_system = 3  # unix, whatever platform writes it
        info.external_attr = ZIP_MODE << 16
        zf.writestr(info, data, compress_type=method,
                    compresslevel=ZIP_LEVEL if method == zipfile.ZIP_DEFLATED else None)


def write_folder(final: Path, files: list[tuple[str, bytes]]) -> None:
    """Write `files` into a new folder next to `final` and rename it onto `final`, replacing an
    older folder only once the new one is complete (the old one comes back on failure)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    old = None
    try:
        os.chmod(tmp, 0o755)
        for fname, data in files:
            with open(tmp / fname, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        if final.exists():
            old = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".old"))
            os.replace(final, old / "x")
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and (old / "x").exists() and not final.exists():
            os.replace(old / "x", final)  # put the previous bundle back
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
