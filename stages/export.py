"""Export Keras artifacts to TFLite and ONNX, and check every file against Keras."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from slimpipe.pipeline.artifacts import Artifact
from slimpipe.pipeline.context import RunContext
from slimpipe.pipeline.stage import StageResult, check_choice, check_count, check_fraction, require

from slimpipe.benchmarks.sparsity import SPARSE_MIN, weight_sparsity
from slimpipe.exporters.onnx import export_onnx
from slimpipe.exporters.onnx_quant import quantize_onnx_dynamic, quantize_onnx_static
from slimpipe.exporters.tflite import SPARSE_LAYOUTS, export_tflite
from slimpipe.exporters.tflite_sparse import sparse_orders
from slimpipe.exporters.validate import agreement_note, check_parity, raise_on_mismatch

FORMATS = ("tflite", "onnx")
ONNX_INT8 = ("dynamic", "static")


@dataclass(frozen=True)
class Export:
    """Write deployable files for Keras artifacts and validate them.

    Every exported float model must reproduce the Keras logits within `atol + rtol * |logit|` on
    `parity_samples` test inputs; all mismatches are collected and raised as one error.
    A model whose measured weight sparsity is at least `sparse_threshold` also gets a
    TFLite file with sparse weight storage (`Optimize.EXPERIMENTAL_SPARSITY`), each sparse kernel
    in the traversal order whose index arrays gzip smallest (`sparse_layout="smallest"`; the
    outputs are checked bit-identical) or as the converter wrote it (`"converter"`).

    `onnx_int8` adds int8 ONNX files made from each float ONNX file with onnxruntime's
    quantization tools: "dynamic" (int8 weights, activations quantized at run time) and "static"
    (QDQ, calibrated on `calibration_samples` training inputs). An int8 file cannot match float
    logits to `atol`: it must agree with the Keras model on the top-1 class of at least
    `min_agreement` of the parity samples.

    >>> Export(formats=("tflite",), targets="current")   # only the model in hand
    >>> Export()   # every trained Keras artifact of the run so far: baseline, pruned, ...
    >>> Export(onnx_int8=("dynamic", "static"))   # + pruned.dynamic.onnx, pruned.static.onnx
    """

    name: ClassVar[str] = "export"
    accepts: ClassVar[tuple[str, ...]] = ("keras",)
    produces: ClassVar[str | None] = None

    formats: tuple[str, ...] = FORMATS
    targets: str = "all"
    sparse_threshold: float = SPARSE_MIN
    sparse_layout: str = "smallest"
    opset: int = 17
    atol: float = 1e-4
    rtol: float = 1e-4
    parity_samples: int = 256
    onnx_int8: tuple[str, ...] = ()
    calibration_samples: int = 500
    min_agreement: float = 0.97

    def __post_init__(self):
        bad_int8 = [m for m in self.onnx_int8 if m not in ONNX_INT8]
        require(isinstance(self.onnx_int8, tuple) and not bad_int8, self.name,
                f"onnx_int8 must be a subset of {ONNX_INT8}. Received: onnx_int8={self.onnx_int8!r}")
        require(not self.onnx_int8 or "onnx" in self.formats, self.name,
                f"onnx_int8 quantizes the float ONNX files: add 'onnx' to formats. "
                f"Received: formats={self.formats!r}")
        check_count(self.name, "calibration_samples", self.calibration_samples, minimum=1)
        check_fraction(self.name, "min_agreement", self.min_agreement, upper_open=False)
        bad = [f for f in self.formats if f not in FORMATS]
        require(bool(self.formats) and not bad, self.name,
                f"formats must be a non-empty subset of {FORMATS}. Received: formats={self.formats!r}")
        require(self.targets in ("all", "current"), self.name,
                f"targets must be 'all' or 'current'. Received: targets={self.targets!r}")
        check_fraction(self.name, "sparse_threshold", self.sparse_threshold, upper_open=False)
        check_choice(self.name, "sparse_layout", self.sparse_layout, SPARSE_LAYOUTS)
        check_count(self.name, "opset", self.opset, minimum=13)
        check_count(self.name, "parity_samples", self.parity_samples, minimum=1)
        require(isinstance(self.atol, (int, float)) and self.atol > 0, self.name,
                f"atol must be a positive number. Received: atol={self.atol!r}")
        require(isinstance(self.rtol, (int, float)) and self.rtol >= 0, self.name,
                f"rtol must be a number >= 0. Received: rtol={self.rtol!r}")

    def run(self, art: Artifact, ctx: RunContext) -> StageResult:
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
                    export_tflite(model, path, mode="float32", sparse=sparse,
                                  sparse_layout=self.sparse_layout)
                else:
                    export_onnx(model, path, opset=self.opset)
                check = check_parity(reference, path, fmt, x, atol=self.atol, rtol=self.rtol)
                checks[name] = check
                layout = {"sparse_layout": self.sparse_layout, "sparse_orders": sparse_orders(path)} \
                    if sparse else {}
                outputs.append(ctx.add_file(self, path, name, fmt=fmt, parent=target, meta={
                    "mode": "float32", "sparse_storage": sparse, **layout, "validation": check}))
                if fmt == "onnx":
                    outputs += self._onnx_int8(path, target, reference, x, ctx, checks)
        raise_on_mismatch(checks)
        notes = [agreement_note(name, check, "export") for name, check in checks.items()]
        return StageResult(outputs, notes=[n for n in notes if n])

    def _onnx_int8(self, src, target: Artifact, reference, x, ctx: RunContext, checks) -> list[Artifact]:
        out = []
        for mode in self.onnx_int8:
            name = f"{target.name}.{mode}.onnx"
            path = ctx.stage_path(name)
            if mode == "dynamic":
                quantize_onnx_dynamic(src, path)
            else:
                quantize_onnx_static(src, path, ctx.data.x_train[: self.calibration_samples])
            check = check_parity(reference, path, "onnx", x, atol=self.atol)
            # Judged on top-1 agreement; max |diff| stays in the record as information.
            check = {**check, "min_agreement": self.min_agreement,
                     "passed": check["top1_agreement"] >= self.min_agreement}
            checks[name] = check
            out.append(ctx.add_file(self, path, name, fmt="onnx", parent=target, meta={
                "mode": f"int8-{mode}", "sparse_storage": False, "validation": check}))
        return out

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
