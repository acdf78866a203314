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

Embedded metadata (`embed_metadata=True`):
- TFLite: the standard "TFLITE_METADATA" entry (a ModelMetadata flatbuffer, file identifier
  "M001", min_parser_version 1.0.0: image/feature input with NormalizationOptions, output with
  labels.txt as TENSOR_AXIS_LABELS), labels.txt packed as an associated file (a zip appended to
  the flatbuffer, as tflite-support's MetadataPopulator does), and a "slimpipe_metadata" entry
  with the metadata JSON. tflite-support (the usual writer) needs protobuf < 4 and cannot be
  installed beside TensorFlow 2.21, so the ModelMetadata table is built here with `flatbuffers`
  and the model is re-packed with LiteRT's own schema (`ai_edge_litert.schema_py_generated`),
  keeping weight buffers 16-byte aligned. `read_tflite_metadata` reads all of it back.
- ONNX: `metadata_props` entries "slimpipe_metadata" (the JSON) and "labels" (a JSON list),
  readable with onnxruntime's `get_modelmeta().custom_metadata_map`.

Reproducibility: the same model file, metadata and labels give the same bytes: JSON with sorted
keys, no timestamps or absolute paths in the metadata, zip entries in a fixed order with the
date 1980-01-01 00:00:00, mode 0644, creator "unix" and deflate level 9 (the deflate stream is
zlib's; another zlib build may compress differently). The file written by tflite-support's
MetadataPopulator is NOT reproducible: it appends the associated files with `zipfile.write`,
which records each file's modification time and mode; this module's equivalent is. The model
files themselves are byte-identical from run to run on one machine and one set of versions
(TFLite converter and tf2onnx, the latter once `exporters.onnx` renumbers its generated names).
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

import slimpipe.pipeline  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from slimpipe.exporters import write_bytes_atomic
from slimpipe.pipeline.errors import ConfigError

__all__ = ["build_metadata", "write_bundle", "embed_tflite_metadata", "read_tflite_metadata",
           "embed_onnx_metadata", "read_onnx_metadata", "reproducible_zip", "VERSION_PACKAGES"]

FORMATS = {".tflite": "tflite", ".onnx": "onnx", ".keras": "keras"}  # .keras: Keras 3 copies
OUTPUT_KINDS = ("logits", "probabilities")
VERSION_PACKAGES = ("tensorflow", "tensorflow_model_optimization", "ai_edge_litert", "onnxruntime",
                    "tf_keras", "onnx", "tf2onnx", "numpy")
NORMALIZATION_FORMULA = "x = pixel * scale + offset"
ZIP_DATE = (1980, 1, 1, 0, 0, 0)
ZIP_MODE = 0o100644  # regular file, rw-r--r--
ZIP_LEVEL = 9
LABELS_FILE = "labels.txt"
METADATA_FILE = "metadata.json"
MANIFEST_FILE = "MANIFEST.json"
TFLITE_METADATA_KEY = "TFLITE_METADATA"  # the name LiteRT's metadata tooling reads
SLIMPIPE_METADATA_KEY = "slimpipe_metadata"
MIN_PARSER_VERSION = "1.0.0"  # every ModelMetadata field written here exists since 1.0.0


# ---- metadata ----------------------------------------------------------------------------------

def build_metadata(model_path, *, labels: Sequence[str], normalization: Mapping[str, Any],
                   measurement: Mapping[str, Any] | None = None,
                   lineage: Sequence[Mapping[str, Any]] = (), name: str | None = None,
                   output_kind: str = "logits", io: tuple[dict, dict] | None = None) -> dict[str, Any]:
    """The metadata of one deployable file, read from the file itself where possible.

    measurement: the benchmark stage's record for this file (accuracy, bytes, gzip_bytes,
    sparsity, ...); without it accuracy is None and sizes are measured here.
    lineage: this artifact first, then its parent, ... up to the source, as
    {"name", "stage", "id", "format"} records. output_kind: "logits" or "probabilities".
    io: (input, output) as `model_io` describes them, for files it cannot read (.keras).
    """
    from slimpipe.benchmarks.environment import _version
    from slimpipe.benchmarks.measure import file_size
    from slimpipe.pipeline.artifacts import content_sha256

    path = Path(model_path)
    fmt = _format_of(path)
    if output_kind not in OUTPUT_KINDS:
        raise ConfigError(f"build_metadata: output_kind must be one of {', '.join(OUTPUT_KINDS)}. "
                          f"Received: output_kind={output_kind!r}")
    labels = _check_labels(labels)
    norm = _check_normalization(normalization)
    inp, out = (dict(io[0]), dict(io[1])) if io is not None else model_io(path, fmt)
    classes = out["shape"][-1] if out["shape"] else None
    if classes not in (None, -1) and classes != len(labels):
        raise ConfigError(f"{path.name}: the model outputs {classes} classes but {len(labels)} labels "
                          f"were given; fix: pass the data set's labels ({classes} names)")
    inp["normalization"] = {"scale": norm["scale"], "offset": norm["offset"],
                            "formula": NORMALIZATION_FORMULA,
                            "description": f"model input {NORMALIZATION_FORMULA}, pixel = the raw "
                                           f"value (0-255 for 8-bit images), layout NHWC"}
    n = len(labels)
    out["meaning"] = (f"logits over {n} classes (apply softmax for probabilities); "
                      f"argmax = class index into {LABELS_FILE}" if output_kind == "logits" else
                      f"probabilities over {n} classes (softmax applied); "
                      f"argmax = class index into {LABELS_FILE}")
    m = dict(measurement or {})
    sizes = file_size(path) if "bytes" not in m else {"bytes": m["bytes"], "gzip_bytes": m.get("gzip_bytes")}
    accuracy = None
    if m.get("accuracy") is not None:
        runtime, examples = m.get("accuracy_runtime"), m.get("test_examples")
        accuracy = {"top1": _num(m["accuracy"]), "runtime": runtime, "test_examples": examples,
                    "description": f"top-1 accuracy measured by {runtime} on {examples} test examples"}
        if m.get("top1_agreement") is not None:
            accuracy["top1_agreement_with_baseline"] = _num(m["top1_agreement"])
    return {
        "name": name or path.name,
        "format": fmt,
        "input": inp,
        "output": out,
        "labels": {"file": LABELS_FILE, "count": n},
        "accuracy": accuracy,
        "bytes": int(sizes["bytes"]),
        "gzip_bytes": None if sizes["gzip_bytes"] is None else int(sizes["gzip_bytes"]),
        "sha256": content_sha256(path),
        "sparsity": _num(m.get("sparsity")),
        "lineage": [{k: r.get(k) for k in ("name", "stage", "id", "format")} for r in lineage],
        "versions": {p: _version(p) for p in VERSION_PACKAGES},
    }


def model_io(path, fmt: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(input, output) of a one-input, one-output model file: name, shape (-1 = any size),
    dtype, and quantization {"scale", "zero_point"} for integer tensors."""
    path = Path(path)
    fmt = fmt or _format_of(path)
    if fmt == "keras":
        raise ConfigError(f"{path.name}: model_io reads .tflite and .onnx files; for a .keras file pass "
                          "io=(input, output) to build_metadata")
    ins, outs = _tflite_io(path) if fmt == "tflite" else _onnx_io(path)
    if len(ins) != 1 or len(outs) != 1:
        raise ConfigError(f"{path.name}: bundles describe models with one input and one output. "
                          f"Received: {len(ins)} inputs, {len(outs)} outputs")
    return ins[0], outs[0]


def _tflite_io(path: Path):
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


def _onnx_io(path: Path):
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {t.name for t in graph.initializer}

    def describe(vi):
        tt = vi.type.tensor_type
        shape = [int(d.dim_value) if d.HasField("dim_value") else -1 for d in tt.shape.dim]
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)).name
        return {"name": vi.name, "shape": shape, "dtype": dtype}

    return ([describe(v) for v in graph.input if v.name not in initializers],
            [describe(v) for v in graph.output])


def _format_of(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ConfigError(f"bundles hold .tflite, .onnx or .keras files. Received: {path.name}; "
                          f"fix: export the model first (stage 'export')")
    if not path.is_file():
        raise ConfigError(f"cannot bundle {path}: the file does not exist; fix: check the path")
    return fmt


def _check_labels(labels) -> list[str]:
    labels = list(labels) if labels is not None and not isinstance(labels, str) else None
    bad = labels is None or not labels or any(
        not isinstance(x, str) or not x.strip() or "\n" in x or "\r" in x for x in labels)
    if bad:
        raise ConfigError(f"bundle labels must be a non-empty list of one-line, non-blank names. "
                          f"Received: {labels!r}"[:300] + "; fix: pass the data set's labels")
    return labels


def _check_normalization(norm) -> dict[str, float]:
    try:
        scale, offset = float(norm["scale"]), float(norm["offset"])
        ok = np.isfinite(scale) and np.isfinite(offset) and scale != 0
    except (TypeError, KeyError, ValueError):
        ok = False
    if not ok:
        raise ConfigError(f"bundle normalization must be {{'scale': nonzero number, 'offset': number}}. "
                          f"Received: {norm!r}; fix: pass the data set's normalization")
    return {"scale": scale, "offset": offset}


def _num(v):
    return None if v is None else (v.item() if hasattr(v, "item") else v)


def _json_bytes(obj: Any, *, indent: int | None = 2) -> bytes:
    if indent is None:
        text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    else:
        text = json.dumps(obj, sort_keys=True, indent=indent, ensure_ascii=False) + "\n"
    return text.encode("utf-8")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---- the bundle --------------------------------------------------------------------------------

def write_bundle(model_path, out_dir, *, metadata: Mapping[str, Any], labels: Sequence[str],
                 zip: bool = True, embed_metadata: bool = True) -> dict[str, Any]:  # noqa: A002
    """Write `<out_dir>/<metadata['name']>/` (and its `.zip` if `zip`); see the module docstring.

    Returns {"dir", "zip" (None without zip), "files" {file name: sha256}, "model_file",
    "embedded" (what was embedded in the model copy, or why nothing was)}.
    The folder is built next to its final place and renamed onto it, replacing an older one.
    """
    path = Path(model_path)
    fmt = _format_of(path)
    name = metadata.get("name") if isinstance(metadata, Mapping) else None
    if not isinstance(name, str) or not name or name.startswith(".") or "/" in name or "\\" in name:
        raise ConfigError(f"bundle metadata needs a 'name' usable as a folder name. Received: "
                          f"name={name!r}; fix: build it with build_metadata()")
    if metadata.get("format") != fmt:
        raise ConfigError(f"bundle metadata says format {metadata.get('format')!r} but {path.name} "
                          f"is {fmt}; fix: build the metadata from this file")
    for flag, value in (("zip", zip), ("embed_metadata", embed_metadata)):
        if not isinstance(value, bool):
            raise ConfigError(f"write_bundle: {flag} must be True or False. Received: {flag}={value!r}")
    labels = _check_labels(labels)
    metadata = json.loads(_json_bytes(dict(metadata)))  # plain JSON types, and a private copy

    model_bytes = path.read_bytes()
    embedded: dict[str, Any] = {"enabled": embed_metadata}
    if embed_metadata:
        try:
            if fmt == "tflite":
                model_bytes = embed_tflite_metadata(model_bytes, metadata, labels)
                embedded["tflite"] = [TFLITE_METADATA_KEY, SLIMPIPE_METADATA_KEY]
                embedded["associated_files"] = [LABELS_FILE]
            elif fmt == "keras":
                raise _CannotEmbed("a .keras file is bundled as written; its record is metadata.json")
            else:
                model_bytes = embed_onnx_metadata(model_bytes, metadata, labels)
                embedded["onnx_metadata_props"] = [SLIMPIPE_METADATA_KEY, "labels"]
        except _CannotEmbed as exc:
            embedded["skipped"] = str(exc)
    model_file = path.name
    full = {**metadata, "bundle": {"model_file": model_file, "model_bytes": len(model_bytes),
                                   "model_sha256": _sha256(model_bytes), "embedded": embedded}}
    files = [(model_file, model_bytes),
             (LABELS_FILE, ("\n".join(labels) + "\n").encode("utf-8")),
             (METADATA_FILE, _json_bytes(full))]

    out_dir = Path(out_dir)
    final = out_dir / name
    _write_folder(final, files)
    zip_path = None
    if zip:
        manifest = {"bundle": name, "files": [{"name": n, "bytes": len(d), "sha256": _sha256(d)}
                                              for n, d in files]}
        entries = [*files, (MANIFEST_FILE, _json_bytes(manifest))]
        zip_path = write_bytes_atomic(out_dir / f"{name}.zip",
                                      reproducible_zip([(f"{name}/{n}", d) for n, d in entries]))
    return {"dir": str(final), "zip": None if zip_path is None else str(zip_path),
            "files": {n: _sha256(d) for n, d in files}, "model_file": model_file,
            "embedded": embedded}


def _write_folder(final: Path, files: list[tuple[str, bytes]]) -> None:
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    old = None
    try:
        os.chmod(tmp, 0o755)
        for fname, data in files:
            with open(tmp / fname, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        if final.exists():
            old = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".old"))
            os.replace(final, old / "x")
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and (old / "x").exists() and not final.exists():
            os.replace(old / "x", final)  # put the previous bundle back
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def reproducible_zip(entries: Sequence[tuple[str, bytes]], *, compress: bool = True) -> bytes:
    """A zip of (name, bytes) entries, in the given order, whose bytes depend only on them."""
    bio = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(bio, "w") as zf:
        _add_entries(zf, entries, method)
    return bio.getvalue()


def _add_entries(zf: zipfile.ZipFile, entries, method: int) -> None:
    for arcname, data in entries:
        info = zipfile.ZipInfo(arcname, date_time=ZIP_DATE)
        info.compress_type = method
        info.create_system = 3  # unix, whatever platform writes it
        info.external_attr = ZIP_MODE << 16
        zf.writestr(info, data, compress_type=method,
                    compresslevel=ZIP_LEVEL if method == zipfile.ZIP_DEFLATED else None)


# ---- TFLite metadata ---------------------------------------------------------------------------

class _CannotEmbed(Exception):
    """The model cannot carry embedded metadata; the message says why."""


def embed_tflite_metadata(model: bytes, metadata: Mapping[str, Any], labels: Sequence[str]) -> bytes:
    """Return a copy of the TFLite flatbuffer `model` carrying TFLITE_METADATA, labels.txt as an
    associated file and a slimpipe_metadata JSON entry. Entries of those names are replaced."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as fb

    model = bytes(model)
    if model[4:8] != b"TFL3":
        raise ConfigError("embed_tflite_metadata: not a TFLite flatbuffer (no 'TFL3' identifier); "
                          "fix: pass the bytes of a .tflite file")
    if zipfile.is_zipfile(io.BytesIO(model)):
        raise _CannotEmbed("the model already has packed associated files; embedding skipped")
    obj = fb.ModelT.InitFromObj(fb.Model.GetRootAs(model, 0))
    if any(b.offset or b.size for b in obj.buffers or []):
        raise _CannotEmbed("the model stores buffers by offset (models over 2 GB); embedding skipped")
    if len(obj.subgraphs or []) != 1:
        raise _CannotEmbed(f"TFLite metadata describes one subgraph; the model has "
                           f"{len(obj.subgraphs or [])}; embedding skipped")
    ours = {TFLITE_METADATA_KEY.encode(), SLIMPIPE_METADATA_KEY.encode()}
    obj.metadata = [m for m in obj.metadata or [] if _as_bytes(m.name) not in ours]
    obj.buffers = [_AlignedBuffer.of(b) for b in obj.buffers or []]
    for key, data in ((TFLITE_METADATA_KEY, model_metadata_flatbuffer(metadata, labels)),
                      (SLIMPIPE_METADATA_KEY, _json_bytes(dict(metadata), indent=None))):
        obj.buffers.append(_AlignedBuffer.of(data))
        entry = fb.MetadataT()
        entry.name, entry.buffer = key, len(obj.buffers) - 1
        obj.metadata.append(entry)
    builder = flatbuffers.Builder(len(model) + 4096)
    builder.Finish(obj.Pack(builder), file_identifier=b"TFL3")
    bio = io.BytesIO(bytes(builder.Output()))
    bio.seek(0, io.SEEK_END)
    # Associated files are a zip appended to the flatbuffer (tflite-support's layout), stored
    # uncompressed so that readers can map them in place.
    with zipfile.ZipFile(bio, "a") as zf:
        _add_entries(zf, [(LABELS_FILE, ("\n".join(labels) + "\n").encode("utf-8"))],
                     zipfile.ZIP_STORED)
    return bio.getvalue()


def _as_bytes(v) -> bytes:
    return v.encode() if isinstance(v, str) else bytes(v or b"")


class _AlignedBuffer:
    """A TFLite Buffer table whose data is packed 16-byte aligned, as the schema asks
    (`data:[ubyte] (force_align: 16)`); the generated BufferT.Pack aligns to 1 byte only."""

    def __init__(self, data):
        self.data = data

    @classmethod
    def of(cls, src) -> "_AlignedBuffer":
        if isinstance(src, (bytes, bytearray)):
            return cls(np.frombuffer(bytes(src), dtype=np.uint8))
        data = src.data
        if data is not None and not isinstance(data, np.ndarray):
            data = np.asarray(data, dtype=np.uint8)
        return cls(data)

    def Pack(self, builder):  # noqa: N802  (the flatbuffers object-API name)
        from ai_edge_litert import schema_py_generated as fb

        data = None
        if self.data is not None:
            raw = np.ascontiguousarray(self.data, dtype=np.uint8).tobytes()
            builder.StartVector(1, len(raw), 16)
            builder.head = builder.head - len(raw)
            builder.Bytes[builder.head:builder.head + len(raw)] = raw
            data = builder.EndVector(len(raw))
        fb.BufferStart(builder)
        if data is not None:
            fb.BufferAddData(builder, data)
        return fb.BufferEnd(builder)


def model_metadata_flatbuffer(metadata: Mapping[str, Any], labels: Sequence[str]) -> bytes:
    """The standard TFLite ModelMetadata table (metadata_schema.fbs, identifier "M001").

    Input: ImageProperties (GRAYSCALE for 1 channel, RGB for 3, with the default size) or
    FeatureProperties, and NormalizationOptions mean = -offset/scale, std = 1/scale (LiteRT
    normalizes as (pixel - mean) / std, which equals pixel * scale + offset).
    Output: FeatureProperties and labels.txt as TENSOR_AXIS_LABELS.
    """
    import flatbuffers

    inp, out = metadata["input"], metadata["output"]
    scale, offset = inp["normalization"]["scale"], inp["normalization"]["offset"]
    shape = inp["shape"]
    b = flatbuffers.Builder(1024)

    def table(fields):  # fields: [(slot, kind, value)], values already created
        b.StartObject(max(slot for slot, _, _ in fields) + 1 if fields else 0)
        for slot, kind, value in fields:
            if value is None:
                continue
            if kind == "off":
                b.PrependUOffsetTRelativeSlot(slot, value, 0)
            elif kind == "u8":
                b.PrependUint8Slot(slot, value, 0)
            else:
                b.PrependUint32Slot(slot, value, 0)
        return b.EndObject()

    def offsets(items):
        b.StartVector(4, len(items), 4)
        for item in reversed(items):
            b.PrependUOffsetTRelative(item)
        return b.EndVector(len(items))

    def floats(values):
        b.StartVector(4, len(values), 4)
        for v in reversed(values):
            b.PrependFloat32(float(v))
        return b.EndVector(len(values))

    channels = shape[-1] if len(shape) == 4 else None
    if channels in (1, 3):
        size = table([(0, "u32", max(int(shape[2]), 0)), (1, "u32", max(int(shape[1]), 0))])
        props, props_type = table([(0, "u8", 2 if channels == 1 else 1), (1, "off", size)]), 2
    else:
        props, props_type = table([]), 1  # FeatureProperties
    content_in = table([(0, "u8", props_type), (1, "off", props)])
    n = channels or 1
    norm = table([(0, "off", floats([-offset / scale + 0.0] * n)), (1, "off", floats([1.0 / scale] * n))])
    unit = table([(0, "u8", 1), (1, "off", norm)])  # ProcessUnitOptions.NormalizationOptions
    units = offsets([unit])
    in_name = b.CreateString("image" if props_type == 2 else "input")
    in_desc = b.CreateString(f"{inp['dtype']} tensor of shape {shape} (-1: any size); "
                             f"{inp['normalization']['description']}")
    tensor_in = table([(0, "off", in_name), (1, "off", in_desc), (3, "off", content_in),
                       (4, "off", units)])

    lf_name, lf_desc = b.CreateString(LABELS_FILE), b.CreateString(
        f"{len(labels)} class names, one per line; line i names class index i")
    label_file = table([(0, "off", lf_name), (1, "off", lf_desc), (2, "u8", 2)])  # TENSOR_AXIS_LABELS
    files = offsets([label_file])
    content_out = table([(0, "u8", 1), (1, "off", table([]))])  # FeatureProperties
    out_name = b.CreateString(out["meaning"].split(" ", 1)[0])
    out_desc = b.CreateString(out["meaning"])
    tensor_out = table([(0, "off", out_name), (1, "off", out_desc), (3, "off", content_out),
                        (6, "off", files)])

    subgraph = table([(2, "off", offsets([tensor_in])), (3, "off", offsets([tensor_out]))])
    subgraphs = offsets([subgraph])
    acc = metadata.get("accuracy") or {}
    description = (f"{metadata['format']} image classifier over {len(labels)} classes, exported by "
                   f"slimpipe" + (f"; {acc['description']}: {acc['top1']:.4f}" if acc else "")
                   + f"; full record in the '{SLIMPIPE_METADATA_KEY}' metadata entry")
    lineage = metadata.get("lineage") or []
    fields = [(0, "off", b.CreateString(metadata["name"])), (1, "off", b.CreateString(description)),
              (2, "off", b.CreateString(lineage[0]["id"]) if lineage and lineage[0].get("id") else None),
              (3, "off", subgraphs), (4, "off", b.CreateString("slimpipe")),
              (7, "off", b.CreateString(MIN_PARSER_VERSION))]
    b.Finish(table(fields), file_identifier=b"M001")
    return bytes(b.Output())


def read_tflite_metadata(model: bytes) -> dict[str, Any]:
    """What a TFLite file carries: {"entries": metadata names, "model_metadata": the decoded
    TFLITE_METADATA (fields written by this module) or None, "slimpipe_metadata": dict or None,
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
    return {"entries": list(entries), "model_metadata": _decode_model_metadata(mm) if mm else None,
            "slimpipe_metadata": json.loads(sp.decode("utf-8")) if sp else None,
            "associated_files": files}


def _decode_model_metadata(buf: bytes) -> dict[str, Any]:
    """Decode the ModelMetadata fields this module writes (a small generic flatbuffer reader)."""
    import flatbuffers
    from flatbuffers import number_types as N
    from flatbuffers.table import Table

    if buf[4:8] != b"M001":
        raise ConfigError("TFLITE_METADATA entry is not a ModelMetadata flatbuffer (identifier "
                          f"{buf[4:8]!r}, expected b'M001')")

    def off(t, slot):
        return t.Offset(4 + 2 * slot)

    def string(t, slot):
        o = off(t, slot)
        return t.String(o + t.Pos).decode("utf-8") if o else None

    def sub(t, slot):
        o = off(t, slot)
        return Table(t.Bytes, t.Indirect(o + t.Pos)) if o else None

    def tables(t, slot):
        o = off(t, slot)
        if not o:
            return []
        start = t.Vector(o)
        return [Table(t.Bytes, t.Indirect(start + 4 * i)) for i in range(t.VectorLen(o))]

    def scalar(t, slot, flags):
        o = off(t, slot)
        return t.Get(flags, o + t.Pos) if o else 0

    def float_list(t, slot):
        o = off(t, slot)
        return [float(v) for v in t.GetVectorAsNumpy(N.Float32Flags, o)] if o else []

    def files(t, slot):
        return [{"name": string(f, 0), "description": string(f, 1),
                 "type": {2: "TENSOR_AXIS_LABELS"}.get(scalar(f, 2, N.Uint8Flags), "OTHER")}
                for f in tables(t, slot)]

    def tensor(t):
        rec = {"name": string(t, 0), "description": string(t, 1), "associated_files": files(t, 6)}
        content = sub(t, 3)
        if content is not None:
            kind = scalar(content, 0, N.Uint8Flags)
            rec["content"] = {1: "FeatureProperties", 2: "ImageProperties"}.get(kind, "OTHER")
            props = sub(content, 1)
            if kind == 2 and props is not None:
                rec["color_space"] = {1: "RGB", 2: "GRAYSCALE"}.get(scalar(props, 0, N.Uint8Flags))
                size = sub(props, 1)
                if size is not None:
                    rec["default_size"] = {"width": scalar(size, 0, N.Uint32Flags),
                                           "height": scalar(size, 1, N.Uint32Flags)}
        for unit in tables(t, 4):
            if scalar(unit, 0, N.Uint8Flags) == 1 and sub(unit, 1) is not None:
                opts = sub(unit, 1)
                rec["normalization"] = {"mean": float_list(opts, 0), "std": float_list(opts, 1)}
        return rec

    root = Table(buf, flatbuffers.encode.Get(flatbuffers.packer.uoffset, buf, 0))
    subgraphs = tables(root, 3)
    sg = subgraphs[0] if subgraphs else None
    return {"name": string(root, 0), "description": string(root, 1), "version": string(root, 2),
            "author": string(root, 4), "min_parser_version": string(root, 7),
            "inputs": [tensor(t) for t in tables(sg, 2)] if sg else [],
            "outputs": [tensor(t) for t in tables(sg, 3)] if sg else []}


# ---- ONNX metadata -----------------------------------------------------------------------------

def embed_onnx_metadata(model: bytes, metadata: Mapping[str, Any], labels: Sequence[str]) -> bytes:
    """Return a copy of the ONNX `model` whose metadata_props hold "slimpipe_metadata" (JSON)
    and "labels" (a JSON list); entries of those names are replaced."""
    import onnx

    proto = onnx.load_from_string(bytes(model))
    ours = {SLIMPIPE_METADATA_KEY: _json_bytes(dict(metadata), indent=None).decode("utf-8"),
            "labels": json.dumps(list(labels), ensure_ascii=False)}
    kept = [(p.key, p.value) for p in proto.metadata_props if p.key not in ours]
    del proto.metadata_props[:]
    for key, value in [*kept, *sorted(ours.items())]:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return proto.SerializeToString(deterministic=True)


def read_onnx_metadata(model: bytes) -> dict[str, Any]:
    """{"props": metadata_props as a dict, "slimpipe_metadata": dict or None, "labels": list or None}."""
    import onnx

    props = {p.key: p.value for p in onnx.load_from_string(bytes(model)).metadata_props}
    sp, labels = props.get(SLIMPIPE_METADATA_KEY), props.get("labels")
    return {"props": props, "slimpipe_metadata": json.loads(sp) if sp else None,
            "labels": json.loads(labels) if labels else None}
