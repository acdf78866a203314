"""Export Keras artifacts to TFLite and ONNX, and check every file against Keras."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from pipeline.artifacts import Artifact
from pipeline.context import RunContext
from pipeline.stage import check_count, check_fraction, require

from benchmarks.sparsity import weight_sparsity
from exporters.onnx import export_onnx
from exporters.tflite import export_tflite
from exporters.validate import check_parity, raise_on_mismatch

FORMATS = ("tflite", "onnx")


@dataclass(frozen=True)
class Export:
    """Write deployable files for Keras artifacts and validate them.

    Every exported float model must reproduce the Keras logits within `atol` on
    `parity_samples` test inputs; all mismatches are collected and raised as one error.
    A model whose measured weight sparsity is at least `sparse_threshold` also gets a
    TFLite file with sparse weight storage (`Optimize.EXPERIMENTAL_SPARSITY`).

    >>> Export(formats=("tflite",), targets="current")   # only the model in hand
    >>> Export()   # every trained Keras artifact of the run so far: baseline, pruned, ...
    """

    name: ClassVar[str] = "export"
    accepts: ClassVar[tuple[str, ...]] = ("keras",)
    produces: ClassVar[str | None] = None

    formats: tuple[str, ...] = FORMATS
    targets: str = "all"
    sparse_threshold: float = 0.3
    opset: int = 17
    atol: float = 1e-4
    parity_samples: int = 256

    def __post_init__(self):
        bad = [f for f in self.formats if f not in FORMATS]
        require(bool(self.formats) and not bad, self.name,
                f"formats must be a non-empty subset of {FORMATS}. Received: formats={self.formats!r}")
        require(self.targets in ("all", "current"), self.name,
                f"targets must be 'all' or 'current'. Received: targets={self.targets!r}")
        check_fraction(self.name, "sparse_threshold", self.sparse_threshold, upper_open=False)
        check_count(self.name, "opset", self.opset, minimum=13)
        check_count(self.name, "parity_samples", self.parity_samples, minimum=1)
        require(isinstance(self.atol, (int, float)) and self.atol > 0, self.name,
                f"atol must be a positive number. Received: atol={self.atol!r}")

    def run(self, art: Artifact, ctx: RunContext) -> list[Artifact]:
        x = ctx.data.x_test[: self.parity_samples]
        outputs, checks = [], {}
        for target in self._targets(art, ctx):
            model = ctx.keras_model(target)
            reference = model.predict(x, verbose=0, batch_size=256)
            sparsity = weight_sparsity(target.path, "keras")["sparsity"] or 0.0
            for fmt, sparse in self._variants(sparsity):
                suffix = ".sparse" if sparse else ""
                name = f"{target.name}{suffix}.{fmt}"
                path = ctx.stage_path(name)
                if fmt == "tflite":
                    export_tflite(model, path, mode="float32", sparse=sparse)
                else:
                    export_onnx(model, path, opset=self.opset)
                check = check_parity(reference, path, fmt, x, atol=self.atol)
                checks[name] = check
                outputs.append(ctx.add_file(self, path, name, fmt=fmt, parent=target, meta={
                    "mode": "float32", "sparse_storage": sparse, "validation": check}))
        raise_on_mismatch(checks)
        return outputs

    def _targets(self, art: Artifact, ctx: RunContext) -> list[Artifact]:
        if self.targets == "current":
            return [art]
        exported = {a.parent_id for a in ctx.artifacts if a.stage == self.name}
        found = [a for a in ctx.measurable() if a.kind == "keras" and a.id not in exported]
        return found if art in found or art.id in exported else [*found, art]

    def _variants(self, sparsity: float):
        for fmt in self.formats:
            yield fmt, False
            if fmt == "tflite" and sparsity >= self.sparse_threshold:
                yield fmt, True
