"""A spec given as a dict, written as TOML for the binary (the standard library reads TOML
but does not write it).

Tables become `[table]`, lists of tables `[[table]]` (as `[[layer]]`), everything else a
`key = value` line; values are strings, booleans, integers, floats and lists of them.
"""

from __future__ import annotations

import json
import math
import numbers
import re
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["dumps"]

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def dumps(spec: Mapping[str, Any]) -> str:
    """The TOML text of `spec`, a dict as `tomllib.loads` would return it.

    >>> print(dumps({"seed": 1, "sparsity": {"density": 0.5}, "layer": [{"name": "fc.weight", "shape": [8, 4]}]}))
    seed = 1
    <BLANKLINE>
    [sparsity]
    density = 0.5
    <BLANKLINE>
    [[layer]]
    name = "fc.weight"
    shape = [8, 4]
    <BLANKLINE>
    """
    if not isinstance(spec, Mapping):
        raise TypeError(f"a spec is a path, a TOML string or a dict, not {type(spec).__name__}")
    lines: list[str] = []
    _table(spec, (), lines)
    return "\n".join(lines).lstrip("\n") + "\n"


def _table(table: Mapping[str, Any], path: tuple[str, ...], lines: list[str]) -> None:
    """Appends the key/value lines of `table`, then its sub-tables and arrays of tables."""
    tables: list[tuple[str, Mapping[str, Any]]] = []
    arrays: list[tuple[str, Sequence[Mapping[str, Any]]]] = []
    for key, value in table.items():
        if not isinstance(key, str):
            raise TypeError(f"{_where(path)}: key {key!r} is not a string")
        if isinstance(value, Mapping):
            tables.append((key, value))
        elif _is_list(value) and value and all(isinstance(v, Mapping) for v in value):
            arrays.append((key, value))
        else:
            lines.append(f"{_key(key)} = {_value(value, (*path, key))}")
    for key, sub in tables:
        lines += ["", f"[{_dotted((*path, key))}]"]
        _table(sub, (*path, key), lines)
    for key, items in arrays:
        for item in items:
            lines += ["", f"[[{_dotted((*path, key))}]]"]
            _table(item, (*path, key), lines)


def _value(value: Any, path: tuple[str, ...]) -> str:
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()  # a NumPy array or scalar
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        number = float(value)
        if math.isnan(number):
            return "nan"
        if math.isinf(number):
            return "inf" if number > 0 else "-inf"
        return repr(number)
    if _is_list(value):
        if any(isinstance(v, Mapping) for v in value):
            raise TypeError(f"{_where(path)}: a list mixes tables with other values")
        return "[" + ", ".join(_value(v, path) for v in value) + "]"
    raise TypeError(f"{_where(path)}: {type(value).__name__} has no TOML form (use a string, number, boolean, list or dict)")


def _is_list(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes, bytearray))


def _string(text: str) -> str:
    # JSON's escapes are TOML's, except that TOML also wants DEL escaped.
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _string(key)


def _dotted(path: tuple[str, ...]) -> str:
    return ".".join(_key(part) for part in path)


def _where(path: tuple[str, ...]) -> str:
    return "spec" + "".join(f"[{part!r}]" for part in path)
