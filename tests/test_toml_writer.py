"""chatd.toml_writer: whatever it writes, `tomllib` reads back as the same data."""

from __future__ import annotations

import math
import tomllib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chatd import toml_writer
from chatd.config import from_mapping, to_toml

CONTROLS = [chr(c) for c in range(0x20)] + ["\x7f"]


def round_trip(doc: dict[str, Any]) -> dict[str, Any]:
    return tomllib.loads(toml_writer.dumps(doc))


@pytest.mark.parametrize("ch", CONTROLS, ids=[f"U+{ord(c):04X}" for c in CONTROLS])
def test_every_control_character_round_trips(ch: str) -> None:
    doc = {"s": f"a{ch}b", "t": {"s": ch, "list": [ch, ch * 2]}}
    text = toml_writer.dumps(doc)
    assert round_trip(doc) == doc
    # Escaped, never written raw: a raw one is invalid TOML (tab is allowed, but the
    # writer escapes it like the others, so a value is always one line).
    assert ch not in text.replace("\n", "")


def test_all_control_characters_at_once_and_the_characters_toml_escapes() -> None:
    s = "".join(CONTROLS) + '"\\' + "\\\\" + '\\"' + '"""' + "'''" + "\\u0041" + "\\n"
    assert round_trip({"s": s}) == {"s": s}


@pytest.mark.parametrize(
    "s",
    [
        "",
        "plain",
        'say "hi"',
        "C:\\path\\to\\",
        "\\",
        '"',
        "é ü ß — ✓ 漢字 😀",
        "\u0085\u2028\u2029\ufeff",  # non-ASCII line breaks and a BOM: valid as they are
        "\U0010ffff",
        "# not a comment",
        "a = b",
        "[table]",
    ],
)
def test_strings_round_trip(s: str) -> None:
    assert round_trip({"s": s, "in list": [s], "t": {s or "empty": s}}) == {
        "s": s,
        "in list": [s],
        "t": {s or "empty": s},
    }


def test_keys_that_are_not_bare_are_quoted() -> None:
    doc = {"": 1, "a b": 2, "a.b": 3, 'q"': 4, "é": 5, "x\ny": 6, "ok-key_1": {"": {"z": 7}}}
    text = toml_writer.dumps(doc)
    assert round_trip(doc) == doc
    assert "ok-key_1" in text and '"ok-key_1"' not in text


def test_numbers_booleans_and_arrays() -> None:
    doc = {
        "ints": [0, 1, -1, 2**63 - 1, -(2**63)],
        "floats": [0.0, -0.0, 1.5, 1e16, 1e-7, 5e-324, 1.7976931348623157e308, 30.0],
        "bools": [True, False],
        "empty": [],
        "nested": [[1, 2], ["a", [True]]],
        "mixed": [1, "a", 2.5, False],
        "tuple": (1, 2),
    }
    back = round_trip(doc)
    assert back == {**doc, "tuple": [1, 2]}
    assert all(type(x) is float for x in back["floats"])
    assert math.copysign(1.0, back["floats"][1]) == -1.0
    assert type(back["ints"][0]) is int


def test_inf_and_nan() -> None:
    back = round_trip({"f": [math.inf, -math.inf, math.nan]})
    assert back["f"][:2] == [math.inf, -math.inf]
    assert math.isnan(back["f"][2])


def test_nested_tables_and_inline_tables() -> None:
    doc = {
        "top": "level",
        "a": {"x": 1, "b": {"y": 2, "c": {"z": [3]}}, "after": True},
        "only_sub": {"sub": {"k": "v"}},
        "empty": {},
        "array_of_tables": [{"n": 1}, {"n": 2, "deep": {"m": "x"}}],
    }
    assert round_trip(doc) == doc


def test_layout_plain_keys_first_then_sections_each_followed_by_a_blank_line() -> None:
    text = toml_writer.dumps(
        {"http": {"listen": ["127.0.0.1:0"]}, "v": 1, "log": {"level": "info"}}
    )
    assert text == "\n".join(
        ["v = 1", "", "[http]", 'listen = ["127.0.0.1:0"]', "", "[log]", 'level = "info"', ""]
    )
    assert toml_writer.dumps({}) == ""


@pytest.mark.parametrize(
    ("doc", "error"),
    [
        ({"n": 2**63}, ValueError),
        ({"n": -(2**63) - 1}, ValueError),
        ({"s": "half \ud800 a pair"}, ValueError),
        ({"none": None}, TypeError),
        ({"b": b"bytes"}, TypeError),
        ({"o": object()}, TypeError),
        ({1: "non-string key"}, TypeError),
    ],
)
def test_what_toml_cannot_hold_is_refused(doc: dict[Any, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        toml_writer.dumps(doc)


# Every scalar TOML holds as it is (no datetimes: the writer takes none), nested.
_text = st.text(st.characters(exclude_categories=("Cs",)))
_scalars = (
    _text
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False)
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=12,
)


@given(st.dictionaries(_text, _values, max_size=6))
def test_any_document_round_trips(doc: dict[str, Any]) -> None:
    assert round_trip(doc) == doc


# --- the config's own writer ------------------------------------------------------------


def test_effective_config_with_awkward_strings_round_trips_and_masks_the_secret() -> None:
    cfg = from_mapping(
        {
            "auth": {
                "jwt_secret": 'a"hunter2\\with\x01controls-long-enough-0123456789',
                "issuer": 'https://issuer.example/"quoted"\\\t\x7f',
                "allowed_origins": ["http://é.example", "\x00"],
            },
            "store": {"path": "C:\\chatd\\chat\nd.db"},
        },
        env={},
    )
    text = to_toml(cfg)
    back = tomllib.loads(text)
    assert back["auth"]["jwt_secret"] == "********"
    assert "hunter2" not in text
    assert back["auth"]["issuer"] == cfg.auth.issuer
    assert back["auth"]["allowed_origins"] == cfg.auth.allowed_origins
    assert back["store"]["path"] == cfg.store.path
    back["auth"]["jwt_secret"] = cfg.auth.jwt_secret
    assert from_mapping(back, env={}) == cfg
