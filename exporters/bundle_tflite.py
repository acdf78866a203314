"""TFLite files in edge bundles: their input and output, and metadata embedded in them.

Embedded metadata is the standard "TFLITE_METADATA" entry (a ModelMetadata flatbuffer, see
`tflite_model_metadata`), labels.txt packed as an associated file (a zip appended to the
flatbuffer, as tflite-support's MetadataPopulator does, but with fixed dates so the bytes are
reproducible), and a "slimpipe_metadata" entry with the metadata JSON. The model is re-packed
with LiteRT's own schema (`ai_edge_litert.schema_py_generated`), keeping weight buffers 16-byte
aligned. `read_tflite_metadata` reads all of it back.
"""
from __future__ import annotations

import contextlib
import io
import json
import zipfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from slimpipe.exporters.bundle_spec import (LABELS_FILE, SLIMPIPE_METADATA_KEY, CannotEmbed,
                                            json_bytes, labels_text)
from slimpipe.exporters.bundle_zip import add_entries
from slimpipe.exporters.tflite_model_metadata import decode_model_metadata, model_metadata_flatbuffer
from slimpipe.exporters.tflite_pack import AlignedBuffer, pack_model
from slimpipe.pipeline.errors import ConfigError

TFLITE_METADATA_KEY = "TFLITE_METADATA"  # the name LiteRT's metadata tooling reads
EMBEDDED = {"tflite": [TFLITE_METADATA_KEY, SLIMPIPE_METADATA_KEY], "associated_files": [LABELS_FILE]}


def tflite_io(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(inputs, outputs) of a .tflite file: name, shape (-1 = any size), dtype, and
    quantization {"scale", "zero_point", "formula"} for integer tensors."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interp = Interpreter(model_path=str(path),
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)

    def describe(d, direction):
        sig = d.get("shape_signature")
        shape = sig if sig is not None and len(sig) else d["shape"]
        rec = {"name": d["name"], "shape": [int(v) for v in shape], "dtype": np.dtype(d["dtype"]).name}
        scale, zero_point = d["quantization"]
        if np.dtype(d["dtype"]).kind in "iu" and scale:
            rec["quantization"] = {
                "scale": float(scale), "zero_point": int(zero_point),
                "formula": "q = round(x / scale) + zero_point" if direction == "in"
                else "value = (q - zero_point) * scale"}
        return rec

    return ([describe(d, "in") for d in interp.get_input_details()],
            [describe(d, "out") for d in interp.get_output_details()])


def embed_tflite_metadata(model: bytes, metadata: Mapping[str, Any], labels: Sequence[str]) -> bytes:
    """Return a copy of the TFLite flatbuffer `model` carrying TFLITE_METADATA, labels.txt as an
    associated file and a slimpipe_metadata JSON entry. Entries of those names are replaced."""
    from ai_edge_litert import schema_py_generated as fb

    model = bytes(model)
    if model[4:8] != b"TFL3":
        raise ConfigError("embed_tflite_metadata: not a TFLite flatbuffer (no 'TFL3' identifier); "
                          "fix: pass the bytes of a .tflite file")
    if zipfile.is_zipfile(io.BytesIO(model)):
        raise CannotEmbed("the model already has packed associated files; embedding skipped")
    obj = fb.ModelT.InitFromObj(fb.Model.GetRootAs(model, 0))
    if any(b.offset or b.size for b in obj.buffers or []):
        raise CannotEmbed("the model stores buffers by offset (models over 2 GB); embedding skipped")
    if len(obj.subgraphs or []) != 1:
        raise CannotEmbed(f"TFLite metadata describes one subgraph; the model has "
                          f"{len(obj.subgraphs or [])}; embedding skipped")
    ours = {TFLITE_METADATA_KEY.encode(), SLIMPIPE_METADATA_KEY.encode()}
    obj.metadata = [m for m in obj.metadata or [] if _as_bytes(m.name) not in ours]
    obj.buffers = list(obj.buffers or [])
    for key, data in ((TFLITE_METADATA_KEY, model_metadata_flatbuffer(metadata, labels)),
                      (SLIMPIPE_METADATA_KEY, json_bytes(dict(metadata), indent=None))):
        obj.buffers.append(AlignedBuffer.of(data))
        entry = fb.MetadataT()
        entry.name, entry.buffer = key, len(obj.buffers) - 1
        obj.metadata.append(entry)
    bio = io.BytesIO(pack_model(obj))
    bio.seek(0, io.SEEK_END)
    # Associated files are a zip appended to the flatbuffer (tflite-support's layout), stored
    # uncompressed so that readers can map them in place.
    with zipfile.ZipFile(bio, "a") as zf:
        add_entries(zf, [(LABELS_FILE, labels_text(labels))], zipfile.ZIP_STORED)
    return bio.getvalue()


def _as_bytes(v) -> bytes:
    return v.encode() if isinstance(v, str) else bytes(v or b"")


def read_tflite_metadata(model: bytes) -> dict[str, Any]:
    """What a TFLite file carries: {"entries": metadata names, "model_metadata": the decoded
    TFLITE_METADATA (fields written by slimpipe) or None, "slimpipe_metadata": dict or None,
    "associated_files": {name: bytes}}."""
    from ai_edge_litert import schema_py_generated as fb

    model = bytes(model)
    root = fb.Model.GetRootAs(model, 0)
    entries: dict[str, bytes] = {}
    for i in range(root.MetadataLength()):
        meta = root.Metadata(i)
        buf = root.Buffers(meta.Buffer())
        entries[meta.Name().decode()] = buf.DataAsNumpy().tobytes() if buf.DataLength() else b""
    files = {}
    with contextlib.suppress(zipfile.BadZipFile):
        with zipfile.ZipFile(io.BytesIO(model)) as zf:
            files = {n: zf.read(n) for n in zf.namelist()}
    mm = entries.get(TFLITE_METADATA_KEY)
    sp = entries.get(SLIMPIPE_METADATA_KEY)
    return {"entries": list(entries), "model_metadata": decode_model_metadata(mm) if mm else None,
            "slimpipe_metadata": json.loads(sp.decode("utf-8")) if sp else None,
            "associated_files": files}
