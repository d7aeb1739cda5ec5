"""The STOMP conversation state machine, synchronously and without a socket: every row of
the transition table, every refusal with its exact ERROR, transactions, receipts, the
states that read nothing, and input fed whole, a byte at a time and in random pieces.

The expected outcomes are written out here, not read from `TRANSITIONS`, so a wrong row in
the table fails a test."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from chatd.stomp import (
    CLOSED,
    COMMANDS,
    NEED_DATA,
    SERVER_NAME,
    TRANSITIONS,
    V10,
    V11,
    V12,
    Ack,
    ConnectRequest,
    Conversation,
    ConversationEvent,
    Disconnect,
    Frame,
    FrameReader,
    FrameWriter,
    LocalProtocolError,
    Receipt,
    RemoteProtocolError,
    Send,
    State,
    StompError,
    Subscribe,
    Unsubscribe,
)
from chatd.stomp._conversation import (
    negotiate_heart_beat,
    negotiate_version,
    parse_heart_beat,
)

from ._helpers import bytewise, random_splits, whole

Splitter = Callable[[bytes], list[bytes]]
SPLITTERS: dict[str, Splitter] = {
    "whole": whole,
    "bytewise": bytewise,
    "random": lambda data: random_splits(data, seed=7),
}

CONNECT = b"CONNECT\naccept-version:1.0,1.1,1.2\nhost:/\nlogin:u\npasscode:p\n\n\0"


def wire(command: str, *headers: tuple[str, str], body: bytes = b"", version: str = V12) -> bytes:
    """A client frame's bytes, as a client speaking `version` writes it."""
    return FrameWriter(version).send(Frame(command, headers, body))


def connect_frame(**headers: str) -> bytes:
    return wire("CONNECT", *((k.replace("_", "-"), v) for k, v in headers.items()))


@dataclass
class Fed:
    events: list[ConversationEvent]
    error: RemoteProtocolError | None


def feed(conv: Conversation, data: bytes, split: Splitter = whole) -> Fed:
    """Feed `data` in pieces, taking every event after each piece, as the session does."""
    events: list[ConversationEvent] = []
    try:
        for chunk in split(data):
            conv.receive_data(chunk)
            # As the session does: no reading while the login is checked (it decides at
            # once) nor after DISCONNECT.
            while conv.state in (State.AWAIT_CONNECT, State.CONNECTED):
                event = conv.next_event()
                if event is NEED_DATA:
                    break
                assert event is not CLOSED
                events.append(event)
    except RemoteProtocolError as exc:
        return Fed(events, exc)
    return Fed(events, None)


def ok(conv: Conversation, data: bytes, split: Splitter = whole) -> list[ConversationEvent]:
    fed = feed(conv, data, split)
    assert fed.error is None, fed.error
    return fed.events


def refused(conv: Conversation, data: bytes) -> RemoteProtocolError:
    fed = feed(conv, data)
    assert fed.error is not None, fed.events
    assert conv.state is State.ERROR
    return fed.error


def connected(version: str = V12, **limits: Any) -> Conversation:
    conv = Conversation(**limits)
    [request] = ok(conv, connect_frame(accept_version=version))
    assert isinstance(request, ConnectRequest)
    conv.accept("session-1")
    assert conv.state is State.CONNECTED and conv.version == version
    return conv


def parse(data: bytes) -> Frame:
    reader = FrameReader()
    reader.receive_data(data)
    frame = reader.next_event()
    assert isinstance(frame, Frame)
    assert reader.next_event() is NEED_DATA, "one frame exactly"
    return frame


# --- the table: every (state, command), outcomes written out independently -------------

SERVER_ONLY = ("CONNECTED", "MESSAGE", "RECEIPT", "ERROR")
NOT_CONNECTED = ("Illegal command", "You must log in using CONNECT first")
BAD_COMMAND = ("Bad command", 'Could not interpret command "{command}"')
TWICE = ("Already connected", "CONNECT was sent twice")

# The smallest frame each command accepts once connected (with a receipt, so frames the
# conversation answers alone show up as a Receipt event).
MINIMAL: dict[str, tuple[tuple[str, str], ...]] = {
    "CONNECT": (("accept-version", "1.2"),),
    "STOMP": (("accept-version", "1.2"),),
    "SEND": (("destination", "/queue/a"),),
    "SUBSCRIBE": (("destination", "/queue/a"), ("id", "s")),
    "UNSUBSCRIBE": (("id", "old"),),
    "ACK": (("id", "m1"),),
    "NACK": (("id", "m1"),),
    "BEGIN": (("transaction", "new"),),
    "COMMIT": (("transaction", "open"),),
    "ABORT": (("transaction", "open"),),
    "DISCONNECT": (),
    **dict.fromkeys(SERVER_ONLY, ()),
}

# (state, command) -> (event type, state after) or (ERROR message, detail)
Outcome = tuple[type, State] | tuple[str, str]
EXPECTED: dict[tuple[State, str], Outcome] = {
    **{(State.AWAIT_CONNECT, c): NOT_CONNECTED for c in COMMANDS},
    (State.AWAIT_CONNECT, "CONNECT"): (ConnectRequest, State.LOGIN),
    (State.AWAIT_CONNECT, "STOMP"): (ConnectRequest, State.LOGIN),
    (State.CONNECTED, "CONNECT"): TWICE,
    (State.CONNECTED, "STOMP"): TWICE,
    (State.CONNECTED, "SEND"): (Send, State.CONNECTED),
    (State.CONNECTED, "SUBSCRIBE"): (Subscribe, State.CONNECTED),
    (State.CONNECTED, "UNSUBSCRIBE"): (Unsubscribe, State.CONNECTED),
    (State.CONNECTED, "ACK"): (Ack, State.CONNECTED),
    (State.CONNECTED, "NACK"): (Ack, State.CONNECTED),
    (State.CONNECTED, "BEGIN"): (Receipt, State.CONNECTED),
    (State.CONNECTED, "COMMIT"): (Receipt, State.CONNECTED),
    (State.CONNECTED, "ABORT"): (Receipt, State.CONNECTED),
    (State.CONNECTED, "DISCONNECT"): (Disconnect, State.DISCONNECTED),
    **{(State.CONNECTED, c): BAD_COMMAND for c in SERVER_ONLY},
}


def test_the_table_has_a_row_for_every_command_in_every_reading_state() -> None:
    assert set(TRANSITIONS) == {State.AWAIT_CONNECT, State.CONNECTED}
    for rows in TRANSITIONS.values():
        assert set(rows) == COMMANDS
    assert {(s, c) for s, rows in TRANSITIONS.items() for c in rows} == set(EXPECTED)


def in_state(state: State) -> Conversation:
    if state is State.AWAIT_CONNECT:
        return Conversation()
    conv = connected()
    # What the minimal COMMIT, ABORT and UNSUBSCRIBE refer to.
    ok(conv, wire("BEGIN", ("transaction", "open")))
    ok(conv, wire("SUBSCRIBE", ("destination", "/queue/b"), ("id", "old")))
    return conv


@pytest.mark.parametrize(("state", "command"), sorted(EXPECTED, key=lambda k: (k[0].value, k[1])))
def test_each_transition(state: State, command: str) -> None:
    conv = in_state(state)
    fed = feed(conv, wire(command, *MINIMAL[command], ("receipt", "r")))
    expected = EXPECTED[state, command]
    if isinstance(expected[0], str):
        message, detail = expected
        assert fed.events == []
        assert fed.error is not None
        assert (fed.error.message, fed.error.detail) == (message, detail.format(command=command))
        assert fed.error.headers == (("receipt-id", "r"),)
        assert conv.state is State.ERROR
    else:
        kind, after = expected
        assert fed.error is None, fed.error
        assert [type(e) for e in fed.events] == [kind]
        assert conv.state is after
        event = fed.events[0]
        assert event.error_receipt_id == "r"
        if not isinstance(event, ConnectRequest):
            assert event.receipt == "r"


# --- refusals: every check, its exact ERROR, and the receipt-id it echoes --------------

H = tuple[tuple[str, str], ...]


@dataclass
class Bad:
    name: str
    frames: Sequence[tuple[str, H]]  # all accepted but the last, which is refused
    message: str
    detail: str
    version: str = V12
    extra: H = ()  # ERROR headers besides receipt-id
    limits: dict[str, int] | None = None


# fmt: off
BAD = [
    # SUBSCRIBE
    Bad("subscribe-no-destination", [("SUBSCRIBE", (("id", "s"),))], "Missing destination",
        "\"SUBSCRIBE\" must include a 'destination' header"),
    Bad("subscribe-empty-destination", [("SUBSCRIBE", (("destination", ""), ("id", "s")))],
        "Invalid destination", "Destination cannot be blank"),
    Bad("subscribe-no-id-1.2", [("SUBSCRIBE", (("destination", "/q"),))], "Missing header",
        '"SUBSCRIBE" must include the "id" header'),
    Bad("subscribe-no-id-1.1", [("SUBSCRIBE", (("destination", "/q"),))], "Missing header",
        '"SUBSCRIBE" must include the "id" header', version=V11),
    Bad("subscribe-duplicate-id",
        [("SUBSCRIBE", (("destination", "/a"), ("id", "d"))),
         ("SUBSCRIBE", (("destination", "/b"), ("id", "d")))],
        "Duplicated subscription identifier", "A subscription identified by 'd' already exists."),
    Bad("subscribe-1.0-destination-is-the-id",
        [("SUBSCRIBE", (("destination", "/a"),)), ("SUBSCRIBE", (("destination", "/a"),))],
        "Duplicated subscription identifier", "A subscription identified by '/a' already exists.",
        version=V10),
    Bad("subscribe-duplicate-before-ack-mode",
        [("SUBSCRIBE", (("destination", "/a"), ("id", "d"))),
         ("SUBSCRIBE", (("destination", "/a"), ("id", "d"), ("ack", "never")))],
        "Duplicated subscription identifier", "A subscription identified by 'd' already exists."),
    Bad("subscribe-bad-ack", [("SUBSCRIBE", (("destination", "/a"), ("id", "s"), ("ack", "x")))],
        "Bad ack mode", "ack must be auto, client or client-individual: 'x'"),
    # UNSUBSCRIBE
    Bad("unsubscribe-no-id-1.2", [("UNSUBSCRIBE", (("destination", "/a"),))],
        "Missing destination or id", "UNSUBSCRIBE must include a 'destination' or 'id' header"),
    Bad("unsubscribe-no-id-1.0", [("UNSUBSCRIBE", ())], "Missing destination or id",
        "UNSUBSCRIBE must include a 'destination' or 'id' header", version=V10),
    Bad("unsubscribe-unknown", [("UNSUBSCRIBE", (("id", "nope"),))], "No subscription found",
        'UNSUBSCRIBE must refer to an existing subscription.\nSubscription to "nope" not found.'),
    Bad("unsubscribe-twice",
        [("SUBSCRIBE", (("destination", "/a"), ("id", "s"))), ("UNSUBSCRIBE", (("id", "s"),)),
         ("UNSUBSCRIBE", (("id", "s"),))],
        "No subscription found",
        'UNSUBSCRIBE must refer to an existing subscription.\nSubscription to "s" not found.'),
    # SEND
    Bad("send-no-destination", [("SEND", ())], "Missing destination",
        "\"SEND\" must include a 'destination' header"),
    Bad("send-unknown-transaction", [("SEND", (("destination", "/a"), ("transaction", "t")))],
        "Bad transaction", 'Invalid transaction identifier: "t"'),
    Bad("send-empty-transaction", [("SEND", (("destination", "/a"), ("transaction", "")))],
        "Bad transaction", 'Invalid transaction identifier: ""'),
    Bad("transaction-too-large",
        [("BEGIN", (("transaction", "t"),))]
        + [("SEND", (("destination", "/a"), ("transaction", "t")))] * 3,
        "Transaction too large", "Too many actions in transaction (limit 2)",
        limits={"max_tx_frames": 2}),
    # ACK / NACK: `id` in 1.2, `message-id` before
    Bad("ack-no-id-1.2", [("ACK", (("message-id", "m"),))], "Missing header",
        '"ACK" must include the "id" header'),
    Bad("nack-no-id-1.2", [("NACK", ())], "Missing header", '"NACK" must include the "id" header'),
    Bad("ack-no-message-id-1.1", [("ACK", (("id", "m"),))], "Missing header",
        '"ACK" must include the "message-id" header', version=V11),
    Bad("nack-no-message-id-1.0", [("NACK", ())], "Missing header",
        '"NACK" must include the "message-id" header', version=V10),
    Bad("ack-unknown-transaction", [("ACK", (("id", "m"), ("transaction", "t")))],
        "Bad transaction", 'Invalid transaction identifier: "t"'),
    # BEGIN / COMMIT / ABORT
    Bad("begin-no-transaction", [("BEGIN", ())], "Missing transaction",
        "\"BEGIN\" must include a 'transaction' header"),
    Bad("begin-empty-transaction", [("BEGIN", (("transaction", ""),))], "Missing transaction",
        "\"BEGIN\" must include a 'transaction' header"),
    Bad("begin-twice", [("BEGIN", (("transaction", "t"),))] * 2, "Bad transaction",
        "transaction 't' is already open"),
    Bad("too-many-transactions",
        [("BEGIN", (("transaction", f"t{i}"),)) for i in range(3)],
        "Transaction limit exceeded", "Too many concurrent transactions (limit 2)",
        limits={"max_transactions": 2}),
    Bad("commit-no-transaction", [("COMMIT", ())], "Missing transaction",
        "\"COMMIT\" must include a 'transaction' header"),
    Bad("abort-no-transaction", [("ABORT", ())], "Missing transaction",
        "\"ABORT\" must include a 'transaction' header"),
    Bad("commit-unknown", [("COMMIT", (("transaction", "t"),))], "Bad transaction",
        'Invalid transaction identifier: "t"'),
    Bad("abort-unknown", [("ABORT", (("transaction", "t"),))], "Bad transaction",
        'Invalid transaction identifier: "t"'),
    Bad("commit-after-abort",
        [("BEGIN", (("transaction", "t"),)), ("ABORT", (("transaction", "t"),)),
         ("COMMIT", (("transaction", "t"),))],
        "Bad transaction", 'Invalid transaction identifier: "t"'),
    Bad("commit-twice",
        [("BEGIN", (("transaction", "t"),)), ("COMMIT", (("transaction", "t"),)),
         ("COMMIT", (("transaction", "t"),))],
        "Bad transaction", 'Invalid transaction identifier: "t"'),
]
# fmt: on


@pytest.mark.parametrize("bad", BAD, ids=lambda b: b.name)
@pytest.mark.parametrize("receipt", ["bad", None])
def test_each_refusal(bad: Bad, receipt: str | None) -> None:
    conv = connected(bad.version, **(bad.limits or {}))
    *before, (command, headers) = bad.frames
    for cmd, hs in before:
        ok(conv, wire(cmd, *hs, version=bad.version))
    with_receipt = (*headers, ("receipt", receipt)) if receipt is not None else headers
    error = refused(conv, wire(command, *with_receipt, version=bad.version))
    assert (error.message, error.detail) == (bad.message, bad.detail)
    echo = (("receipt-id", receipt),) if receipt is not None else ()
    assert error.headers == (*bad.extra, *echo)


def test_a_frame_taken_changes_nothing_before_the_refused_one() -> None:
    """The frames of a refused batch before the bad one came out as events."""
    conv = connected()
    fed = feed(conv, wire("BEGIN", ("transaction", "t"), ("receipt", "1")) + wire("BEGIN"))
    assert fed.events == [Receipt("1", "1")]
    assert fed.error is not None and fed.error.message == "Missing transaction"


# --- CONNECT: versions, virtual hosts, heart-beats ----------------------------------------


@pytest.mark.parametrize(
    ("offered", "agreed"),
    [
        (None, "1.0"),
        ("", "1.0"),
        ("1.0", "1.0"),
        ("1.1", "1.1"),
        ("1.2", "1.2"),
        ("1.0,1.1", "1.1"),
        ("1.0,1.1,1.2", "1.2"),
        ("1.2,1.0", "1.2"),
        ("1.1, 1.2", "1.2"),
        ("1.1,2.0", "1.1"),
        ("0.9,1.0", "1.0"),
        ("2.0,0.9", None),
        ("1.3", None),
        ("1", None),
    ],
)
def test_version_negotiation(offered: str | None, agreed: str | None) -> None:
    assert negotiate_version(offered) == agreed
    conv = Conversation()
    data = connect_frame() if offered is None else connect_frame(accept_version=offered)
    fed = feed(conv, data)
    if agreed is None:
        assert fed.error is not None
        assert (fed.error.message, fed.error.detail) == (
            "Version mismatch",
            "Supported versions are 1.0,1.1,1.2",
        )
        assert fed.error.headers == (("version", "1.0,1.1,1.2"),)
    else:
        assert fed.error is None
        [request] = fed.events
        assert isinstance(request, ConnectRequest) and request.version == agreed
        assert conv.version == agreed


@pytest.mark.parametrize(
    ("client", "floor", "answer"),
    [
        (None, 1000, (0, 0)),
        ("0,0", 1000, (0, 0)),
        ("4000,4000", 1000, (4000, 4000)),
        ("100,100", 1000, (1000, 1000)),
        ("0,5000", 1000, (5000, 0)),
        ("3000,0", 1000, (0, 3000)),
        ("1000,2500", 1000, (2500, 1000)),
        ("1, 1", 1000, (1000, 1000)),
        (" 7 ,8 ", 1, (8, 7)),
        ("100,100", 100, (100, 100)),
        ("50,4000", 100, (4000, 100)),
        ("0,10", 100, (100, 0)),
        ("000000000000000000001,0", 1, (0, 1)),
    ],
)
def test_heart_beat_negotiation(client: str | None, floor: int, answer: tuple[int, int]) -> None:
    assert negotiate_heart_beat(parse_heart_beat(client), floor) == answer
    conv = Conversation(heartbeat_min_ms=floor)
    headers = {} if client is None else {"heart_beat": client}
    [request] = ok(conv, connect_frame(accept_version="1.2", **headers))
    assert isinstance(request, ConnectRequest) and request.heart_beat == answer
    sx, sy = answer
    assert parse(conv.accept("s")).get("heart-beat") == f"{sx},{sy}"


@pytest.mark.parametrize(
    "value",
    ["x,y", "1000", "1000,2000,3000", "-1,0", "", ",", "1,", "²,0", "１,１", "1" * 19 + ",0"],
)
def test_bad_heart_beat(value: str) -> None:
    conv = Conversation()
    error = refused(conv, connect_frame(heart_beat=value, receipt="hb"))
    assert (error.message, error.detail) == (
        "Invalid heart-beat header",
        f"heart-beat must be 'cx,cy', got {value!r}",
    )
    assert error.headers == (("receipt-id", "hb"),)


@pytest.mark.parametrize(
    ("vhosts", "host", "allowed"),
    [
        ((), "anything", True),
        (("/", "chat"), "/", True),
        (("/", "chat"), "chat", True),
        (("/", "chat"), None, True),
        (("/", "chat"), "elsewhere", False),
    ],
)
def test_virtual_hosts(vhosts: tuple[str, ...], host: str | None, allowed: bool) -> None:
    conv = Conversation(vhosts=vhosts)
    headers = {"accept_version": "1.2"} | ({} if host is None else {"host": host})
    fed = feed(conv, connect_frame(**headers))
    if allowed:
        assert fed.error is None and conv.state is State.LOGIN
        # Named in RabbitMQ's texts about exchanges ("in vhost '/'").
        assert conv.host == (host or "/")
    else:
        assert fed.error is not None
        assert (fed.error.message, fed.error.detail) == (
            "Bad CONNECT",
            f"Virtual host '{host}' access denied",
        )


def test_connect_checks_in_order_version_host_heart_beat() -> None:
    def first_error(**headers: str) -> str:
        error = refused(Conversation(vhosts=["/"]), connect_frame(**headers))
        return error.message

    bad = {"accept_version": "9.9", "host": "x", "heart_beat": "x"}
    assert first_error(**bad) == "Version mismatch"
    assert first_error(**(bad | {"accept_version": "1.2"})) == "Bad CONNECT"
    assert first_error(**(bad | {"accept_version": "1.2", "host": "/"})) == (
        "Invalid heart-beat header"
    )


def test_connect_request_carries_the_login() -> None:
    conv = Conversation()
    [request] = ok(conv, CONNECT.replace(b"\n\n", b"\nreceipt:c\n\n"))
    assert request == ConnectRequest(V12, (0, 0), "u", "p", "/", "c")
    [request] = ok(Conversation(), wire("STOMP", ("accept-version", "1.1")))
    assert isinstance(request, ConnectRequest)
    assert (request.login, request.passcode, request.host) == ("", "", None)


def test_accept_sends_connected_and_switches_the_version() -> None:
    conv = Conversation(heartbeat_min_ms=1000)
    ok(conv, connect_frame(accept_version="1.1", heart_beat="0,4000"))
    # Waiting for the login: nothing is read until the caller decides.
    assert conv.state is State.LOGIN
    with pytest.raises(LocalProtocolError):
        conv.next_event()
    conv.receive_data(wire("SEND", ("destination", "/a"), version=V11))  # kept for later
    connected_frame = parse(conv.accept("session-xyz"))
    assert connected_frame == Frame(
        "CONNECTED",
        (
            ("version", "1.1"),
            ("heart-beat", "4000,0"),
            ("server", SERVER_NAME),
            ("session", "session-xyz"),
        ),
    )
    assert conv.state is State.CONNECTED
    assert conv.reader.version == conv.writer.version == V11
    send = conv.next_event()
    assert isinstance(send, Send) and send.destination == "/a"
    assert conv.next_event() is NEED_DATA
    # 1.1 defines no \r escape: the reader now speaks 1.1.
    error = refused(conv, b"SUBSCRIBE\ndestination:/a\nid:a\\rb\n\n\0")
    assert error.message == "Invalid header escape"


def test_accept_only_after_a_connect() -> None:
    with pytest.raises(LocalProtocolError):
        Conversation().accept("s")
    conv = connected()
    with pytest.raises(LocalProtocolError):
        conv.accept("again")


def test_stomp_1_0_subscription_ids_default_to_the_destination() -> None:
    conv = connected(V10)
    [sub] = ok(conv, wire("SUBSCRIBE", ("destination", "/a"), version=V10))
    assert isinstance(sub, Subscribe) and (sub.id, sub.ack) == ("/a", "auto")
    [unsub] = ok(conv, wire("UNSUBSCRIBE", ("destination", "/a"), version=V10))
    assert unsub == Unsubscribe("/a", None, None)


def test_events_carry_what_the_caller_needs() -> None:
    conv = connected()
    events = ok(
        conv,
        wire("SEND", ("destination", "/a"), ("x", "1"), body=b"hi")
        + wire("SUBSCRIBE", ("destination", "/b"), ("id", "s"), ("ack", "client"))
        + wire("ACK", ("id", "m"), ("subscription", "s"))
        + wire("NACK", ("id", "n"), ("requeue", "false"), ("receipt", "k")),
    )
    send, sub, ack, nack = events
    assert isinstance(send, Send)
    assert (send.destination, send.transaction, send.frame.body) == ("/a", None, b"hi")
    assert send.frame.get("x") == "1"
    assert isinstance(sub, Subscribe) and (sub.id, sub.destination, sub.ack) == (
        "s",
        "/b",
        "client",
    )
    assert isinstance(ack, Ack) and (ack.id, ack.subscription, ack.ack, ack.requeue) == (
        "m",
        "s",
        True,
        True,
    )
    assert isinstance(nack, Ack) and (nack.ack, nack.requeue, nack.receipt) == (False, False, "k")
    ack_11 = connected(V11)
    [event] = ok(ack_11, wire("ACK", ("message-id", "m"), ("id", "other"), version=V11))
    assert isinstance(event, Ack) and event.id == "m"


@pytest.mark.parametrize(
    ("requeue", "expected"),
    [
        (None, True),
        ("true", True),
        ("false", False),
        ("False", False),  # RabbitMQ reads any case
        ("FALSE", False),
        ("no", True),
        ("", True),
    ],
)
def test_nack_requeue_false_in_any_case(requeue: str | None, expected: bool) -> None:
    conv = connected()
    headers = [("id", "n")] + ([] if requeue is None else [("requeue", requeue)])
    [nack] = ok(conv, wire("NACK", *headers))
    assert isinstance(nack, Ack) and nack.requeue is expected


# --- transactions -------------------------------------------------------------------------


LENGTH_1 = ("content-length", "1")


def test_frames_in_a_transaction_wait_for_commit_and_come_out_stripped() -> None:
    conv = connected()
    held = ok(
        conv,
        wire("BEGIN", ("transaction", "t"))
        + wire("SEND", ("destination", "/a"), ("transaction", "t"), ("receipt", "s1"), body=b"1")
        + wire("ACK", ("id", "m"), ("transaction", "t"))
        + wire("SEND", ("destination", "/b"), ("transaction", "t"), body=b"2"),
    )
    # Only the receipt of the held SEND, at once: nothing is acted on yet.
    assert held == [Receipt("s1", "s1")]
    released = ok(conv, wire("COMMIT", ("transaction", "t"), ("receipt", "c")))
    assert released == [
        Send(Frame("SEND", (("destination", "/a"), LENGTH_1), b"1"), "/a", "t", None, "c"),
        Ack(Frame("ACK", (("id", "m"),)), "m", None, True, True, None, "c"),
        Send(Frame("SEND", (("destination", "/b"), LENGTH_1), b"2"), "/b", "t", None, "c"),
        Receipt("c", "c"),
    ]


def test_abort_drops_the_frames_and_frees_the_name() -> None:
    conv = connected()
    begin_send = wire("BEGIN", ("transaction", "t")) + wire(
        "SEND", ("destination", "/a"), ("transaction", "t"), body=b"never"
    )
    assert ok(conv, begin_send) == []
    assert ok(conv, wire("ABORT", ("transaction", "t"), ("receipt", "a"))) == [Receipt("a", "a")]
    assert ok(conv, begin_send) == []
    [send] = ok(conv, wire("COMMIT", ("transaction", "t")))
    assert isinstance(send, Send) and send.frame.body == b"never"


def test_two_transactions_at_once_commit_separately() -> None:
    conv = connected()
    ok(conv, wire("BEGIN", ("transaction", "a")) + wire("BEGIN", ("transaction", "b")))
    for tx, body in (("a", b"a1"), ("b", b"b1"), ("a", b"a2")):
        ok(conv, wire("SEND", ("destination", "/q"), ("transaction", tx), body=body))
    b = ok(conv, wire("COMMIT", ("transaction", "b")))
    a = ok(conv, wire("COMMIT", ("transaction", "a")))
    assert [e.frame.body for e in b if isinstance(e, Send)] == [b"b1"]
    assert [e.frame.body for e in a if isinstance(e, Send)] == [b"a1", b"a2"]
    assert all(isinstance(e, Send) and e.receipt is None for e in a + b)


def test_a_held_frame_is_checked_when_its_commit_releases_it() -> None:
    """As if sent at COMMIT: a bad frame fails the COMMIT, whose receipt the ERROR echoes."""
    conv = connected()
    ok(
        conv,
        wire("BEGIN", ("transaction", "t"))
        + wire("SEND", ("destination", "/ok"), ("transaction", "t"))
        + wire("SEND", ("transaction", "t"), ("receipt", "own")),
    )
    fed = feed(conv, wire("COMMIT", ("transaction", "t"), ("receipt", "c")))
    assert [type(e) for e in fed.events] == [Send]
    assert fed.error is not None
    assert (fed.error.message, fed.error.headers) == ("Missing destination", (("receipt-id", "c"),))
    assert conv.state is State.ERROR


def test_a_committed_frame_refused_by_the_caller_blames_the_commit() -> None:
    conv = connected()
    ok(conv, wire("BEGIN", ("transaction", "t")))
    ok(conv, wire("SEND", ("destination", "/a"), ("transaction", "t"), ("receipt", "own")))
    [send, done] = ok(conv, wire("COMMIT", ("transaction", "t"), ("receipt", "c")))
    assert isinstance(send, Send) and (send.receipt, send.error_receipt_id) == (None, "c")
    assert done == Receipt("c", "c")


def test_commit_without_receipt_releases_only_the_frames() -> None:
    conv = connected()
    ok(conv, wire("BEGIN", ("transaction", "t")))
    assert ok(conv, wire("COMMIT", ("transaction", "t"))) == []
    ok(conv, wire("BEGIN", ("transaction", "t")))
    ok(conv, wire("ACK", ("id", "1"), ("transaction", "t")))
    [ack] = ok(conv, wire("COMMIT", ("transaction", "t")))
    assert isinstance(ack, Ack)


def test_frames_after_a_commit_come_after_its_frames() -> None:
    conv = connected()
    ok(conv, wire("BEGIN", ("transaction", "t")))
    ok(conv, wire("SEND", ("destination", "/in"), ("transaction", "t")))
    events = ok(
        conv,
        wire("COMMIT", ("transaction", "t"), ("receipt", "c"))
        + wire("SEND", ("destination", "/after")),
        bytewise,
    )
    assert [(type(e).__name__, getattr(e, "destination", None)) for e in events] == [
        ("Send", "/in"),
        ("Receipt", None),
        ("Send", "/after"),
    ]


# --- receipts and ERROR frames -------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "value", "echoed"),
    [(V12, "a\rb", True), (V11, "a\rb", False), (V10, "a\rb", False), (V10, "plain", True)],
)
def test_receipt(version: str, value: str, echoed: bool) -> None:
    conv = connected(version)
    if echoed:
        assert parse(conv.receipt(value)) == Frame("RECEIPT", (("receipt-id", value),))
        assert conv.state is State.CONNECTED
        return
    with pytest.raises(RemoteProtocolError) as caught:
        conv.receipt(value)
    assert (caught.value.message, caught.value.detail) == (
        "Bad receipt",
        f"the receipt header cannot be echoed in STOMP {version}",
    )
    assert conv.state is State.ERROR
    # The ERROR still goes out, without the value it cannot carry.
    detail = f"the receipt header cannot be echoed in STOMP {version}".encode()
    assert parse(conv.send_error(caught.value)) == Frame(
        "ERROR", (("message", "Bad receipt"), ("content-length", str(len(detail)))), detail
    )


def test_send_error_headers_body_and_receipt_id() -> None:
    conv = Conversation()
    error = RemoteProtocolError("Version mismatch", "detail", (("version", "1.0,1.1,1.2"),))
    assert parse(conv.send_error(error, "r")) == Frame(
        "ERROR",
        (
            ("message", "Version mismatch"),
            ("version", "1.0,1.1,1.2"),
            ("receipt-id", "r"),
            ("content-type", "text/plain"),
            ("content-length", "6"),
        ),
        b"detail",
    )
    assert conv.state is State.ERROR
    with pytest.raises(LocalProtocolError):
        conv.send_error(error)


def test_send_error_prefers_the_errors_own_receipt_id_and_may_have_no_body() -> None:
    conv = connected()
    error = RemoteProtocolError("Bad receipt", "", (("receipt-id", "own"),))
    assert parse(conv.send_error(error, "other")) == Frame(
        "ERROR", (("message", "Bad receipt"), ("receipt-id", "own"))
    )
    assert parse(Conversation().send_error(StompError("Slow consumer", ""))) == Frame(
        "ERROR", (("message", "Slow consumer"),)
    )


# --- the states that read nothing ---------------------------------------------------------


def test_after_an_error_nothing_more() -> None:
    conv = connected()
    refused(conv, wire("MESSAGE"))
    for call in (
        conv.next_event,
        lambda: conv.receive_data(wire("SEND", ("destination", "/a"))),
        lambda: conv.receipt("r"),
        lambda: conv.accept("s"),
    ):
        with pytest.raises(LocalProtocolError):
            call()
    conv.send_error(StompError("Bad command", "MESSAGE is not a client frame"))
    with pytest.raises(LocalProtocolError):
        conv.send_error(StompError("again", "again"))


def test_a_codec_error_is_the_peers_fault_with_no_receipt_id() -> None:
    conv = connected()
    fed = feed(conv, b"SEND\ndestination:/a\nreceipt:r\ncontent-length:1\n\nab\0")
    assert fed.error is not None
    assert (fed.error.message, fed.error.headers) == ("Content-length mismatch", ())
    assert conv.state is State.ERROR


def test_disconnect_ends_the_reading_but_answers_its_receipt() -> None:
    conv = connected()
    [event] = ok(conv, wire("DISCONNECT", ("receipt", "bye")) + wire("SEND", ("destination", "/")))
    assert event == Disconnect("bye", "bye")
    assert conv.state is State.DISCONNECTED
    assert parse(conv.receipt("bye")).get("receipt-id") == "bye"
    with pytest.raises(LocalProtocolError):
        conv.next_event()


def test_end_of_stream() -> None:
    conv = connected()
    conv.receive_data(b"\n\n")
    conv.receive_data(b"")
    assert conv.next_event() is CLOSED
    assert conv.state is State.CLOSED
    assert conv.next_event() is CLOSED
    with pytest.raises(LocalProtocolError):
        conv.receive_data(b"x")


def test_end_of_stream_mid_frame_is_an_error() -> None:
    conv = Conversation()
    conv.receive_data(b"CONNECT\naccept")
    conv.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="Unexpected EOF"):
        conv.next_event()
    assert conv.state is State.ERROR


def test_forgotten_subscription_is_free_again() -> None:
    conv = connected()
    ok(conv, wire("SUBSCRIBE", ("destination", "/a"), ("id", "s")))
    conv.forget_subscription("s")
    [again] = ok(conv, wire("SUBSCRIBE", ("destination", "/b"), ("id", "s")))
    assert isinstance(again, Subscribe)
    conv.forget_subscription("s")
    error = refused(conv, wire("UNSUBSCRIBE", ("id", "s")))
    assert error.message == "No subscription found"


# --- whole, byte by byte, in pieces: the same conversation ---------------------------------

SCRIPT = (
    b"\n"  # a heart-beat before CONNECT
    + CONNECT.replace(b"\n\n", b"\nheart-beat:0,0\n\n")
)
AFTER_CONNECT = (
    b"\r\n\n"
    + wire("SUBSCRIBE", ("destination", "/a"), ("id", "s"), ("receipt", "1"))
    + wire("SEND", ("destination", "/a"), ("content-type", "text/plain"), body=b"x\0y")
    + b"\n"
    + wire("BEGIN", ("transaction", "t"), ("receipt", "2"))
    + wire("SEND", ("destination", "/a"), ("transaction", "t"), body=b"held")
    + wire("NACK", ("id", "m"), ("transaction", "t"), ("receipt", "3"))
    + wire("COMMIT", ("transaction", "t"), ("receipt", "4"))
    + wire("UNSUBSCRIBE", ("id", "s"))
    + wire("DISCONNECT", ("receipt", "5"))
)


@pytest.mark.parametrize("split", list(SPLITTERS.values()), ids=list(SPLITTERS))
def test_split_anywhere_the_same_events(split: Splitter) -> None:
    conv = Conversation()
    [request] = ok(conv, SCRIPT, split)
    assert isinstance(request, ConnectRequest)
    conv.accept("s")
    events = ok(conv, AFTER_CONNECT, split)
    assert [(type(e).__name__, e.receipt) for e in events] == [
        ("Subscribe", "1"),
        ("Send", None),
        ("Receipt", "2"),
        ("Receipt", "3"),
        ("Send", None),
        ("Ack", None),
        ("Receipt", "4"),
        ("Unsubscribe", None),
        ("Disconnect", "5"),
    ]
    assert isinstance(events[1], Send) and events[1].frame.body == b"x\0y"
    assert conv.state is State.DISCONNECTED


@pytest.mark.parametrize("split", list(SPLITTERS.values()), ids=list(SPLITTERS))
def test_split_anywhere_the_same_refusal(split: Splitter) -> None:
    conv = connected()
    fed = feed(
        conv,
        wire("BEGIN", ("transaction", "t"), ("receipt", "1")) + wire("COMMIT", ("receipt", "2")),
        split,
    )
    assert fed.events == [Receipt("1", "1")]
    assert fed.error is not None
    assert (fed.error.message, fed.error.detail, fed.error.headers) == (
        "Missing transaction",
        "\"COMMIT\" must include a 'transaction' header",
        (("receipt-id", "2"),),
    )
