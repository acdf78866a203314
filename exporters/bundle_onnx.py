"""ONNX files in edge bundles: their input and output, and metadata embedded in them.

Embedded metadata is two `metadata_props` entries, "slimpipe_metadata" (the metadata JSON) and
"labels" (a JSON list), readable with onnxruntime's `get_modelmeta().custom_metadata_map`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from slimpipe.exporters.bundle_spec import SLIMPIPE_METADATA_KEY, json_bytes

LABELS_KEY = "labels"
EMBEDDED = {"onnx_metadata_props": [SLIMPIPE_METADATA_KEY, LABELS_KEY]}


def onnx_io(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(inputs, outputs) of an .onnx file, initializers excluded: name, shape (-1 = any
    size), dtype."""
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


def embed_onnx_metadata(model: bytes, metadata: Mapping[str, Any], labels: Sequence[str]) -> bytes:
    """Return a copy of the ONNX `model` whose metadata_props hold "slimpipe_metadata" (JSON)
    and "labels" (a JSON list); entries of those names are replaced."""
    import onnx

    proto = onnx.load_from_string(bytes(model))
    ours = {SLIMPIPE_METADATA_KEY: json_bytes(dict(metadata), indent=None).decode("utf-8"),
            LABELS_KEY: json.dumps(list(labels), ensure_ascii=False)}
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
    sp, labels = props.get(SLIMPIPE_METADATA_KEY), props.get(LABELS_KEY)
    return {"props": props, "slimpipe_metadata": json.loads(sp) if sp else None,
            "labels": json.loads(labels) if labels else None}
