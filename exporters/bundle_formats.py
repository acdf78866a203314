"""The model formats an edge bundle can hold, and what each needs: a file suffix, a reader of
its input and output tensors, and a writer that embeds the bundle's metadata in a copy.

Another format takes one `BundleFormat` entry in `FORMATS` and a module like `bundle_onnx`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from slimpipe.exporters import bundle_onnx, bundle_tflite
from slimpipe.exporters.bundle_spec import CannotEmbed
from slimpipe.pipeline.errors import ConfigError

Io = Callable[[Path], tuple[list[dict[str, Any]], list[dict[str, Any]]]]
Embed = Callable[[bytes, Mapping[str, Any], Sequence[str]], bytes]


@dataclass(frozen=True)
class BundleFormat:
    name: str  # the artifact format, as in report.json
    suffix: str
    io: Io  # (inputs, outputs) of a file
    embed: Embed  # (model bytes, metadata, labels) -> model bytes carrying them
    embedded: Mapping[str, list[str]]  # what `embed` adds, for metadata.json's bundle record


def _keras_io(path: Path):
    raise ConfigError(f"{path.name}: a .keras file's tensors are read by Keras 3, not here; fix: pass "
                      "io=(input, output) to build_metadata (the bundle stage takes them from the model)")


def _keras_as_written(model_bytes: bytes, metadata, labels) -> bytes:
    raise CannotEmbed("a .keras file is bundled as written; its record is metadata.json")


FORMATS: dict[str, BundleFormat] = {
    "tflite": BundleFormat("tflite", ".tflite", bundle_tflite.tflite_io,
                           bundle_tflite.embed_tflite_metadata, bundle_tflite.EMBEDDED),
    "onnx": BundleFormat("onnx", ".onnx", bundle_onnx.onnx_io,
                         bundle_onnx.embed_onnx_metadata, bundle_onnx.EMBEDDED),
    # The Keras 3 copies of a run's Keras models (pipeline.keras3.out).
    "keras": BundleFormat("keras", ".keras", _keras_io, _keras_as_written, {}),
}
BY_SUFFIX = {f.suffix: f for f in FORMATS.values()}


def format_of(path: Path) -> BundleFormat:
    """The bundle format of an existing model file, by its suffix."""
    fmt = BY_SUFFIX.get(path.suffix.lower())
    if fmt is None:
        known = list(BY_SUFFIX)
        raise ConfigError(f"bundles hold {', '.join(known[:-1])} or {known[-1]} files. Received: {path.name}; "
                          f"fix: export the model first (stage 'export')")
    if not path.is_file():
        raise ConfigError(f"cannot bundle {path}: the file does not exist; fix: check the path")
    return fmt


def model_io(path, fmt: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(input, output) of a one-input, one-output model file: name, shape (-1 = any size),
    dtype, and quantization {"scale", "zero_point"} for integer tensors."""
    path = Path(path)
    ins, outs = (FORMATS[fmt] if fmt in FORMATS else format_of(path)).io(path)
    if len(ins) != 1 or len(outs) != 1:
        raise ConfigError(f"{path.name}: bundles describe models with one input and one output. "
                          f"Received: {len(ins)} inputs, {len(outs)} outputs")
    return ins[0], outs[0]
