"""Write a recipe (plain data, as `tomllib` reads it) back out as TOML.

Python's standard library reads TOML but does not write it. A recipe built or changed in code
(a shipped recipe with overrides, a search over settings) goes through `dumps_recipe` to a file
that `slimpipe compress --recipe FILE` reads back to the same data:

>>> data = tomllib.loads((RECIPES_DIR / "default.toml").read_text())
>>> data["stages"][0]["epochs"] = 1
>>> Path("my.toml").write_text(dumps_recipe(data))

Top-level tables are written as `[name]`, lists of tables as `[[name]]`, anything deeper
inline (`layer_sparsity = { fc1 = 0.97, "@share:0.5" = 0.9 }`); keys that are not bare TOML
keys are quoted. The text is read back and compared with the input before it is returned.
"""
from __future__ import annotations

import json
import math
import re
import tomllib
from typing import Any, Mapping

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def dumps_recipe(data: Mapping[str, Any]) -> str:
    """TOML text that `tomllib.loads` turns back into `data` (tuples come back as lists).

    Raises ValueError for what TOML cannot hold (None, keys that are not strings)."""
    plain, tables, arrays = [], [], []
    for key, value in data.items():
        if isinstance(value, Mapping):
            tables.append((key, value))
        elif _is_table_list(value):
            arrays.append((key, value))
        else:
            plain.append(f"{toml_key(key)} = {toml_value(value)}")
    lines = plain
    for key, items in arrays:
        for item in items:
            lines += ["", f"[[{toml_key(key)}]]"]
            lines += [f"{toml_key(k)} = {toml_value(v)}" for k, v in item.items()]
    for key, table in tables:
        lines += ["", f"[{toml_key(key)}]"]
        lines += [f"{toml_key(k)} = {toml_value(v)}" for k, v in table.items()]
    text = "\n".join(lines).lstrip("\n") + "\n"
    if tomllib.loads(text) != _plain(data):
        raise ValueError("dumps_recipe: the TOML written does not read back to the same data")
    return text


def toml_key(key: Any) -> str:
    if not isinstance(key, str):
        raise ValueError(f"TOML keys are strings. Received: {key!r}")
    return key if _BARE_KEY.fullmatch(key) else _string(key)


def toml_value(value: Any) -> str:
    """One TOML value: a string, number, bool, array or inline table."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return ("nan" if math.isnan(value) else
                repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf"))
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        inner = ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items())
        return "{ " + inner + " }" if inner else "{}"
    raise ValueError(f"TOML cannot hold {type(value).__name__} values. Received: {value!r}; "
                     f"fix: leave the key out to use the default")


def _string(text: str) -> str:
    # JSON's escapes (\" \\ \n \uXXXX ...) are TOML basic-string escapes too; TOML also
    # forbids a raw DEL character.
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007F")


def _is_table_list(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and bool(value) and all(
        isinstance(v, Mapping) for v in value)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
