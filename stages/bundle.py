"""Package every deployable file of the run as an edge bundle (after the benchmark stage)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar

from slimpipe.pipeline.artifacts import KERAS_KINDS, Artifact, content_sha256
from slimpipe.pipeline.context import RunContext
from slimpipe.pipeline.errors import ConfigError, StageError
from slimpipe.pipeline.stage import StageResult, require

from slimpipe.pipeline.atomic import write_bytes_atomic
from slimpipe.exporters.bundle import build_metadata, write_bundle

FORMATS = ("tflite", "onnx")
ORDER_FIX = "put 'bundle' after 'benchmark' in the recipe"


@dataclass(frozen=True)
class Bundle:
    """Write a bundle for each TFLite/ONNX artifact of the run (see `exporters.bundle`).

    A bundle records the accuracy the benchmark stage measured, so this stage must come after
    'benchmark'. Files whose export validation failed are skipped with a note. Bundles go to
    `<stage folder>/<artifact name>/` (+ `.zip` with `zip`), indexed by `bundles.json`; they are
    packaging, not new model artifacts, so the stage returns none. In a run from a Keras 3
    model, each Keras 3 copy of a measured Keras artifact gets its own bundle too,
    `<artifact name>.keras/` (the file as written, labels.txt, and metadata.json with the
    accuracy measured on the tf_keras model whose outputs it reproduces).

    >>> Bundle(formats=("tflite",), zip=False)
    """

    name: ClassVar[str] = "bundle"
    accepts: ClassVar[tuple[str, ...]] = KERAS_KINDS
    produces: ClassVar[str | None] = None
    requires: ClassVar[tuple[str, ...]] = ("benchmark",)  # checked when the recipe loads

    zip: bool = True
    formats: tuple[str, ...] = FORMATS
    embed_metadata: bool = True

    def __post_init__(self):
        for field in ("zip", "embed_metadata"):
            value = getattr(self, field)
            require(isinstance(value, bool), self.name,
                    f"{field} must be true or false. Received: {field}={value!r}")
        ok = isinstance(self.formats, tuple) and bool(self.formats) and all(
            f in FORMATS for f in self.formats)
        require(ok, self.name, f"formats must be a non-empty subset of {FORMATS}. "
                f"Received: formats={self.formats!r}")

    def run(self, art: Artifact, ctx: RunContext) -> StageResult:
        targets, skipped, result = self._targets(ctx)
        out_dir = ctx.stage_path("")
        index: dict[str, dict] = {}
        for target in targets:
            if content_sha256(target.path) != target.sha256:
                raise StageError(f"stage 'bundle': {target.path} changed since it was recorded "
                                 f"(sha256 differs); run again with --no-cache")
            metadata = build_metadata(
                target.path, name=target.name, labels=ctx.data.labels,
                normalization=ctx.data.normalization, measurement=ctx.measurements[target.name],
                lineage=_lineage(target, ctx), output_kind=_output_kind(target, ctx))
            written = write_bundle(target.path, out_dir, metadata=metadata, labels=ctx.data.labels,
                                   zip=self.zip, embed_metadata=self.embed_metadata)
            if "skipped" in written["embedded"]:
                result.note(f"bundle: no metadata embedded in '{target.name}': "
                            f"{written['embedded']['skipped']}")
            index[target.name] = {
                "dir": target.name, "zip": f"{target.name}.zip" if written["zip"] else None,
                "files": written["files"], "embedded": written["embedded"],
                "accuracy": (metadata["accuracy"] or {}).get("top1"),
                "sha256": metadata["sha256"]}
        for target in _keras3_targets(ctx):
            index[f"{target.name}.keras"] = self._keras3_bundle(target, ctx, out_dir)
        write_bytes_atomic(out_dir / "bundles.json", (json.dumps(
            {"bundles": index, "skipped": skipped}, indent=2, sort_keys=True) + "\n").encode())
        where = out_dir.name  # the runner writes into .NN-step.tmp/ and renames it NN-step/
        if where.startswith(".") and where.endswith(".tmp"):
            where = where[1:-len(".tmp")]
        result.note(f"bundle: {len(index)} edge bundle{'s' if len(index) != 1 else ''} in "
                    f"{where}/ ({', '.join(index)}): model file, labels.txt and metadata.json"
                    + (", and a zip with a MANIFEST.json" if self.zip else "")
                    + "; index in bundles.json.")
        return result

    def _targets(self, ctx: RunContext) -> tuple[list[Artifact], dict[str, str], StageResult]:
        """The files to bundle, the ones skipped with the reason, and notes saying so."""
        targets, skipped, result = [], {}, StageResult()
        for target in ctx.measurable():
            if target.format not in self.formats:
                continue
            validation = target.meta.get("validation") or {}
            if validation.get("passed") is False:
                skipped[target.name] = "export validation failed"
                result.note(f"bundle: skipped '{target.name}': its export validation failed "
                            f"(max |diff| {validation.get('max_abs_diff')})")
                continue
            targets.append(target)
        missing = [t.name for t in targets if t.name not in ctx.measurements]
        if missing:
            raise ConfigError(f"bundle needs measurements: {ORDER_FIX}. Received: no measurements "
                              f"for {', '.join(missing)}")
        if not targets:
            raise ConfigError(f"stage 'bundle' found no {'/'.join(self.formats)} files to bundle: "
                              f"expected an 'export' (or 'quantize') step before 'benchmark'. "
                              f"Received: artifacts {', '.join(a.name for a in ctx.artifacts) or 'none'}")
        return targets, skipped, result

    def _keras3_bundle(self, art: Artifact, ctx: RunContext, out_dir) -> dict:
        path = art.path.parent / art.meta["keras3"]["file"]
        if content_sha256(path) != art.meta["keras3"]["sha256"]:
            raise StageError(f"stage 'bundle': {path} changed since it was recorded (sha256 differs); "
                             "run again with --no-cache")
        measured = {k: v for k, v in ctx.measurements.get(art.name, {}).items()
                    if k not in ("bytes", "gzip_bytes")}  # those are the .h5's; the .keras is measured
        metadata = build_metadata(path, name=f"{art.name}.keras", labels=ctx.data.labels,
                                  normalization=ctx.data.normalization, measurement=measured,
                                  lineage=_lineage(art, ctx), output_kind=_output_kind(art, ctx),
                                  io=_keras_io(ctx.keras_model(art)))
        result = write_bundle(path, out_dir, metadata=metadata, labels=ctx.data.labels, zip=self.zip,
                              embed_metadata=False)
        return {"dir": metadata["name"], "zip": f"{metadata['name']}.zip" if result["zip"] else None,
                "files": result["files"], "embedded": result["embedded"],
                "accuracy": (metadata["accuracy"] or {}).get("top1"), "sha256": metadata["sha256"]}


def _keras3_targets(ctx: RunContext) -> list[Artifact]:
    """Measured Keras artifacts that have a Keras 3 copy (runs from a Keras 3 model)."""
    return [a for a in ctx.measurable() if a.is_keras and "file" in (a.meta.get("keras3") or {})
            and a.name in ctx.measurements]


def _keras_io(model) -> tuple[dict, dict]:
    """(input, output) of a one-input, one-output Keras model, as exporters.bundle.model_io."""
    def describe(tensor, name):
        return {"name": name, "shape": [-1 if d is None else int(d) for d in tuple(tensor.shape)],
                "dtype": tensor.dtype.name}
    return describe(model.inputs[0], model.input_names[0]), describe(model.outputs[0], model.output_names[0])


def _ancestors(art: Artifact, ctx: RunContext) -> list[Artifact]:
    """`art`, its parent, ... up to the source (as far as the run knows them)."""
    by_id = {a.id: a for a in ctx.artifacts}
    chain, seen = [art], {art.id}
    while chain[-1].parent_id in by_id and chain[-1].parent_id not in seen:
        chain.append(by_id[chain[-1].parent_id])
        seen.add(chain[-1].id)
    return chain


def _lineage(art: Artifact, ctx: RunContext) -> list[dict]:
    return [{"name": a.name, "stage": a.stage, "id": a.id, "format": a.format}
            for a in _ancestors(art, ctx)]


def _output_kind(art: Artifact, ctx: RunContext) -> str:
    """"probabilities" when the Keras model the file came from ends in softmax, else "logits"."""
    from slimpipe.pipeline.models import output_is_probabilities

    keras_parent = next((a for a in _ancestors(art, ctx)[1:] if a.is_keras), None)
    if keras_parent is None or not keras_parent.path.exists():
        return "logits"
    return "probabilities" if output_is_probabilities(ctx.keras_model(keras_parent)) else "logits"
