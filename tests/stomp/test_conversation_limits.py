"""The conversation's bounds on what one client can make the server hold, synchronously:
the small frame size until the login is accepted, subscriptions (how many, and each
destination once), and transactions (bytes held, and how long one may stay open, on a fake
clock passed in)."""

from __future__ import annotations

from chatd.stomp import (
    ConnectRequest,
    Conversation,
    Send,
    Subscribe,
    Unsubscribe,
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


# --- subscriptions ---------------------------------------------------------------------------


def sub(dest: str, sub_id: str, receipt: str | None = None) -> bytes:
    headers = [("destination", dest), ("id", sub_id)]
    if receipt is not None:
        headers.append(("receipt", receipt))
    return wire("SUBSCRIBE", *headers)


def test_the_same_destination_twice_is_refused_whatever_the_id() -> None:
    conv = connected()
    ok(conv, sub("/topic/a", "s1"))
    error = refused(conv, sub("/topic/a", "s2", receipt="r"))
    assert (error.message, error.detail, error.headers) == (
        "Duplicate subscription",
        "/topic/a is already subscribed on this connection (id 's1')",
        (("receipt-id", "r"),),
    )


def test_a_destination_is_free_again_after_unsubscribe_or_forget() -> None:
    conv = connected()
    ok(conv, sub("/topic/a", "s1") + sub("/topic/b", "s2"))
    [unsub] = ok(conv, wire("UNSUBSCRIBE", ("id", "s1")))
    assert isinstance(unsub, Unsubscribe)
    conv.forget_subscription("s2")  # the server ended it (the user left the room)
    events = ok(conv, sub("/topic/a", "s3") + sub("/topic/b", "s1"))
    assert [(e.id, e.destination) for e in events if isinstance(e, Subscribe)] == [
        ("s3", "/topic/a"),
        ("s1", "/topic/b"),
    ]


def test_subscriptions_per_connection_are_bounded() -> None:
    conv = connected(max_subscriptions=3)
    assert len(ok(conv, b"".join(sub(f"/q/{i}", f"s{i}") for i in range(3)))) == 3
    error = refused(conv, sub("/q/3", "s3", receipt="r"))
    assert (error.message, error.detail, error.headers) == (
        "Too many subscriptions",
        "reached maximum (3) of subscriptions per connection",
        (("receipt-id", "r"),),
    )


def test_an_unsubscribe_makes_room_under_the_bound() -> None:
    conv = connected(max_subscriptions=2)
    ok(conv, sub("/q/0", "a") + sub("/q/1", "b") + wire("UNSUBSCRIBE", ("id", "a")))
    [event] = ok(conv, sub("/q/2", "c"))
    assert isinstance(event, Subscribe)
    assert refused(conv, sub("/q/3", "d")).message == "Too many subscriptions"


def test_the_bound_can_be_raised_after_connect() -> None:
    """The session raises it at CONNECT for a user in many rooms."""
    conv = connected(max_subscriptions=1)
    conv.max_subscriptions = 3
    assert len(ok(conv, sub("/q/0", "a") + sub("/q/1", "b") + sub("/q/2", "c"))) == 3
