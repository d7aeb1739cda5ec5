"""The conversation's bounds on what one client can make the server hold, synchronously:
the small frame size until the login is accepted, subscriptions (how many, and each
destination once), and transactions (bytes held, and how long one may stay open, on a fake
clock passed in)."""

from __future__ import annotations

from chatd.stomp import (
    ConnectRequest,
    Conversation,
    Send,
)

from .test_conversation import (
    connect_frame,
    connected,
    ok,
    refused,
    wire,
)

# --- before the login is accepted ----------------------------------------------------------


def test_a_frame_before_login_is_bounded_by_the_connect_limit() -> None:
    conv = Conversation(max_frame_size=65536, max_connect_frame_size=1024)
    # No NUL, no end of headers: refused once past the limit, not held to the full size.
    error = refused(conv, b"CONNECT\nlogin:" + b"x" * 1100)
    assert (error.message, error.detail) == (
        "Frame too large",
        "Frame exceeds the maximum frame size of 1024 bytes",
    )


def test_a_connect_frame_with_a_jwt_passcode_fits_the_default() -> None:
    passcode = "eyJ" + "a" * 2000 + "." + "b" * 1500 + "." + "c" * 342  # a big JWT
    conv = Conversation()
    [request] = ok(conv, connect_frame(accept_version="1.2", login="u", passcode=passcode))
    assert isinstance(request, ConnectRequest) and request.passcode == passcode


def test_after_login_frames_may_be_as_large_as_max_frame_size() -> None:
    conv = connected(max_frame_size=65536, max_connect_frame_size=1024)
    body = b"x" * 60000
    [send] = ok(conv, wire("SEND", ("destination", "/q"), body=body))
    assert isinstance(send, Send) and send.frame.body == body
    error = refused(conv, wire("SEND", ("destination", "/q"), body=b"x" * 66000))
    assert error.message == "Frame too large"


def test_frames_sent_right_behind_the_connect_are_read_with_the_full_limit() -> None:
    """A client may pipeline: what follows CONNECT waits unread until the login is
    accepted, then is read under the full limit."""
    conv = Conversation(max_frame_size=65536, max_connect_frame_size=1024)
    body = b"y" * 5000
    conv.receive_data(
        connect_frame(accept_version="1.2") + wire("SEND", ("destination", "/q"), body=body)
    )
    assert isinstance(conv.next_event(), ConnectRequest)
    conv.accept("s")
    send = conv.next_event()
    assert isinstance(send, Send) and send.frame.body == body


def test_the_connect_limit_never_exceeds_the_frame_limit() -> None:
    conv = Conversation(max_frame_size=512, max_connect_frame_size=8192)
    error = refused(conv, b"CONNECT\nlogin:" + b"x" * 600 + b"\n\n\0")
    assert error.detail == "Frame exceeds the maximum frame size of 512 bytes"
