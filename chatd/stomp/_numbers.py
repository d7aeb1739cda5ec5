"""Numbers on the wire: the one way chatd's STOMP reads a header (or a part of one) as a
number.

Python's own tests are too generous for a wire format: ``"²".isdigit()`` and
``"١".isdigit()`` are True, ``int("١")`` is 1 and ``int("²")`` raises, and ``int()`` of
a few thousand digits raises too (its 4300-digit limit) or costs quadratic time. A number
here is ASCII digits only, with a bound on how many of them count.
"""

from __future__ import annotations

__all__ = ["parse_digits"]


def parse_digits(text: str, max_digits: int) -> int | None:
    """`text` as a number if it is one or more ASCII digits, of which at most
    `max_digits` are significant; None for anything else (an empty string, a sign, a
    space, any other character).

    Leading zeros do not count: a peer may pad, and the text itself is bounded where it
    was read (a header line is at most ``[stomp] max_header_bytes``)."""
    if text.isdigit() and text.isascii():
        if len(text) <= max_digits:
            return int(text)  # the common case: a content-length on every SEND
        digits = text.lstrip("0")
        if len(digits) <= max_digits:
            return int(digits) if digits else 0
    return None
