"""The standard TFLite ModelMetadata flatbuffer (metadata_schema.fbs, file identifier "M001"):
written and read here, for the fields slimpipe's bundles use.

tflite-support (the usual writer) needs protobuf < 4 and cannot be installed beside
TensorFlow 2.21, so the table is built with `flatbuffers` directly. Every field written here
exists since parser version 1.0.0 (`MIN_PARSER_VERSION`).

>>> buf = model_metadata_flatbuffer(metadata, labels)     # metadata as build_metadata makes it
>>> decode_model_metadata(buf)["inputs"][0]["normalization"]
{'mean': [0.0], 'std': [255.0]}
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import flatbuffers
from flatbuffers import number_types
from flatbuffers.table import Table

from slimpipe.exporters.bundle_spec import LABELS_FILE, SLIMPIPE_METADATA_KEY
from slimpipe.pipeline.errors import ConfigError

MIN_PARSER_VERSION = "1.0.0"
FILE_IDENTIFIER = b"M001"
IMAGE_PROPERTIES, FEATURE_PROPERTIES = 2, 1  # ContentProperties union
GRAYSCALE, RGB = 2, 1  # ColorSpaceType
NORMALIZATION_OPTIONS = 1  # ProcessUnitOptions union
TENSOR_AXIS_LABELS = 2  # AssociatedFileType
U8, U32 = number_types.Uint8Flags, number_types.Uint32Flags


class _Tables:
    """Writes flatbuffer tables and vectors into one builder, back to front."""

    def __init__(self, builder):
        self.b = builder

    def table(self, fields):  # fields: [(slot, kind, value)], values already created
        b = self.b
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

    def offsets(self, items):
        self.b.StartVector(4, len(items), 4)
        for item in reversed(items):
            self.b.PrependUOffsetTRelative(item)
        return self.b.EndVector(len(items))

    def floats(self, values):
        self.b.StartVector(4, len(values), 4)
        for v in reversed(values):
            self.b.PrependFloat32(float(v))
        return self.b.EndVector(len(values))

    def string(self, text):
        return self.b.CreateString(text)


def model_metadata_flatbuffer(metadata: Mapping[str, Any], labels: Sequence[str]) -> bytes:
    """The ModelMetadata table of one image classifier.

    Input: ImageProperties (GRAYSCALE for 1 channel, RGB for 3, with the default size) or
    FeatureProperties, and NormalizationOptions mean = -offset/scale, std = 1/scale (LiteRT
    normalizes as (pixel - mean) / std, which equals pixel * scale + offset).
    Output: FeatureProperties and labels.txt as TENSOR_AXIS_LABELS.
    """
    w = _Tables(flatbuffers.Builder(1024))
    tensor_in = _input_tensor(w, metadata["input"])
    tensor_out = _output_tensor(w, metadata["output"], labels)
    subgraph = w.table([(2, "off", w.offsets([tensor_in])), (3, "off", w.offsets([tensor_out]))])
    subgraphs = w.offsets([subgraph])
    acc = metadata.get("accuracy") or {}
    description = (f"{metadata['format']} image classifier over {len(labels)} classes, exported by "
                   f"slimpipe" + (f"; {acc['description']}: {acc['top1']:.4f}" if acc else "")
                   + f"; full record in the '{SLIMPIPE_METADATA_KEY}' metadata entry")
    lineage = metadata.get("lineage") or []
    fields = [(0, "off", w.string(metadata["name"])), (1, "off", w.string(description)),
              (2, "off", w.string(lineage[0]["id"]) if lineage and lineage[0].get("id") else None),
              (3, "off", subgraphs), (4, "off", w.string("slimpipe")),
              (7, "off", w.string(MIN_PARSER_VERSION))]
    w.b.Finish(w.table(fields), file_identifier=FILE_IDENTIFIER)
    return bytes(w.b.Output())


def _input_tensor(w: _Tables, inp: Mapping[str, Any]):
    scale, offset = inp["normalization"]["scale"], inp["normalization"]["offset"]
    shape = inp["shape"]
    channels = shape[-1] if len(shape) == 4 else None
    if channels in (1, 3):
        size = w.table([(0, "u32", max(int(shape[2]), 0)), (1, "u32", max(int(shape[1]), 0))])
        props = w.table([(0, "u8", GRAYSCALE if channels == 1 else RGB), (1, "off", size)])
        props_type = IMAGE_PROPERTIES
    else:
        props, props_type = w.table([]), FEATURE_PROPERTIES
    content = w.table([(0, "u8", props_type), (1, "off", props)])
    n = channels or 1
    norm = w.table([(0, "off", w.floats([-offset / scale + 0.0] * n)),
                    (1, "off", w.floats([1.0 / scale] * n))])
    units = w.offsets([w.table([(0, "u8", NORMALIZATION_OPTIONS), (1, "off", norm)])])
    name = w.string("image" if props_type == IMAGE_PROPERTIES else "input")
    desc = w.string(f"{inp['dtype']} tensor of shape {shape} (-1: any size); "
                    f"{inp['normalization']['description']}")
    return w.table([(0, "off", name), (1, "off", desc), (3, "off", content), (4, "off", units)])


def _output_tensor(w: _Tables, out: Mapping[str, Any], labels: Sequence[str]):
    file_name, file_desc = w.string(LABELS_FILE), w.string(
        f"{len(labels)} class names, one per line; line i names class index i")
    label_file = w.table([(0, "off", file_name), (1, "off", file_desc),
                          (2, "u8", TENSOR_AXIS_LABELS)])
    files = w.offsets([label_file])
    content = w.table([(0, "u8", FEATURE_PROPERTIES), (1, "off", w.table([]))])
    name, desc = w.string(out["meaning"].split(" ", 1)[0]), w.string(out["meaning"])
    return w.table([(0, "off", name), (1, "off", desc), (3, "off", content), (6, "off", files)])


# ---- reading -----------------------------------------------------------------------------------

def decode_model_metadata(buf: bytes) -> dict[str, Any]:
    """Decode the ModelMetadata fields `model_metadata_flatbuffer` writes (a small generic
    flatbuffer reader: name, description, version, author, min_parser_version, and per tensor
    its name, description, content, color space, default size, normalization and files)."""
    if buf[4:8] != FILE_IDENTIFIER:
        raise ConfigError("TFLITE_METADATA entry is not a ModelMetadata flatbuffer (identifier "
                          f"{buf[4:8]!r}, expected b'M001')")
    root = Table(buf, flatbuffers.encode.Get(flatbuffers.packer.uoffset, buf, 0))
    subgraphs = _tables(root, 3)
    sg = subgraphs[0] if subgraphs else None
    return {"name": _string(root, 0), "description": _string(root, 1), "version": _string(root, 2),
            "author": _string(root, 4), "min_parser_version": _string(root, 7),
            "inputs": [_tensor(t) for t in _tables(sg, 2)] if sg else [],
            "outputs": [_tensor(t) for t in _tables(sg, 3)] if sg else []}


def _off(t, slot):
    return t.Offset(4 + 2 * slot)


def _string(t, slot):
    o = _off(t, slot)
    return t.String(o + t.Pos).decode("utf-8") if o else None


def _sub(t, slot):
    o = _off(t, slot)
    return Table(t.Bytes, t.Indirect(o + t.Pos)) if o else None


def _tables(t, slot):
    o = _off(t, slot)
    if not o:
        return []
    start = t.Vector(o)
    return [Table(t.Bytes, t.Indirect(start + 4 * i)) for i in range(t.VectorLen(o))]


def _scalar(t, slot, flags):
    o = _off(t, slot)
    return t.Get(flags, o + t.Pos) if o else 0


def _float_list(t, slot):
    o = _off(t, slot)
    return [float(v) for v in t.GetVectorAsNumpy(number_types.Float32Flags, o)] if o else []


def _files(t, slot):
    return [{"name": _string(f, 0), "description": _string(f, 1),
             "type": {TENSOR_AXIS_LABELS: "TENSOR_AXIS_LABELS"}.get(_scalar(f, 2, U8), "OTHER")}
            for f in _tables(t, slot)]


def _tensor(t):
    rec = {"name": _string(t, 0), "description": _string(t, 1), "associated_files": _files(t, 6)}
    content = _sub(t, 3)
    if content is not None:
        kind = _scalar(content, 0, U8)
        rec["content"] = {FEATURE_PROPERTIES: "FeatureProperties",
                          IMAGE_PROPERTIES: "ImageProperties"}.get(kind, "OTHER")
        props = _sub(content, 1)
        if kind == IMAGE_PROPERTIES and props is not None:
            rec["color_space"] = {RGB: "RGB", GRAYSCALE: "GRAYSCALE"}.get(_scalar(props, 0, U8))
            size = _sub(props, 1)
            if size is not None:
                rec["default_size"] = {"width": _scalar(size, 0, U32),
                                       "height": _scalar(size, 1, U32)}
    for unit in _tables(t, 4):
        if _scalar(unit, 0, U8) == NORMALIZATION_OPTIONS and _sub(unit, 1) is not None:
            opts = _sub(unit, 1)
            rec["normalization"] = {"mean": _float_list(opts, 0), "std": _float_list(opts, 1)}
    return rec
