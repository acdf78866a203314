"""The release-gate thresholds: which keys a recipe's `[gate]` table and `slimpipe gate`'s
options take, and their checks. Recipes validate their `[gate]` table with `check_thresholds`
before anything runs; the gate checks a report against the same keys.

    [gate]
    artifact = "best"          # or "chosen" (a budget search's answer), or an artifact name
    max_gzip_bytes = 200000
    max_accuracy_drop = 0.5    # percentage points below the baseline's accuracy
    max_p90_ms = 2.0
    min_gzip_ratio = 25.0      # x smaller by gzip than the dense float32 file
    min_speedup = 5.0          # x faster at p50 than the dense float32 file
    max_minutes = 30.0         # the whole run, a budget search's baseline included
    latency_runtime = "litert" # default: the artifact's own runtime (litert, onnxruntime)
    latency_threads = 1
    latency_batch = 1
    require_parity = true
"""
from __future__ import annotations

import math
from typing import Any, Mapping

from slimpipe.pipeline.errors import ConfigError

# [gate] key -> (type, help). Order is the order checks run in.
GATE_KEYS: dict[str, tuple[type, str]] = {
    "artifact": (str, "the artifact to gate: a name from report.json, 'chosen' (the file a "
                      "budget search's verdict names), or 'best' (default): the smallest "
                      "deployable export by gzip size, within --max-accuracy-drop of the "
                      "baseline when that is set"),
    "max_bytes": (int, "fail if the artifact's file is larger than N bytes"),
    "max_gzip_bytes": (int, "fail if the artifact is larger than N bytes after gzip"),
    "min_accuracy": (float, "fail if the artifact's test accuracy is below A (a fraction, 0..1)"),
    "max_accuracy_drop": (float, "fail if the artifact's accuracy is more than POINTS "
                                 "percentage points below the baseline's"),
    "max_p90_ms": (float, "fail if the artifact's p90 latency is above MS milliseconds (or was "
                          "not measured) at --latency-runtime/--latency-threads/--latency-batch"),
    "min_bytes_ratio": (float, "fail if the artifact's file is fewer than X times smaller than "
                               "the dense float32 file of the baseline in the same format"),
    "min_gzip_ratio": (float, "fail if the artifact is fewer than X times smaller by gzip than "
                              "the dense float32 file of the baseline in the same format"),
    "min_speedup": (float, "fail if the artifact's p50 latency is less than X times faster than "
                           "the dense float32 file's in the same format, measured in the same "
                           "interleaved run at --latency-runtime/--latency-threads/--latency-batch"),
    "max_minutes": (float, "fail if the run took longer than M minutes: a budget search's phases, "
                           "baseline included, or a plain run's stages; a run that took trials "
                           "or stages from the cache has no fresh time and fails this check"),
    "latency_runtime": (str, "runtime of the latency measurement to check (litert, "
                             "onnxruntime, keras; default: the artifact's own runtime)"),
    "latency_threads": (int, "threads of the latency measurement to check (default 1)"),
    "latency_batch": (int, "batch size of the latency measurement to check (default 1)"),
    "require_parity": (bool, "fail if any exported artifact did not pass its parity "
                             "validation against the Keras model"),
}
CHECK_KEYS = ("max_bytes", "max_gzip_bytes", "min_accuracy", "max_accuracy_drop", "max_p90_ms",
              "min_bytes_ratio", "min_gzip_ratio", "min_speedup", "max_minutes", "require_parity")
_WHAT = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _has_type(value: Any, kind: type) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is str:
        return isinstance(value, str)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _check_value(key: str, value: Any, source: str) -> Any:
    """One [gate] value, type- and range-checked; floats come back as float."""
    kind = GATE_KEYS[key][0]
    if not _has_type(value, kind):
        raise ConfigError(f"{source}: {key} must be {_WHAT[kind]}. Received: "
                          f"{key} = {value!r} ({type(value).__name__})")
    if kind is float:
        value = float(value)
    if kind in (int, float) and value < 0:
        raise ConfigError(f"{source}: {key} must be >= 0. Received: {key} = {value!r}")
    if key in ("latency_threads", "latency_batch") and value < 1:
        raise ConfigError(f"{source}: {key} must be >= 1. Received: {key} = {value!r}")
    if key == "min_accuracy" and value > 1:
        raise ConfigError(f"{source}: min_accuracy is a fraction between 0 and 1. Received: "
                          f"{value!r}; for {value:g}% write {value / 100:g}")
    if kind is str and not value.strip():
        raise ConfigError(f"{source}: {key} must not be empty. Received: {key} = {value!r}")
    return value


def check_thresholds(values: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Validate [gate] values (types and ranges); drop None. `source` names them in errors."""
    unknown = sorted(set(values) - set(GATE_KEYS))
    if unknown:
        raise ConfigError(f"{source} has unknown gate keys {unknown}: expected some of "
                          f"{', '.join(GATE_KEYS)}. Fix the spelling or remove them")
    return {key: _check_value(key, value, source) for key, value in values.items()
            if value is not None}
