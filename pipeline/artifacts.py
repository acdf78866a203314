"""Artifacts: immutable records of what a stage made, and from what.

An artifact's `id` is a hash of its parent's id, the stage name, the stage's canonical config
and the package version, so the same inputs always get the same id (the basis for caching and
lineage). Its `sha256` is the hash of the file's content. The report is built from these
records and from measurements of the files, never from a stage's own account of itself.

>>> art = make_artifact("pruned", path, fmt="keras", kind="keras", stage="strip",
...                     config={}, parent=trained)
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from slimpipe.pipeline import __version__

FORMATS = ("keras", "tflite", "onnx")

# What a Keras artifact holds, as far as stage ordering cares. Stages declare which kinds they
# accept, and the recipe is checked against these before anything runs.
KERAS_KINDS = ("keras", "keras:pruning", "keras:clustering", "keras:qat")


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace, the form that gets hashed."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_jsonable)


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return dataclasses.asdict(obj)
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    raise TypeError(f"cannot serialize {type(obj).__name__} in an artifact config")


def content_sha256(path: Path) -> str:
    """sha256 of a file, or of a directory's files (names and bytes, in sorted order)."""
    h = hashlib.sha256()
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def artifact_id(parent_id: str | None, stage: str, config: Mapping[str, Any], name: str) -> str:
    key = canonical_json([parent_id, stage, config, name, __version__])
    return hashlib.sha256(key.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Artifact:
    """One model file a stage produced (or the source model)."""

    name: str
    path: Path
    format: str
    kind: str
    stage: str
    config: Mapping[str, Any]
    parent: str | None
    parent_id: str | None
    id: str
    sha256: str
    meta: Mapping[str, Any] = field(default_factory=dict)

    @property
    def is_keras(self) -> bool:
        return self.format == "keras"

    def record(self) -> dict[str, Any]:
        """The JSON-ready lineage record of this artifact."""
        return {
            "name": self.name,
            "id": self.id,
            "format": self.format,
            "kind": self.kind,
            "stage": self.stage,
            "parent": self.parent,
            "parent_id": self.parent_id,
            "path": str(self.path),
            "sha256": self.sha256,
            "config": json.loads(canonical_json(self.config)),
            "meta": json.loads(canonical_json(self.meta)),
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any], base_dir: Path) -> "Artifact":
        """Rebuild an artifact from its `record()`, its path taken relative to `base_dir`."""
        return cls(name=record["name"], path=Path(base_dir) / record["path"],
                   format=record["format"], kind=record["kind"], stage=record["stage"],
                   config=record["config"], parent=record["parent"],
                   parent_id=record["parent_id"], id=record["id"], sha256=record["sha256"],
                   meta=record["meta"])


def make_artifact(
    name: str,
    path: Path,
    *,
    fmt: str,
    kind: str,
    stage: str,
    config: Mapping[str, Any],
    parent: Artifact | None,
    meta: Mapping[str, Any] | None = None,
) -> Artifact:
    """Build the record for a file that has been completely written to `path`."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown artifact format {fmt!r}; expected one of {FORMATS}")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"artifact {name!r} was not written: {path} is missing")
    parent_id = parent.id if parent else None
    return Artifact(
        name=name,
        path=path,
        format=fmt,
        kind=kind,
        stage=stage,
        config=dict(config),
        parent=parent.name if parent else None,
        parent_id=parent_id,
        id=artifact_id(parent_id, stage, config, name),
        sha256=content_sha256(path),
        meta=dict(meta or {}),
    )
