"""The metadata of one deployable file (bundles' metadata.json), read from the file itself
where possible.

>>> meta = build_metadata("out/pruned.tflite", labels=ds.labels, normalization=ds.normalization,
...                       measurement=ctx.measurements["pruned.tflite"], lineage=lineage)

It holds the input's name, shape, dtype (and int8 scale and zero point) and normalization, what
the output means (logits or probabilities), the measured top-1 accuracy, bytes, gzip bytes,
sha256, sparsity, lineage and tool versions, and no timestamps or absolute paths, so the same
file gives the same metadata.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from slimpipe.benchmarks.environment import package_version
from slimpipe.benchmarks.measure import file_size
from slimpipe.exporters.bundle_formats import format_of, model_io
from slimpipe.exporters.bundle_spec import LABELS_FILE, check_labels
from slimpipe.pipeline.artifacts import content_sha256
from slimpipe.pipeline.errors import ConfigError

OUTPUT_KINDS = ("logits", "probabilities")
VERSION_PACKAGES = ("tensorflow", "tensorflow_model_optimization", "ai_edge_litert", "onnxruntime",
                    "tf_keras", "onnx", "tf2onnx", "numpy")
NORMALIZATION_FORMULA = "x = pixel * scale + offset"


def build_metadata(model_path, *, labels: Sequence[str], normalization: Mapping[str, Any],
                   measurement: Mapping[str, Any] | None = None,
                   lineage: Sequence[Mapping[str, Any]] = (), name: str | None = None,
                   output_kind: str = "logits", io: tuple[dict, dict] | None = None) -> dict[str, Any]:
    """The metadata of one deployable file.

    measurement: the benchmark stage's record for this file (accuracy, bytes, gzip_bytes,
    sparsity, ...); without it accuracy is None and sizes are measured here.
    lineage: this artifact first, then its parent, ... up to the source, as
    {"name", "stage", "id", "format"} records. output_kind: "logits" or "probabilities".
    io: (input, output) as `model_io` describes them, for files it cannot read (.keras).
    """
    path = Path(model_path)
    fmt = format_of(path).name
    if output_kind not in OUTPUT_KINDS:
        raise ConfigError(f"build_metadata: output_kind must be one of {', '.join(OUTPUT_KINDS)}. "
                          f"Received: output_kind={output_kind!r}")
    labels = check_labels(labels)
    norm = check_normalization(normalization)
    inp, out = (dict(io[0]), dict(io[1])) if io is not None else model_io(path, fmt)
    classes = out["shape"][-1] if out["shape"] else None
    if classes not in (None, -1) and classes != len(labels):
        raise ConfigError(f"{path.name}: the model outputs {classes} classes but {len(labels)} labels "
                          f"were given; fix: pass the data set's labels ({classes} names)")
    inp["normalization"] = {"scale": norm["scale"], "offset": norm["offset"],
                            "formula": NORMALIZATION_FORMULA,
                            "description": f"model input {NORMALIZATION_FORMULA}, pixel = the raw "
                                           f"value (0-255 for 8-bit images), layout NHWC"}
    out["meaning"] = output_meaning(output_kind, len(labels))
    m = dict(measurement or {})
    sizes = file_size(path) if "bytes" not in m else {"bytes": m["bytes"], "gzip_bytes": m.get("gzip_bytes")}
    return {
        "name": name or path.name,
        "format": fmt,
        "input": inp,
        "output": out,
        "labels": {"file": LABELS_FILE, "count": len(labels)},
        "accuracy": _accuracy(m),
        "bytes": int(sizes["bytes"]),
        "gzip_bytes": None if sizes["gzip_bytes"] is None else int(sizes["gzip_bytes"]),
        "sha256": content_sha256(path),
        "sparsity": _num(m.get("sparsity")),
        "lineage": [{k: r.get(k) for k in ("name", "stage", "id", "format")} for r in lineage],
        "versions": {p: package_version(p) for p in VERSION_PACKAGES},
    }


def output_meaning(output_kind: str, n: int) -> str:
    if output_kind == "logits":
        return (f"logits over {n} classes (apply softmax for probabilities); "
                f"argmax = class index into {LABELS_FILE}")
    return (f"probabilities over {n} classes (softmax applied); "
            f"argmax = class index into {LABELS_FILE}")


def _accuracy(m: Mapping[str, Any]) -> dict[str, Any] | None:
    if m.get("accuracy") is None:
        return None
    runtime, examples = m.get("accuracy_runtime"), m.get("test_examples")
    accuracy = {"top1": _num(m["accuracy"]), "runtime": runtime, "test_examples": examples,
                "description": f"top-1 accuracy measured by {runtime} on {examples} test examples"}
    if m.get("top1_agreement") is not None:
        accuracy["top1_agreement_with_baseline"] = _num(m["top1_agreement"])
    return accuracy


def check_normalization(norm) -> dict[str, float]:
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
