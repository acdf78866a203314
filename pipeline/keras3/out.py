"""Write a Keras 3 `.keras` file beside each Keras artifact of a run whose model came from Keras 3.

>>> writer = Keras3Writer()
>>> writer.write(tf_keras_model, Path("run/01-train/trained.h5"), kind="keras")
{'file': 'trained.keras', 'bytes': 531644, 'sha256': '...', 'max_abs_diff': 0.0, ...}

The tf_keras model is rebuilt in Keras 3 (`build_out`), saved, loaded back by Keras 3 (safe
mode on unless the run allows unsafe models) and checked against the tf_keras model on sample
inputs; a file that does not reproduce the outputs is removed and the run stops with an
error. Models still wrapped by tfmot for training (kinds keras:pruning, keras:qat,
keras:clustering) are not plain Keras models: they are skipped, and the stripped model a later
stage makes from them is written instead. The record goes into the artifact's meta under
"keras3"; `keras3_files` lists them for the report.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slimpipe.pipeline.artifacts import content_sha256
from slimpipe.pipeline.errors import ExportValidationError
from slimpipe.pipeline.keras3.build_out import Keras3Builder
from slimpipe.pipeline.keras3.check import SAMPLES, TOLERANCE, max_abs_diff, outputs, sample_inputs
from slimpipe.pipeline.keras3.custom import NONE, CustomObjects

WRAPPED = ("keras:pruning", "keras:qat", "keras:clustering")


@dataclass(frozen=True)
class Keras3Writer:
    """What a run needs to write its Keras artifacts for Keras 3 (set on the RunContext)."""

    custom: CustomObjects = NONE
    allow_unsafe: bool = False

    def write(self, model, h5_path: Path, *, kind: str) -> dict[str, Any]:
        """Write `<h5 stem>.keras` next to `h5_path`; returns its record for the artifact meta."""
        if kind in WRAPPED:
            return {"skipped": f"a {kind} model holds tfmot training wrappers; the stripped model a "
                               "later stage makes from it is written for Keras 3"}
        import keras

        started = time.perf_counter()
        final = Path(h5_path).with_suffix(".keras")
        partial = final.with_name(f".{final.stem}.partial.keras")
        try:
            Keras3Builder(model, custom=self.custom).build().save(partial)
            reloaded = keras.saving.load_model(partial, compile=False, safe_mode=not self.allow_unsafe,
                                               custom_objects=self.custom.keras3_objects())
            x = sample_inputs(model)
            diff, allowed = max_abs_diff(outputs(model, x), outputs(reloaded, x))
            if not diff <= allowed:
                raise ExportValidationError(
                    f"the Keras 3 copy of '{final.stem}' differs from the tf_keras model by up to {diff:.3g} "
                    f"on sample inputs (allowed: {allowed:.3g}): it was not written; please report this "
                    "with the model's layer classes")
            os.replace(partial, final)
        finally:
            if partial.exists():
                partial.unlink()
        return {"file": final.name, "bytes": final.stat().st_size, "sha256": content_sha256(final),
                "max_abs_diff": diff, "tolerance": TOLERANCE, "keras_version": keras.__version__,
                "seconds": round(time.perf_counter() - started, 2)}


def keras3_files(artifacts, out_dir: Path) -> list[dict[str, Any]]:
    """The Keras 3 files of a run's artifacts: [{"artifact", "path" (relative to out_dir), "bytes",
    "sha256", "max_abs_diff"}], for report.json's "keras3_files"."""
    rows = []
    for art in artifacts:
        record = (art.meta or {}).get("keras3") or {}
        if "file" not in record:
            continue
        path = Path(art.path).parent / record["file"]
        rows.append({"artifact": art.name, "path": os.path.relpath(path, out_dir), "bytes": record["bytes"],
                     "sha256": record["sha256"], "max_abs_diff": record["max_abs_diff"]})
    return rows


def keras3_source(ctx, info: dict[str, Any], *, custom: CustomObjects = NONE, allow_unsafe: bool = False) -> None:
    """Mark a run whose model came from Keras 3: every Keras artifact gets a Keras 3 copy, and
    the report says how the model was translated."""
    ctx.keras3 = Keras3Writer(custom=custom, allow_unsafe=allow_unsafe)
    ctx.note(f"model: a .{info['format']} file saved by Keras {info['keras_version']}; slimpipe translated it to "
             f"an equivalent tf_keras model for tfmot ({info['layers']} layers, {info['params']:,} weights; "
             f"outputs within {info['max_abs_diff']:.2g} of the original's on {SAMPLES} sample inputs; "
             f"{info['seconds']:.1f} s) and writes each Keras model of the run back as a Keras 3 .keras "
             "file beside its .h5")
    for note in info.get("notes", []):
        ctx.note(note)


def keras3_outputs(ctx) -> None:
    """A report note listing the run's Keras 3 files and their sizes."""
    rows = keras3_files(ctx.artifacts, ctx.out_dir)
    if rows:
        ctx.note("Keras 3 models (keras.saving.load_model): " + ", ".join(
            f"{r['path']} ({r['bytes']:,} bytes)" for r in rows) + ".")
