"""Exception hierarchy for the STOMP codec."""

__all__ = ["LocalProtocolError", "RemoteProtocolError", "StompError"]


def _one_line(text: str) -> str:
    # `.message` ends up in an ERROR frame header; a raw line break there would
    # be unrepresentable for STOMP 1.0 peers and for CONNECT-style headers.
    return " ".join(text.splitlines()) if ("\n" in text or "\r" in text) else text


class StompError(Exception):
    """Base class of every error raised by :mod:`chatd.stomp`.

    ``message`` is a short single-line summary, suitable for the ``message``
    header of an ERROR frame; ``detail`` is a longer human-readable explanation,
    suitable for the ERROR frame body (it defaults to ``message``); ``headers``
    are further headers of that ERROR frame, in order (``receipt-id`` naming the
    frame at fault, ``version`` listing the versions a server speaks).
    """

    message: str
    detail: str
    headers: tuple[tuple[str, str], ...]

    def __init__(
        self,
        message: str,
        detail: str | None = None,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self.message = _one_line(message)
        self.detail = detail if detail is not None else self.message
        self.headers = headers
        super().__init__(self.message)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, {self.detail!r})"


class RemoteProtocolError(StompError):
    """The peer broke the protocol: bytes that are not STOMP, or a frame the
    conversation refuses. The error says what the ERROR frame that answers it
    holds.

    Once raised by a :class:`~chatd.stomp.FrameReader`, that reader is broken
    for good; the connection should be answered with an ERROR frame and closed.
    """


class LocalProtocolError(StompError):
    """We broke the protocol: a frame that cannot be sent as valid STOMP, or a
    call the conversation's state does not allow (a bug of the caller's)."""
