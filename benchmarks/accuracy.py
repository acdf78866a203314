"""Batched prediction through a Runtime, accuracy and top-1 agreement.

>>> logits = predict_all(rt, ds.x_test)
>>> accuracy(logits, ds.y_test), top1_agreement(logits, keras_logits)
(0.912, 0.997)
"""
from __future__ import annotations

import numpy as np

from slimpipe.pipeline.errors import ConfigError


def predict_all(runtime, x: np.ndarray, *, batch: int = 256) -> np.ndarray:
    """Logits of `runtime` for every sample of `x`, `batch` samples at a time (last batch may
    be smaller); `x` is an array or anything that slices like one into arrays."""
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise ConfigError(f"predict_all: batch must be an integer >= 1. Received: batch={batch!r}")
    if not hasattr(x, "shape"):
        x = np.asarray(x, dtype=np.float32)
    if len(x.shape) < 1 or len(x) == 0:
        raise ConfigError(f"predict_all needs at least one sample. Received: shape {x.shape}")
    # One batch at a time: `x` may be an array-like read from disk per slice (an ImageArray).
    parts = [np.asarray(runtime.predict(np.asarray(x[i:i + batch], dtype=np.float32)), dtype=np.float32)
             for i in range(0, len(x), batch)]
    return np.concatenate(parts, axis=0)


def _labels(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y)
    return y.argmax(axis=-1) if y.ndim == 2 else y.reshape(-1)


def accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy; `y` holds class indices (or one-hot rows)."""
    logits = np.asarray(logits)
    labels = _labels(y)
    if logits.ndim != 2 or len(logits) != len(labels) or len(labels) == 0:
        raise ConfigError(f"accuracy needs logits (N, classes) and N labels, N >= 1. "
                          f"Received: logits {logits.shape}, labels {np.asarray(y).shape}")
    return float(np.mean(logits.argmax(axis=1) == labels))


def top1_agreement(a_logits: np.ndarray, b_logits: np.ndarray) -> float:
    """Fraction of samples whose top-1 class is the same under both models."""
    a, b = np.asarray(a_logits), np.asarray(b_logits)
    if a.shape != b.shape or a.ndim != 2 or len(a) == 0:
        raise ConfigError(f"top1_agreement needs two logits arrays of the same (N, classes) shape, "
                          f"N >= 1. Received: {a.shape} and {b.shape}")
    return float(np.mean(a.argmax(axis=1) == b.argmax(axis=1)))
