"""What an edge bundle holds, by name, and how its text is encoded; shared by its writers.

JSON is written with sorted keys and UTF-8 so that the same content always gives the same bytes.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Sequence

from slimpipe.pipeline.errors import ConfigError

LABELS_FILE = "labels.txt"
METADATA_FILE = "metadata.json"
MANIFEST_FILE = "MANIFEST.json"
SLIMPIPE_METADATA_KEY = "slimpipe_metadata"  # the metadata entry every model format carries


class CannotEmbed(Exception):
    """The model cannot carry embedded metadata; the message says why."""


def json_bytes(obj: Any, *, indent: int | None = 2) -> bytes:
    """Sorted-key UTF-8 JSON: indented with a final newline, or compact with `indent=None`."""
    if indent is None:
        text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    else:
        text = json.dumps(obj, sort_keys=True, indent=indent, ensure_ascii=False) + "\n"
    return text.encode("utf-8")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def labels_text(labels: Sequence[str]) -> bytes:
    """labels.txt: one class name per line; line i names class index i."""
    return ("\n".join(labels) + "\n").encode("utf-8")


def check_labels(labels) -> list[str]:
    labels = list(labels) if labels is not None and not isinstance(labels, str) else None
    bad = labels is None or not labels or any(
        not isinstance(x, str) or not x.strip() or "\n" in x or "\r" in x for x in labels)
    if bad:
        raise ConfigError(f"bundle labels must be a non-empty list of one-line, non-blank names. "
                          f"Received: {labels!r}"[:300] + "; fix: pass the data set's labels")
    return labels
