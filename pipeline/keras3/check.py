"""The check every translation passes: the same outputs on the same inputs.

Inputs are seeded uniform samples at the model's input shape, half in [0, 1] and half in
[0, 255] (models that rescale their own input see both ranges they may expect). Outputs must
agree within TOLERANCE relative to their scale: max |a - b| <= 1e-5 * max(1, max |reference|)
(over its finite values).
"""
from __future__ import annotations

import numpy as np

from slimpipe.pipeline.errors import ConfigError

TOLERANCE = 1e-5
SAMPLES = 8
_UNKNOWN_SIDE = 32  # a spatial size left open (None) is checked at this size


def sample_inputs(model, n: int = SAMPLES, seed: int = 0) -> list[np.ndarray]:
    """One array per model input: n seeded examples, half in [0, 1], half in [0, 255]."""
    rng = np.random.default_rng(seed)
    arrays = []
    for tensor in model.inputs:
        shape = tuple(_UNKNOWN_SIDE if d is None else int(d) for d in tuple(tensor.shape)[1:])
        low = rng.uniform(0.0, 1.0, (n // 2, *shape))
        high = rng.uniform(0.0, 255.0, (n - n // 2, *shape))
        dtype = np.dtype(getattr(tensor.dtype, "name", None) or str(tensor.dtype))
        data = np.concatenate([low, high])
        arrays.append((np.round(data) if dtype.kind in "iu" else data).astype(dtype))
    return arrays


def outputs(model, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """The model's outputs in inference mode, as float64 arrays."""
    out = model(inputs if len(inputs) > 1 else inputs[0], training=False)
    out = out if isinstance(out, (list, tuple)) else [out]
    return [np.asarray(o, dtype=np.float64) for o in out]


def max_abs_diff(reference: list[np.ndarray], candidate: list[np.ndarray]) -> tuple[float, float]:
    """(max |diff|, the allowed max): TOLERANCE times the reference's scale (at least 1).
    Equal infinities (an exponential overflowing in both models) count as equal."""
    if len(reference) != len(candidate) or any(r.shape != c.shape for r, c in zip(reference, candidate)):
        return float("inf"), 0.0
    diff, scale = 0.0, 1.0
    for r, c in zip(reference, candidate):
        with np.errstate(invalid="ignore"):
            d = np.where(r == c, 0.0, np.abs(r - c))
        diff = max(diff, float(np.max(np.nan_to_num(d, nan=np.inf))) if d.size else 0.0)
        finite = np.abs(r[np.isfinite(r)])
        scale = max(scale, float(finite.max()) if finite.size else 0.0)
    return diff, TOLERANCE * scale


def require_match(reference, candidate, what: str) -> float:
    """max |diff| of two output lists; ConfigError when it exceeds the tolerance."""
    diff, allowed = max_abs_diff(reference, candidate)
    if not diff <= allowed:
        raise ConfigError(f"{what}: its outputs differ from the original's by up to {diff:.3g} on sample "
                          f"inputs (allowed: {allowed:.3g}, 1e-5 of the outputs' scale), so it is not "
                          "the same model and nothing was written; please report this with the "
                          "model's layer classes")
    return diff
