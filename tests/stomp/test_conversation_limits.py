"""The conversation's bounds on what one client can make the server hold, synchronously:
the small frame size until the login is accepted, subscriptions (how many, and one live
subscription per destination), and transactions (bytes held, and how long one may stay
open, on a fake clock passed in)."""

from __future__ import annotations

import math

import pytest

from chatd.stomp import (
    ConnectRequest,
    Conversation,
    Receipt,
    RemoteProtocolError,
    Send,
    State,
    Subscribe,
    Unsubscribe,
)

from .test_conversation import (
    connect_frame,
    connected,
    feed,
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


def test_a_second_subscription_to_a_destination_shadows_the_first() -> None:
    conv = connected()
    [first] = ok(conv, sub("/topic/a", "s1"))
    assert isinstance(first, Subscribe) and first.shadows is None
    [second] = ok(conv, sub("/topic/a", "s2", receipt="r"))
    assert isinstance(second, Subscribe)
    assert (second.id, second.shadows, second.receipt) == ("s2", "s1", "r")
    [third] = ok(conv, sub("/topic/a", "s3"))
    assert isinstance(third, Subscribe) and third.shadows == "s2"
    # Another destination is not concerned.
    [other] = ok(conv, sub("/topic/b", "s4"))
    assert isinstance(other, Subscribe) and other.shadows is None


def unsubscribe(conv: Conversation, sub_id: str) -> Unsubscribe:
    [event] = ok(conv, wire("UNSUBSCRIBE", ("id", sub_id)))
    assert isinstance(event, Unsubscribe) and event.id == sub_id
    return event


def test_unsubscribing_the_live_one_resumes_the_next_older() -> None:
    conv = connected()
    ok(conv, sub("/topic/a", "s1") + sub("/topic/a", "s2") + sub("/topic/a", "s3"))
    assert unsubscribe(conv, "s3").resumes == "s2"
    assert unsubscribe(conv, "s2").resumes == "s1"
    assert unsubscribe(conv, "s1").resumes is None
    # The destination is free: a new subscription shadows nothing.
    [event] = ok(conv, sub("/topic/a", "s1"))
    assert isinstance(event, Subscribe) and event.shadows is None


def test_unsubscribing_a_shadowed_one_changes_nothing_live() -> None:
    conv = connected()
    ok(conv, sub("/topic/a", "s1") + sub("/topic/a", "s2") + sub("/topic/a", "s3"))
    assert unsubscribe(conv, "s2").resumes is None  # s3 stays live
    assert unsubscribe(conv, "s3").resumes == "s1"  # s2 is gone: s1 is next
    assert unsubscribe(conv, "s1").resumes is None
    assert refused(conv, wire("UNSUBSCRIBE", ("id", "s2"))).message == "No subscription found"


def test_unsubscribing_the_oldest_keeps_the_newest_live() -> None:
    conv = connected()
    ok(conv, sub("/topic/a", "s1") + sub("/topic/a", "s2"))
    assert unsubscribe(conv, "s1").resumes is None
    assert unsubscribe(conv, "s2").resumes is None
    [event] = ok(conv, sub("/topic/a", "s5"))
    assert isinstance(event, Subscribe) and event.shadows is None


def test_forget_frees_an_id_and_tells_what_resumes() -> None:
    conv = connected()
    ok(conv, sub("/topic/a", "s1") + sub("/topic/a", "s2") + sub("/topic/b", "s3"))
    assert conv.forget_subscription("s2") == "s1"
    assert conv.forget_subscription("s1") is None
    assert conv.forget_subscription("s1") is None  # already forgotten
    conv.forget_subscription("s3")  # the server ended it (the user left the room)
    events = ok(conv, sub("/topic/a", "s2") + sub("/topic/b", "s1"))
    assert [(e.id, e.destination, e.shadows) for e in events if isinstance(e, Subscribe)] == [
        ("s2", "/topic/a", None),
        ("s1", "/topic/b", None),
    ]


def test_an_id_in_use_is_refused_even_for_another_destination() -> None:
    conv = connected()
    ok(conv, sub("/topic/a", "s1") + sub("/topic/a", "s2"))
    error = refused(conv, sub("/topic/b", "s1", receipt="r"))
    assert (error.message, error.headers) == (
        "Duplicated subscription identifier",
        (("receipt-id", "r"),),
    )


def test_shadowed_subscriptions_count_against_the_bound() -> None:
    conv = connected(max_subscriptions=2)
    ok(conv, sub("/topic/a", "s1") + sub("/topic/a", "s2"))
    assert refused(conv, sub("/topic/a", "s3")).message == "Too many subscriptions"


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


# --- transactions: bytes -------------------------------------------------------------------


def tx_send(tx: str, body: bytes, receipt: str | None = None) -> bytes:
    headers = [("destination", "/q"), ("transaction", tx)]
    if receipt is not None:
        headers.append(("receipt", receipt))
    return wire("SEND", *headers, body=body)


def test_a_send_past_the_transaction_bytes_is_refused_when_it_arrives() -> None:
    conv = connected(max_tx_bytes=10_000)
    ok(conv, wire("BEGIN", ("transaction", "t")) + tx_send("t", b"x" * 4000))
    ok(conv, tx_send("t", b"x" * 4000))
    # Refused at once, not at COMMIT: the frame is never held.
    fed = feed(conv, tx_send("t", b"x" * 4000, receipt="third"))
    assert fed.events == [] and fed.error is not None
    assert fed.error.message == "Transaction too large"
    assert fed.error.detail.startswith(
        "the open transactions of a connection may hold at most 10000 bytes; "
        "SEND to transaction 't' would hold "
    )
    assert fed.error.headers == (("receipt-id", "third"),)
    assert conv.state is State.ERROR


def test_the_bound_is_across_all_transactions_of_the_connection() -> None:
    conv = connected(max_tx_bytes=10_000)
    ok(conv, wire("BEGIN", ("transaction", "a")) + wire("BEGIN", ("transaction", "b")))
    ok(conv, tx_send("a", b"x" * 4000) + tx_send("b", b"x" * 4000))
    assert refused(conv, tx_send("a", b"x" * 1500)).message == "Transaction too large"


def test_headers_count_too() -> None:
    """A frame of many small headers costs far more memory than its bytes on the wire."""
    conv = connected(max_tx_bytes=10_000)
    headers = [(f"h{i}", "v") for i in range(30)]
    frame = wire("SEND", ("destination", "/q"), ("transaction", "t"), *headers)
    assert len(frame) < 400
    ok(conv, wire("BEGIN", ("transaction", "t")) + frame)
    assert refused(conv, frame).message == "Transaction too large"


@pytest.mark.parametrize("end", ["COMMIT", "ABORT"])
def test_commit_and_abort_give_the_bytes_back(end: str) -> None:
    conv = connected(max_tx_bytes=10_000)
    for _ in range(5):  # 5 x 6000 bytes through a bound of 10000
        ok(conv, wire("BEGIN", ("transaction", "t")) + tx_send("t", b"x" * 6000))
        ok(conv, wire(end, ("transaction", "t")))
    assert conv.state is State.CONNECTED


# --- transactions: time, on a fake clock ------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_transaction_open_too_long_is_expired_by_name() -> None:
    clock = FakeClock()
    conv = connected(tx_timeout=30.0, clock=clock)
    assert conv.transaction_deadline == math.inf
    assert conv.expired() is None
    ok(conv, wire("BEGIN", ("transaction", "slow")))
    assert conv.transaction_deadline == 1030.0
    clock.now = 1029.999
    assert conv.expired() is None
    clock.now = 1030.0
    error = conv.expired()
    assert isinstance(error, RemoteProtocolError)
    assert (error.message, error.detail) == (
        "Transaction timed out",
        "transaction 'slow' was open longer than 30 seconds",
    )


def test_the_deadline_is_the_oldest_open_transactions() -> None:
    clock = FakeClock()
    conv = connected(tx_timeout=30.0, clock=clock)
    ok(conv, wire("BEGIN", ("transaction", "a")))
    clock.now += 10
    ok(conv, wire("BEGIN", ("transaction", "b")))
    assert conv.transaction_deadline == 1030.0
    ok(conv, wire("COMMIT", ("transaction", "a")))
    assert conv.transaction_deadline == 1040.0
    clock.now = 1035.0
    assert conv.expired() is None
    ok(conv, wire("ABORT", ("transaction", "b")))
    assert conv.transaction_deadline == math.inf


@pytest.mark.parametrize(
    "late",
    [
        wire("SEND", ("destination", "/q"), ("transaction", "t"), ("receipt", "late")),
        wire("ACK", ("id", "m"), ("transaction", "t"), ("receipt", "late")),
        wire("COMMIT", ("transaction", "t"), ("receipt", "late")),
    ],
    ids=["send", "ack", "commit"],
)
def test_a_late_frame_of_an_expired_transaction_is_refused(late: bytes) -> None:
    """However late the caller's timer is, nothing of an expired transaction is acted on."""
    clock = FakeClock()
    conv = connected(tx_timeout=5.0, clock=clock)
    ok(conv, wire("BEGIN", ("transaction", "t")) + tx_send("t", b"held"))
    clock.now += 5.0
    fed = feed(conv, late)
    assert fed.events == [] and fed.error is not None
    assert (fed.error.message, fed.error.detail, fed.error.headers) == (
        "Transaction timed out",
        "transaction 't' was open longer than 5 seconds",
        (("receipt-id", "late"),),
    )


def test_a_transaction_committed_in_time_is_released() -> None:
    clock = FakeClock()
    conv = connected(tx_timeout=5.0, clock=clock)
    ok(conv, wire("BEGIN", ("transaction", "t")) + tx_send("t", b"held"))
    clock.now += 4.9
    [send, done] = ok(conv, wire("COMMIT", ("transaction", "t"), ("receipt", "c")))
    assert isinstance(send, Send) and send.frame.body == b"held"
    assert done == Receipt("c", "c")
