"""A folder's images, decoded once into a uint8 file that runs then read a batch at a time.

Each image is decoded with TensorFlow's decoders (JPEG, PNG, BMP, GIF: the first frame),
given the requested channels, and resized to the requested size with bilinear interpolation,
as `keras.utils.image_dataset_from_directory` does; the result is rounded to uint8. Row i of
the store is file i of the listing.

Stores live in `cache_root()/images/<key>/` (images.u8 and index.json), where the key hashes
the folder's path, every file's relative path, size and modification time, the target size,
the channels and the store format. A changed, added or removed file, or another size, makes
a new store; an unchanged folder is not decoded again. Delete the folder to reclaim the space.

>>> store = open_store(files, root, size=(64, 64), channels=None, skip_bad=False)
>>> store.images.shape          # (N, 64, 64, C) uint8 on disk; C = 1 if every image is gray
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from slimpipe.pipeline.errors import ConfigError

STORE_VERSION = 1
SKIP_HINT = "replace or delete it, or pass --skip-bad-images to leave such files out"
_CHUNK = 256  # images decoded (by a thread pool) between writes
# ITU-R 601 luma weights (as tf.image.rgb_to_grayscale and libjpeg use) for color -> gray.
_LUMA = np.array([0.2989, 0.5870, 0.1140], dtype=np.float32)


def cache_root() -> Path:
    """$SLIMPIPE_CACHE_DIR, else $XDG_CACHE_HOME/slimpipe, else ~/.cache/slimpipe."""
    if os.environ.get("SLIMPIPE_CACHE_DIR"):
        return Path(os.environ["SLIMPIPE_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "slimpipe"


@dataclass(frozen=True)
class ImageStore:
    folder: Path  # where images.u8 and index.json are
    images: np.ndarray  # uint8 (N, H, W, C), memory-mapped read-only
    kept: np.ndarray  # indices of the files that decoded (all of them unless skip_bad)
    skipped: tuple[tuple[str, str], ...]  # (relative path, why) of the files that did not
    digest: str  # sha256 of the pixels, for cache keys
    built_seconds: float | None  # None when an earlier run built it


def decode_image(raw: bytes, size: tuple[int, int], channels: int) -> np.ndarray:
    """One encoded image as uint8 (height, width, channels) at `size`; raises on bad bytes."""
    import tensorflow as tf

    x = tf.io.decode_image(raw, channels=0, expand_animations=False).numpy()
    x = to_channels(x, channels)
    if x.shape[:2] != tuple(size):
        x = tf.image.resize(x, size, method="bilinear").numpy()
        x = np.clip(np.rint(x), 0, 255).astype(np.uint8)
    return x


def to_channels(x: np.ndarray, channels: int) -> np.ndarray:
    """uint8 (H, W, n) with n in 1..4 (gray, gray+alpha, RGB, RGBA) -> (H, W, channels).
    Alpha is dropped (not composited) unless 4 channels are asked for; gray is repeated
    into RGB; color becomes gray by ITU-R 601 weights (exactly channel 0 when R = G = B)."""
    n = x.shape[-1]
    if channels == 4 and n == 4:
        return x
    if n in (2, 4):
        x, n = x[..., :n - 1], n - 1
    if channels == 4:
        rgb = x if n == 3 else np.repeat(x, 3, axis=-1)
        return np.concatenate([rgb, np.full_like(rgb[..., :1], 255)], axis=-1)
    if n == channels:
        return x
    if channels == 3:
        return np.repeat(x, 3, axis=-1)
    if _is_gray(x):
        return np.ascontiguousarray(x[..., :1])
    return np.clip(np.rint(x.astype(np.float32) @ _LUMA), 0, 255).astype(np.uint8)[..., None]


def _is_gray(x: np.ndarray) -> bool:
    if x.shape[-1] in (1, 2):
        return True
    return bool((x[..., 0] == x[..., 1]).all() and (x[..., 1] == x[..., 2]).all())


def _error_text(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return re.sub(r"\s*\[Op:\w+\]$", "", re.sub(r"^\{\{[^}]*\}\}\s*", "", text))


def _decode_file(path: Path, size, channels) -> np.ndarray | str:
    try:
        return decode_image(path.read_bytes(), size, channels)
    except Exception as exc:  # TF raises InvalidArgumentError and others on bad bytes
        return _error_text(exc)


def probe_channels(files: Sequence[Path]) -> int:
    """1 if every decodable image is grayscale (or R = G = B everywhere), else 3. Stops at
    the first color image, so a color folder costs one decode."""
    import tensorflow as tf

    for path in files:
        try:
            x = tf.io.decode_image(path.read_bytes(), channels=0, expand_animations=False).numpy()
        except Exception:  # reported by the decoding pass that follows
            continue
        if not _is_gray(x if x.shape[-1] != 4 else x[..., :3]):
            return 3
    return 1


def open_store(files: Sequence[Path], root: Path, *, size: tuple[int, int], channels: int | None,
               skip_bad: bool, cache_dir: Path | None = None,
               log: Callable[[str], None] | None = None) -> ImageStore:
    """The store of `files` (under `root`) at `size` and `channels` (None: probe_channels),
    decoded now unless a store with the same key exists. A file that does not decode is a
    ConfigError naming it, unless `skip_bad` (then it is listed in `skipped`)."""
    root = Path(root).resolve()
    stats = [(str(p.relative_to(root)), *_stat(p)) for p in files]
    key = hashlib.sha256(json.dumps({"version": STORE_VERSION, "root": str(root), "files": stats,
                                     "size": list(size), "channels": channels or "auto"}).encode())
    folder = Path(cache_dir or cache_root()) / "images" / key.hexdigest()[:32]
    store = _open(folder)
    if store is None:
        if log:
            log(f"[slimpipe] decoding {len(files)} images of {root} into {folder} (once: later runs "
                "with the same files and size reuse it)")
        try:
            seconds = _build(files, [s[0] for s in stats], folder, size=size,
                             channels=channels or probe_channels(files), skip_bad=skip_bad)
            store = _open(folder)
        except OSError as exc:
            raise ConfigError(f"could not write the image cache in {folder} ({type(exc).__name__}: "
                              f"{exc}): set SLIMPIPE_CACHE_DIR to a writable folder with room for "
                              f"{len(files)} x {size[0]} x {size[1]} x channels bytes") from None
        if store is None:
            raise ConfigError(f"the image cache in {folder} could not be read back: delete it, or set "
                              "SLIMPIPE_CACHE_DIR to another folder")
        store = dataclasses.replace(store, built_seconds=seconds)
    if store.skipped and not skip_bad:
        name, why = store.skipped[0]
        raise ConfigError(f"'{root / name}' is not a decodable image ({why}): {SKIP_HINT}")
    return store


def _stat(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def _open(folder: Path) -> ImageStore | None:
    try:
        index = json.loads((folder / "index.json").read_text())
        shape = tuple(index["shape"])
        if index.get("version") != STORE_VERSION or (folder / "images.u8").stat().st_size != np.prod(shape):
            return None
        images = np.memmap(folder / "images.u8", dtype=np.uint8, mode="r", shape=shape)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return ImageStore(folder, images, np.asarray(index["kept"], dtype=np.int64),
                      tuple((str(a), str(b)) for a, b in index["skipped"]), index["sha256"], None)


def _build(files, names: list[str], folder: Path, *, size, channels: int, skip_bad: bool) -> float:
    """Decode every file into `folder` (written as a temporary folder, renamed when complete;
    removed on any error, so a failed run leaves nothing behind); returns the seconds taken."""
    started = time.perf_counter()
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        shape = (len(files), *size, channels)
        images = np.memmap(tmp / "images.u8", dtype=np.uint8, mode="w+", shape=shape)
        digest = hashlib.sha256(str(shape).encode())
        kept, skipped = [], []
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            for start in range(0, len(files), _CHUNK):
                chunk = files[start:start + _CHUNK]
                for i, x in enumerate(pool.map(lambda p: _decode_file(p, size, channels), chunk), start):
                    if isinstance(x, str):
                        if not skip_bad:
                            raise ConfigError(f"'{files[i]}' is not a decodable image ({x}): {SKIP_HINT}")
                        skipped.append((names[i], x))
                        continue
                    images[i] = x
                    kept.append(i)
                    digest.update(i.to_bytes(8, "little") + x.tobytes())
        images.flush()
        del images
        seconds = round(time.perf_counter() - started, 3)
        index = {"version": STORE_VERSION, "shape": list(shape), "kept": kept, "skipped": skipped,
                 "sha256": digest.hexdigest(), "seconds": seconds}
        (tmp / "index.json").write_text(json.dumps(index))
        if folder.exists():  # another run built it meanwhile: keep theirs
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, folder)
        return seconds
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
