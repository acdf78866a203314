"""Edge bundles: everything a device needs to run one deployable file, reproducibly packed.

>>> meta = build_metadata("out/pruned.tflite", labels=ds.labels, normalization=ds.normalization,
...                       measurement=ctx.measurements["pruned.tflite"], lineage=lineage)
>>> write_bundle("out/pruned.tflite", "out/bundles", metadata=meta, labels=ds.labels)
{'dir': 'out/bundles/pruned.tflite', 'zip': 'out/bundles/pruned.tflite.zip', 'files': {...}, ...}

A bundle is the folder `<out_dir>/<name>/` holding
- the model file (a copy: the original artifact is never modified),
- `labels.txt` (one class name per line; line i = class index i),
- `metadata.json` (sorted keys, 2-space indent, UTF-8): input shape/dtype/quantization and
  normalization, output meaning, measured accuracy, sizes, sha256, lineage and tool versions.
  `bytes`, `gzip_bytes` and `sha256` describe the artifact that was measured; `bundle.model_*`
  describe the copy in the bundle, which differs from it when metadata is embedded.
and, with `zip=True`, `<out_dir>/<name>.zip` holding those files under `<name>/` plus
`MANIFEST.json` (name, size and sha256 of each file).

With `embed_metadata=True` the model copy carries the metadata too: TFLite files the standard
TFLITE_METADATA entry with labels.txt packed as an associated file (`bundle_tflite`), ONNX
files `metadata_props` (`bundle_onnx`). `bundle_formats` lists the formats a bundle can hold.

Reproducibility: the same model file, metadata and labels give the same bytes: JSON with sorted
keys, no timestamps or absolute paths in the metadata, and zips whose bytes depend only on their
entries (`bundle_zip`). The model files themselves are byte-identical from run to run on one
machine and one set of versions (TFLite converter and tf2onnx, the latter once
`exporters.onnx` renumbers its generated names).

The parts live in their own modules; this one writes the bundle and re-exports their API.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import slimpipe.pipeline  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from slimpipe.exporters import write_bytes_atomic
from slimpipe.exporters.bundle_formats import BY_SUFFIX, BundleFormat, format_of, model_io
from slimpipe.exporters.bundle_metadata import (NORMALIZATION_FORMULA, OUTPUT_KINDS,
                                                VERSION_PACKAGES, build_metadata)
from slimpipe.exporters.bundle_onnx import embed_onnx_metadata, read_onnx_metadata
from slimpipe.exporters.bundle_spec import (LABELS_FILE, MANIFEST_FILE, METADATA_FILE,
                                            SLIMPIPE_METADATA_KEY, CannotEmbed, check_labels,
                                            json_bytes, labels_text, sha256_hex)
from slimpipe.exporters.bundle_tflite import (TFLITE_METADATA_KEY, embed_tflite_metadata,
                                              read_tflite_metadata)
from slimpipe.exporters.bundle_zip import ZIP_DATE, ZIP_LEVEL, ZIP_MODE, reproducible_zip, write_folder
from slimpipe.exporters.tflite_model_metadata import MIN_PARSER_VERSION, model_metadata_flatbuffer
from slimpipe.pipeline.errors import ConfigError

__all__ = ["build_metadata", "write_bundle", "embed_tflite_metadata", "read_tflite_metadata",
           "embed_onnx_metadata", "read_onnx_metadata", "reproducible_zip", "VERSION_PACKAGES",
           "model_io", "model_metadata_flatbuffer", "FORMATS", "OUTPUT_KINDS",
           "NORMALIZATION_FORMULA", "ZIP_DATE", "ZIP_MODE", "ZIP_LEVEL", "LABELS_FILE",
           "METADATA_FILE", "MANIFEST_FILE", "TFLITE_METADATA_KEY", "SLIMPIPE_METADATA_KEY",
           "MIN_PARSER_VERSION"]

FORMATS = {suffix: f.name for suffix, f in BY_SUFFIX.items()}  # {".tflite": "tflite", ...}


def write_bundle(model_path, out_dir, *, metadata: Mapping[str, Any], labels: Sequence[str],
                 zip: bool = True, embed_metadata: bool = True) -> dict[str, Any]:  # noqa: A002
    """Write `<out_dir>/<metadata['name']>/` (and its `.zip` if `zip`); see the module docstring.

    Returns {"dir", "zip" (None without zip), "files" {file name: sha256}, "model_file",
    "embedded" (what was embedded in the model copy, or why nothing was)}.
    The folder is built next to its final place and renamed onto it, replacing an older one.
    """
    path = Path(model_path)
    fmt = format_of(path)
    name = _check_request(path, fmt, metadata, zip=zip, embed_metadata=embed_metadata)
    labels = check_labels(labels)
    metadata = json.loads(json_bytes(dict(metadata)))  # plain JSON types, and a private copy
    model_bytes, embedded = _model_copy(path, fmt, metadata, labels, embed_metadata)
    model_file = path.name
    full = {**metadata, "bundle": {"model_file": model_file, "model_bytes": len(model_bytes),
                                   "model_sha256": sha256_hex(model_bytes), "embedded": embedded}}
    files = [(model_file, model_bytes), (LABELS_FILE, labels_text(labels)),
             (METADATA_FILE, json_bytes(full))]
    out_dir = Path(out_dir)
    final = out_dir / name
    write_folder(final, files)
    zip_path = None
    if zip:
        manifest = {"bundle": name, "files": [{"name": n, "bytes": len(d), "sha256": sha256_hex(d)}
                                              for n, d in files]}
        entries = [*files, (MANIFEST_FILE, json_bytes(manifest))]
        zip_path = write_bytes_atomic(out_dir / f"{name}.zip",
                                      reproducible_zip([(f"{name}/{n}", d) for n, d in entries]))
    return {"dir": str(final), "zip": None if zip_path is None else str(zip_path),
            "files": {n: sha256_hex(d) for n, d in files}, "model_file": model_file,
            "embedded": embedded}


def _check_request(path: Path, fmt: BundleFormat, metadata, **flags) -> str:
    """The bundle's folder name, once the metadata and flags are known to fit the file."""
    name = metadata.get("name") if isinstance(metadata, Mapping) else None
    if not isinstance(name, str) or not name or name.startswith(".") or "/" in name or "\\" in name:
        raise ConfigError(f"bundle metadata needs a 'name' usable as a folder name. Received: "
                          f"name={name!r}; fix: build it with build_metadata()")
    if metadata.get("format") != fmt.name:
        raise ConfigError(f"bundle metadata says format {metadata.get('format')!r} but {path.name} "
                          f"is {fmt.name}; fix: build the metadata from this file")
    for flag, value in flags.items():
        if not isinstance(value, bool):
            raise ConfigError(f"write_bundle: {flag} must be True or False. Received: {flag}={value!r}")
    return name


def _model_copy(path: Path, fmt: BundleFormat, metadata, labels, embed: bool):
    """(the bytes of the bundle's model file, the record of what was embedded in them)."""
    model_bytes = path.read_bytes()
    embedded: dict[str, Any] = {"enabled": embed}
    if embed:
        try:
            model_bytes = fmt.embed(model_bytes, metadata, labels)
            embedded.update({k: list(v) for k, v in fmt.embedded.items()})
        except CannotEmbed as exc:
            embedded["skipped"] = str(exc)
    return model_bytes, embedded
