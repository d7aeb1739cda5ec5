"""TOML 1.0 out: the one writer for chatd's effective config, the tests' and the
benchmark's config files. `tomllib` reads; the standard library has no writer.

Only what a config holds: strings, booleans, integers, floats, arrays and tables.
Anything else is a `TypeError` rather than a guess at its text, and a value TOML cannot
hold (an integer outside 64 bits, a lone surrogate) a `ValueError`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_INT64 = range(-(2**63), 2**63)

# TOML 1.0 basic strings: `"` and `\` must be escaped, and so must every control
# character but tab (U+0000-U+001F, U+007F). The short forms where TOML has one;
# \uXXXX for the rest.
_SHORT = {"\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r", '"': '\\"', "\\": "\\\\"}
_ESCAPES = str.maketrans(
    {
        **{chr(c): f"\\u{c:04X}" for c in [*range(0x20), 0x7F]},
        **_SHORT,
    }
)


def dumps(doc: Mapping[str, Any]) -> str:
    """`doc` as a TOML document: its plain keys first, then each table as a `[header]`
    section (nested ones as `[a.b]`), each section followed by a blank line."""
    out: list[str] = []
    _table(out, (), doc)
    return "\n".join(out)


def string(value: str) -> str:
    """A TOML basic string that `tomllib` reads back as `value`."""
    if any("\ud800" <= ch <= "\udfff" for ch in value):
        # Not a Unicode scalar value: neither UTF-8 nor a TOML escape can carry it.
        raise ValueError(f"a lone surrogate cannot be written as TOML: {value!r}")
    return '"' + value.translate(_ESCAPES) + '"'


def key(name: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"TOML keys are strings, not {type(name).__name__}: {name!r}")
    return name if _BARE_KEY.fullmatch(name) else string(name)


def value(v: Any) -> str:
    """An inline value: a scalar, an array, or an inline table."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        if v not in _INT64:
            raise ValueError(f"TOML integers are 64-bit: {v}")
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        # repr is the shortest text that reads back as the same float, and always has a
        # `.` or an exponent, so TOML does not take it for an integer.
        return repr(v)
    if isinstance(v, str):
        return string(v)
    if isinstance(v, Mapping):
        return "{" + ", ".join(f"{key(k)} = {value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, Sequence) and not isinstance(v, bytes | bytearray):
        return "[" + ", ".join(value(x) for x in v) + "]"
    raise TypeError(f"no TOML form for {type(v).__name__}: {v!r}")


def _table(out: list[str], path: tuple[str, ...], table: Mapping[str, Any]) -> None:
    if path:
        out.append("[" + ".".join(key(p) for p in path) + "]")
    subtables = []
    for k, v in table.items():
        if isinstance(v, Mapping):
            subtables.append((k, v))
        else:
            out.append(f"{key(k)} = {value(v)}")
    if path or out:
        out.append("")
    for k, v in subtables:
        _table(out, (*path, k), v)
