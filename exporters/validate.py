"""Check that an exported file reproduces the Keras model's logits.

>>> ref = keras_model(x, training=False).numpy()
>>> results = {"pruned.onnx": check_parity(ref, "out/pruned.onnx", "onnx", x)}
>>> raise_on_mismatch(results)   # raises ExportValidationError naming every failure
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

import slimpipe.pipeline  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from slimpipe.benchmarks.accuracy import predict_all, top1_agreement
from slimpipe.benchmarks.runtimes import open_runtime
from slimpipe.pipeline.errors import ConfigError, ExportValidationError

FORMATS = ("tflite", "onnx")


def check_parity(reference: np.ndarray, path, fmt: str, x: np.ndarray, *,
                 atol: float = 1e-4, rtol: float = 1e-4) -> dict:
    """Run the exported file on `x` (1 thread) and compare with the Keras `reference` logits.

    A sample mismatches when any of its logits differs by more than `atol + rtol * |reference|`
    (numpy.allclose's rule); NaN counts as a mismatch. `passed` is True when no sample
    mismatches. The relative part matters for deep models: a 53-layer MobileNetV2's float ONNX
    logits (magnitude ~10) differed from Keras by up to 1.6e-4, with every top-1 class the same.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"check_parity: fmt must be one of {', '.join(FORMATS)}. Received: fmt={fmt!r}")
    if not isinstance(atol, (int, float)) or isinstance(atol, bool) or not atol >= 0:
        raise ConfigError(f"check_parity: atol must be a number >= 0. Received: atol={atol!r}")
    if not isinstance(rtol, (int, float)) or isinstance(rtol, bool) or not rtol >= 0:
        raise ConfigError(f"check_parity: rtol must be a number >= 0. Received: rtol={rtol!r}")
    reference = np.asarray(reference, dtype=np.float32)
    x = np.asarray(x, dtype=np.float32)
    if reference.ndim != 2 or len(reference) != len(x) or len(x) == 0:
        raise ConfigError(f"check_parity: reference must be (N, classes) logits for the N >= 1 "
                          f"samples of x. Received: reference {reference.shape}, x {x.shape}")
    runtime = open_runtime(path, fmt, threads=1)
    out = predict_all(runtime, x)
    name = Path(path).name
    if out.shape != reference.shape:
        raise ExportValidationError(f"{name}: output shape {out.shape} differs from the Keras "
                                    f"reference {reference.shape}; the export changed the model's head")
    diff = np.abs(out.astype(np.float64) - reference.astype(np.float64))
    diff[~np.isfinite(diff)] = np.inf
    per_sample = diff.max(axis=1)
    allowed = atol + rtol * np.abs(reference.astype(np.float64))
    mismatched = int(np.count_nonzero((diff > allowed).any(axis=1)))
    return {
        "max_abs_diff": float(per_sample.max()),
        "atol": float(atol),
        "rtol": float(rtol),
        "top1_agreement": top1_agreement(out, reference),
        "samples": int(len(x)),
        "mismatched_samples": mismatched,
        "passed": mismatched == 0,
        "delegate": runtime.delegate,
    }


def raise_on_mismatch(results: dict[str, dict]) -> None:
    """Raise ONE ExportValidationError naming every float result that did not pass: a float file
    that computes something else than its Keras model is a broken export. Quantized results
    (judged on top-1 agreement, `min_agreement` in the record) are left to `agreement_note`."""
    failed = [
        f"{name}: max |diff| {r['max_abs_diff']:.1e} > atol {r['atol']:.0e} + rtol "
        f"{r.get('rtol', 0.0):.0e} x |Keras logit| on "
        f"{r['mismatched_samples']} of {r['samples']} samples (top-1 agreement {r['top1_agreement']:.3f})"
        for name, r in results.items() if not r.get("passed", False) and "min_agreement" not in r
    ]
    if failed:
        raise ExportValidationError(
            f"{len(failed)} exported model(s) do not match the Keras reference: {'; '.join(failed)}. "
            f"Fix: check the export options, or raise atol/rtol")


def agreement_note(name: str, check: dict, stage: str) -> str | None:
    """A quantized file below its top-1 agreement: recorded, not raised. Quantization error on a
    weakly trained model is a measurement, not a broken export; the file's parity is marked
    failed, so it is not deployable, gets no bundle, and `--require-parity` fails the gate."""
    if check.get("passed", True):
        return None
    return (f"{stage}: {name} agrees with its Keras model on {check['top1_agreement']:.3f} of top-1 "
            f"classes ({check['samples']} samples), below min_agreement {check['min_agreement']}: its "
            "parity is recorded as failed (not deployable, no bundle; --require-parity fails the gate). "
            "Fix: train longer, raise the calibration samples, or use a float or dynamic-range file")
