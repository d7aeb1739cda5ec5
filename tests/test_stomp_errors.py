"""STOMP error paths, over real sockets: the exact ERROR frame a client sees (`message`
header, body, `receipt-id` when the bad frame asked for a receipt), that the connection is
closed after it, and that the server and the other clients carry on."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import trio

import chatd.stomp.session
from chatd.stomp import Frame

from .conftest import Server, StartServer
from .stomp_client import (
    KINDS,
    Kind,
    StompClient,
    assert_carries_on,
    issue_login,
    make_room,
    next_event_of,
    open_stomp,
    room_dest,
    stomp_user,
    user_dest,
)

# Small codec limits so the limit errors are cheap to provoke, yet roomy enough for a
# CONNECT with an issued login (about 300 bytes of passcode).
LIMITS = {"max_frame_bytes": 2048, "max_headers": 8, "max_header_bytes": 1024}

UNKNOWN_ROOM = 987654


@dataclass
class Env:
    server: Server
    room: int  # members 1, 2, 3
    other: int  # member 2 only


@pytest.fixture
async def env(start_server: StartServer) -> Env:
    server = await start_server(stomp=LIMITS)
    room = await make_room(server, [1, 2, 3], name="shared")
    other = await make_room(server, [2], name="not yours")
    return Env(server, room, other)


async def carry_on(env: Env, bystander: StompClient, kind: Kind = "tcp") -> None:
    await assert_carries_on(env.server, env.room, bystander, user_id=2, kind=kind)


# --- before CONNECT -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("command", "headers"),
    [
        ("SEND", {"destination": "/exchange/chat.direct/room.1"}),
        ("SUBSCRIBE", {"destination": "/exchange/chat.direct/room.1", "id": "0"}),
        ("DISCONNECT", {}),
        ("BEGIN", {"transaction": "t"}),
    ],
)
async def test_frame_before_connect(env: Env, kind: Kind, command: str, headers: dict) -> None:
    with trio.fail_after(10):
        async with stomp_user(env.server, 3, rooms=[env.room]) as bystander:
            async with open_stomp(env.server, kind) as c:
                await c.send_frame(command, {**headers, "receipt": "early"})
                await c.expect_error(
                    "Illegal command", "You must log in using CONNECT first", receipt_id="early"
                )
            await carry_on(env, bystander, kind)


async def test_frame_before_connect_without_receipt_has_no_receipt_id(env: Env) -> None:
    with trio.fail_after(10):
        async with open_stomp(env.server) as c:
            await c.send_frame("SUBSCRIBE", {"destination": room_dest(env.room), "id": "0"})
            await c.expect_error(
                "Illegal command", "You must log in using CONNECT first", receipt_id=None
            )


@pytest.mark.parametrize(
    ("data", "message", "body"),
    [
        pytest.param(
            b"FOO\n\n\0",
            "Bad command",
            'Could not interpret command "FOO"',  # RabbitMQ's words
            id="unknown-command",
        ),
        pytest.param(
            b"connect\naccept-version:1.2\n\n\0",
            "Bad command",
            'Could not interpret command "connect"',
            id="lower-case-command",
        ),
        pytest.param(
            b"CONNECT\naccept-version:1.2\nnocolon\n\n\0",
            "Malformed header",
            "Header line without a colon: 'nocolon'",
            id="header-without-colon",
        ),
        pytest.param(
            b"CONNECT\n" + b"".join(b"h%d:v\n" % i for i in range(9)) + b"\n\0",
            "Too many headers",
            "Frame has more than the maximum of 8 headers",
            id="too-many-headers",
        ),
        pytest.param(
            b"CONNECT\nlogin:" + b"x" * 1100 + b"\n\n\0",
            "Header line too long",
            "A header line exceeds the maximum of 1024 bytes",
            id="header-line-too-long",
        ),
        pytest.param(
            b"CONNECT\n" + b"".join(b"h%d:%s\n" % (i, b"x" * 600) for i in range(4)) + b"\n\0",
            "Frame too large",
            "Frame exceeds the maximum frame size of 2048 bytes",
            id="frame-too-large",
        ),
        pytest.param(
            b"SEND\ndestination:/x\ncontent-length:3\n\nabcd\0",
            "Content-length mismatch",
            "Expected a NUL byte after the 3-byte body given by content-length",
            id="content-length-mismatch",
        ),
        pytest.param(
            b"SEND\ndestination:/x\ncontent-length:-1\n\n\0",
            "Invalid content-length",
            "content-length must be a non-negative decimal integer, got '-1'",
            id="negative-content-length",
        ),
        pytest.param(
            b"CONNECT\nlogin:\xff\xfe\n\n\0",
            "Invalid UTF-8",
            r"Header line is not valid UTF-8: 'login:\\xff\\xfe'",
            id="header-not-utf8",
        ),
        pytest.param(
            b"SEND\ndestination:/x\0\n\n\0",
            "Unexpected NUL in headers",
            "NUL byte before the end of the headers (missing blank line before the body?)",
            id="nul-in-headers",
        ),
        pytest.param(
            b"SEND\ndestination:/x\\qy\n\n\0",
            "Invalid header escape",
            r"Undefined escape sequence '\\q' in header '/x\\qy'; STOMP 1.2 only defines "
            r"\n, \c, \\, \r",
            id="bad-escape-before-connect",
        ),
    ],
)
async def test_malformed_input_before_connect(
    env: Env, data: bytes, message: str, body: str
) -> None:
    with trio.fail_after(10):
        async with stomp_user(env.server, 3, rooms=[env.room]) as bystander:
            async with open_stomp(env.server) as c:
                await c.send_raw(data)
                await c.expect_error(message, body)
            await carry_on(env, bystander)


@pytest.mark.parametrize("kind", ["ws", "http"])
async def test_malformed_input_over_websocket(env: Env, kind: Kind) -> None:
    """The same codec errors over WebSocket, sent as one binary message."""
    with trio.fail_after(10):
        async with stomp_user(env.server, 3, rooms=[env.room]) as bystander:
            async with open_stomp(env.server, kind, binary=True) as c:
                await c.send_raw(
                    b"CONNECT\n" + b"".join(b"h%d:v\n" % i for i in range(9)) + b"\n\0"
                )
                await c.expect_error(
                    "Too many headers", "Frame has more than the maximum of 8 headers"
                )
            async with open_stomp(env.server, kind) as c:
                await c.send_raw(b"SEND\ndestination:/x\n\n" + b"y" * 3000 + b"\0")
                await c.expect_error(
                    "Frame too large", "Frame exceeds the maximum frame size of 2048 bytes"
                )
            await carry_on(env, bystander, kind)


@pytest.mark.parametrize("kind", ["ws", "http"])
async def test_websocket_message_far_over_the_limit_is_closed_1009(env: Env, kind: Kind) -> None:
    """Over WebSocket, a message longer than max_frame_bytes + 1024 is refused by the
    WebSocket layer (close 1009, no STOMP ERROR); the server carries on."""
    with trio.fail_after(10):
        async with stomp_user(env.server, 3, rooms=[env.room]) as bystander:
            async with stomp_user(env.server, 1, kind) as c:
                await c.send_raw(b"SEND\ndestination:/x\n\n" + b"y" * 5000 + b"\0")
                await c.expect_closed()
                assert c.ws.closed is not None and c.ws.closed.code == 1009
            await carry_on(env, bystander, kind)


async def test_a_frame_bigger_than_max_frame_bytes_after_connect(env: Env) -> None:
    with trio.fail_after(10):
        async with stomp_user(env.server, 3, rooms=[env.room]) as bystander:
            async with stomp_user(env.server, 1) as c:
                await c.publish(room_dest(env.room), b"x" * 3000, receipt=False)
                await c.expect_error(
                    "Frame too large", "Frame exceeds the maximum frame size of 2048 bytes"
                )
            await carry_on(env, bystander)
        # Nothing of the refused frame was stored.
        stored = await env.server.state.store.history(env.room, None, 50)
        assert [m.content.startswith("carry on") for m in stored] == [True]


async def test_no_connect_in_time(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chatd.stomp.session, "CONNECT_TIMEOUT", 0.5)
    with trio.fail_after(10):
        async with stomp_user(env.server, 3, rooms=[env.room]) as bystander:
            async with open_stomp(env.server) as silent, open_stomp(env.server, "http") as half:
                # One says nothing at all, the other starts a CONNECT and never ends it.
                await half.send_raw(b"CONNECT\naccept-version:1.2\n")
                await silent.expect_error("Timed out", "no CONNECT frame in time")
                await half.expect_error("Timed out", "no CONNECT frame in time")
            await carry_on(env, bystander)


# --- CONNECT itself ---------------------------------------------------------------------


async def test_unsupported_version_only(env: Env) -> None:
    with trio.fail_after(10):
        async with stomp_user(env.server, 3, rooms=[env.room]) as bystander:
            login, passcode = await issue_login(env.server, 1)
            async with open_stomp(env.server) as c:
                await c.send_connect(
                    login, passcode, accept_version="2.0,0.9", extra={"receipt": "v"}
                )
                frame = await c.expect_error(
                    "Version mismatch",
                    "Supported versions are 1.0,1.1,1.2",
                    receipt_id="v",
                )
                assert frame.get("version") == "1.0,1.1,1.2"
            await carry_on(env, bystander)


@pytest.mark.parametrize("value", ["x,y", "1000", "1000,2000,3000", "-1,0", ""])
async def test_bad_heart_beat_header(env: Env, value: str) -> None:
    with trio.fail_after(10):
        login, passcode = await issue_login(env.server, 1)
        async with open_stomp(env.server) as c:
            await c.send_connect(login, passcode, heart_beat=value)
            await c.expect_error(
                "Invalid heart-beat header", f"heart-beat must be 'cx,cy', got {value!r}"
            )


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("command", ["CONNECT", "STOMP"])
async def test_connect_twice(env: Env, kind: Kind, command: str) -> None:
    with trio.fail_after(10):
        async with stomp_user(env.server, 3, rooms=[env.room]) as bystander:
            login, passcode = await issue_login(env.server, 1)
            async with open_stomp(env.server, kind) as c:
                await c.connect(login, passcode)
                await c.send_connect(login, passcode, command=command, extra={"receipt": "2"})
                await c.expect_error("Already connected", "CONNECT was sent twice", receipt_id="2")
            await carry_on(env, bystander, kind)


def _tamper(passcode: str) -> str:
    body, _, sig = passcode.partition(".")
    return f"{body}.{'A' if sig[0] != 'A' else 'B'}{sig[1:]}"


@pytest.mark.parametrize("kind", KINDS)
async def test_refused_login(env: Env, kind: Kind) -> None:
    server = env.server
    with trio.fail_after(10):
        async with stomp_user(server, 3, rooms=[env.room]) as bystander:
            login, passcode = await issue_login(server, 1)
            bad: dict[str, tuple[str | None, str | None]] = {
                "wrong-passcode": (login, "not-the-passcode"),
                "tampered-signature": (login, _tamper(passcode)),
                "someone-elses-login": ("chatd-user-2", passcode),
                "login-only": (login, None),
                "no-credentials": (None, None),
                "guest": ("guest", "guest"),
                "expired-jwt": ("alice", server.token(1, ttl=-3600)),
                "jwt-other-secret": ("alice", _other_authority_token()),
            }
            for case, (user, code) in bad.items():
                async with open_stomp(server, kind) as c:
                    await c.send_connect(user, code, extra={"receipt": case})
                    await c.expect_error(
                        "Bad CONNECT", f"Access refused for user '{user or ''}'", receipt_id=case
                    )
            await carry_on(env, bystander, kind)
        assert server.state.metrics.auth_failures["stomp_login"] == len(bad)


def _other_authority_token() -> str:
    import jwt

    return jwt.encode({"sub": "1", "username": "mallory"}, "x" * 40, algorithm="HS256")


async def test_vhost_not_in_the_allow_list(start_server: StartServer) -> None:
    with trio.fail_after(10):
        server = await start_server(stomp={"vhosts": ["/", "chat"]})
        login, passcode = await issue_login(server, 1)
        async with open_stomp(server) as c:
            await c.send_connect(login, passcode, host="elsewhere")
            await c.expect_error("Bad CONNECT", "Virtual host 'elsewhere' access denied")
        for host in ("/", "chat", None):
            async with open_stomp(server) as c:
                await c.connect(login, passcode, host=host)


# --- after CONNECT: one table, each row a bad frame (sent with receipt "bad") -------------

Rows = Callable[[Env], list[Frame]]


def _send(dest: str, body: bytes, **headers: str) -> Frame:
    return Frame("SEND", (("destination", dest), *headers.items()), body)


def _sub(dest: str, sub_id: str | None = "s", **headers: str) -> Frame:
    hs = [("destination", dest)] + ([("id", sub_id)] if sub_id is not None else [])
    return Frame("SUBSCRIBE", (*hs, *headers.items()))


TABLE: list[tuple[str, Rows, str, str]] = [
    # destinations
    (
        # A room one is not in answers as one that does not exist (issue 12, point 15).
        "subscribe-not-a-member",
        lambda e: [_sub(room_dest(e.other))],
        "Not found",
        "room {other} does not exist or you are not a member",
    ),
    (
        "subscribe-unknown-room",
        lambda e: [_sub(room_dest(UNKNOWN_ROOM))],
        "Not found",
        f"room {UNKNOWN_ROOM} does not exist or you are not a member",
    ),
    (
        "subscribe-other-users-queue",
        lambda e: [_sub(user_dest(2))],
        "Access refused",
        "you may not read /exchange/chat.direct/user.2",
    ),
    (
        "subscribe-topic",
        lambda e: [_sub("/topic/news")],
        "Bad destination",
        "destination '/topic/news' is not available",
    ),
    (
        "subscribe-queue",
        lambda e: [_sub("/queue/jobs")],
        "Bad destination",
        "destination '/queue/jobs' is not available",
    ),
    (
        "subscribe-other-exchange",
        lambda e: [_sub("/exchange/amq.topic/room.1")],
        "not_found",
        "NOT_FOUND - no exchange 'amq.topic' in vhost '/'",
    ),
    (
        "subscribe-room-zero",
        lambda e: [_sub("/exchange/chat.direct/room.0")],
        "Bad destination",
        "destination '/exchange/chat.direct/room.0' is not available",
    ),
    (
        "subscribe-room-wildcard",
        lambda e: [_sub("/exchange/chat.direct/room.*")],
        "Bad destination",
        "destination '/exchange/chat.direct/room.*' is not available",
    ),
    # Destinations that are none, or malformed: RabbitMQ's words.
    (
        "subscribe-queue-two-segments",
        lambda e: [_sub("/queue/bah/baz")],
        "Invalid destination",
        "'/bah/baz' is not a valid queue destination",
    ),
    (
        "subscribe-exchange-three-segments",
        lambda e: [_sub("/exchange/bah/baz/boo")],
        "Invalid destination",
        "'/bah/baz/boo' is not a valid exchange destination",
    ),
    (
        "subscribe-empty-queue-name",
        lambda e: [_sub("/queue/")],
        "Invalid destination",
        "'/' is not a valid queue destination",
    ),
    (
        "subscribe-empty-topic",
        lambda e: [_sub("/topic/")],
        "Invalid destination",
        "'/' is not a valid topic destination",
    ),
    (
        "subscribe-empty-exchange-name",
        lambda e: [_sub("/exchange//room.1")],
        "Invalid destination",
        "'//room.1' is not a valid exchange destination",
    ),
    (
        "subscribe-empty-amq-queue",
        lambda e: [_sub("/amq/queue/")],
        "Invalid destination",
        "'/' is not a valid amqqueue destination",
    ),
    (
        "subscribe-blank-destination",
        lambda e: [_sub("")],
        "Invalid destination",
        "Destination cannot be blank",
    ),
    (
        "subscribe-unknown-type",
        lambda e: [_sub("/temp-queue/x")],
        "Unknown destination",
        "'/temp-queue/x' is not a valid destination.\n"
        "Valid destination types are: /exchange/, /topic/, /queue/, /amq/queue/.",
    ),
    (
        "subscribe-exchange-not-configured",
        lambda e: [_sub("/exchange/bah")],
        "not_found",
        "NOT_FOUND - no exchange 'bah' in vhost '/'",
    ),
    (
        "send-queue-two-segments",
        lambda e: [_send("/queue/bah/baz", b"x")],
        "Invalid destination",
        "'/bah/baz' is not a valid queue destination",
    ),
    (
        "send-exchange-not-configured",
        lambda e: [_send("/exchange/bah/key", b"x")],
        "not_found",
        "NOT_FOUND - no exchange 'bah' in vhost '/'",
    ),
    (
        "send-no-such-type",
        lambda e: [_send("bah", b"x")],
        "Unknown destination",
        "'bah' is not a valid destination.\n"
        "Valid destination types are: /exchange/, /topic/, /queue/, /amq/queue/.",
    ),
    (
        "subscribe-missing-id",
        lambda e: [_sub(room_dest(e.room), None)],
        "Missing header",
        '"SUBSCRIBE" must include the "id" header',
    ),
    (
        "subscribe-missing-destination",
        lambda e: [Frame("SUBSCRIBE", (("id", "s"),))],
        "Missing destination",
        "\"SUBSCRIBE\" must include a 'destination' header",
    ),
    (
        "subscribe-duplicate-id",
        lambda e: [_sub(room_dest(e.room), "dup"), _sub(user_dest(1), "dup")],
        "Duplicated subscription identifier",
        "A subscription identified by 'dup' already exists.",
    ),
    (
        "subscribe-bad-ack-mode",
        lambda e: [_sub(room_dest(e.room), ack="sometimes")],
        "Bad ack mode",
        "ack must be auto, client or client-individual: 'sometimes'",
    ),
    (
        "unsubscribe-unknown-id",
        lambda e: [Frame("UNSUBSCRIBE", (("id", "nope"),))],
        "No subscription found",
        'UNSUBSCRIBE must refer to an existing subscription.\nSubscription to "nope" not found.',
    ),
    (
        "unsubscribe-missing-id",
        lambda e: [Frame("UNSUBSCRIBE", (("destination", room_dest(e.room)),))],
        "Missing destination or id",
        "UNSUBSCRIBE must include a 'destination' or 'id' header",
    ),
    # SEND
    (
        "send-bad-json",
        lambda e: [_send(room_dest(e.room), b"{not json")],
        "Bad SEND",
        "bad_json: message is not valid JSON",
    ),
    (
        "send-json-array",
        lambda e: [_send(room_dest(e.room), b'["content"]')],
        "Bad SEND",
        "bad_json: message must be a JSON object",
    ),
    (
        "send-empty-body",
        lambda e: [_send(room_dest(e.room), b"")],
        "Bad SEND",
        "bad_json: message is not valid JSON",
    ),
    (
        "send-empty-content",
        lambda e: [_send(room_dest(e.room), b'{"content": "  ", "message_type": "text"}')],
        "Bad SEND",
        "empty_content: content must not be empty",
    ),
    (
        "send-content-not-a-string",
        lambda e: [_send(room_dest(e.room), b'{"content": 5}')],
        "Bad SEND",
        "bad_content: content must be a string",
    ),
    (
        "send-bad-message-type",
        lambda e: [_send(room_dest(e.room), b'{"content": "x", "message_type": "video"}')],
        "Bad SEND",
        "bad_message_type: message_type must be one of file, image, system, text",
    ),
    (
        "send-not-a-member",
        lambda e: [_send(room_dest(e.other), b'{"content": "let me in"}')],
        "Bad SEND",
        "unknown_room: room {other} does not exist or you are not a member",
    ),
    (
        "send-unknown-room",
        lambda e: [_send(room_dest(UNKNOWN_ROOM), b'{"content": "hello?"}')],
        "Bad SEND",
        f"unknown_room: room {UNKNOWN_ROOM} does not exist or you are not a member",
    ),
    (
        "send-own-user-queue",
        lambda e: [_send(user_dest(1), b'{"content": "note to self"}')],
        "Access refused",
        "you may not send to /exchange/chat.direct/user.1",
    ),
    (
        "send-other-user-queue",
        lambda e: [_send(user_dest(2), b'{"content": "psst"}')],
        "Access refused",
        "you may not send to /exchange/chat.direct/user.2",
    ),
    (
        "send-topic",
        lambda e: [_send("/topic/news", b"hello")],
        "Bad destination",
        "destination '/topic/news' is not available",
    ),
    (
        "send-missing-destination",
        lambda e: [Frame("SEND", (), b'{"content": "where to?"}')],
        "Missing destination",
        "\"SEND\" must include a 'destination' header",
    ),
    # transactions
    (
        "commit-unknown-transaction",
        lambda e: [Frame("COMMIT", (("transaction", "tx9"),))],
        "Bad transaction",
        'Invalid transaction identifier: "tx9"',
    ),
    (
        "abort-unknown-transaction",
        lambda e: [Frame("ABORT", (("transaction", "tx9"),))],
        "Bad transaction",
        'Invalid transaction identifier: "tx9"',
    ),
    (
        "send-in-unknown-transaction",
        lambda e: [_send(room_dest(e.room), b'{"content": "x"}', transaction="tx9")],
        "Bad transaction",
        'Invalid transaction identifier: "tx9"',
    ),
    (
        "begin-twice",
        lambda e: [
            Frame("BEGIN", (("transaction", "t1"),)),
            Frame("BEGIN", (("transaction", "t1"),)),
        ],
        "Bad transaction",
        "transaction 't1' is already open",
    ),
    (
        "begin-without-transaction",
        lambda e: [Frame("BEGIN")],
        "Missing transaction",
        "\"BEGIN\" must include a 'transaction' header",
    ),
    (
        "commit-after-abort",
        lambda e: [
            Frame("BEGIN", (("transaction", "t1"),)),
            Frame("ABORT", (("transaction", "t1"),)),
            Frame("COMMIT", (("transaction", "t1"),)),
        ],
        "Bad transaction",
        'Invalid transaction identifier: "t1"',
    ),
    (
        "bad-send-surfaces-at-commit",
        lambda e: [
            Frame("BEGIN", (("transaction", "t1"),)),
            _send(room_dest(e.room), b"{not json", transaction="t1"),
            Frame("COMMIT", (("transaction", "t1"),)),
        ],
        "Bad SEND",
        "bad_json: message is not valid JSON",
    ),
    # ACK / NACK (STOMP 1.2 needs `id`)
    (
        "ack-missing-id",
        lambda e: [Frame("ACK")],
        "Missing header",
        '"ACK" must include the "id" header',
    ),
    (
        "nack-missing-id",
        lambda e: [Frame("NACK")],
        "Missing header",
        '"NACK" must include the "id" header',
    ),
    # frames that are not client frames
    (
        "client-sends-message",
        lambda e: [Frame("MESSAGE")],
        "Bad command",
        'Could not interpret command "MESSAGE"',
    ),
    (
        "client-sends-receipt",
        lambda e: [Frame("RECEIPT")],
        "Bad command",
        'Could not interpret command "RECEIPT"',
    ),
    (
        "client-sends-error",
        lambda e: [Frame("ERROR")],
        "Bad command",
        'Could not interpret command "ERROR"',
    ),
]


@pytest.mark.parametrize(
    ("rows", "message", "body"), [pytest.param(*t[1:], id=t[0]) for t in TABLE]
)
async def test_bad_frame_after_connect(env: Env, rows: Rows, message: str, body: str) -> None:
    """Frames before the last get their RECEIPT; the last one gets the ERROR, with its
    receipt as `receipt-id`, then the close."""
    server = env.server
    with trio.fail_after(10):
        async with stomp_user(server, 3, rooms=[env.room]) as bystander:
            async with stomp_user(server, 1) as c:
                frames = rows(env)
                for frame in frames[:-1]:
                    await c.request(frame.command, frame.headers, frame.body)
                last = frames[-1]
                await c.send_frame(last.command, (*last.headers, ("receipt", "bad")), last.body)
                await c.expect_error(message, body.format(other=env.other), receipt_id="bad")
            await carry_on(env, bystander)
        # Nothing reached the store but the bystander check's own message.
        stored = await server.state.store.history(env.room, None, 50)
        assert [m.content.startswith("carry on") for m in stored] == [True]


@pytest.mark.parametrize("kind", ["ws", "http"])
async def test_bad_frames_after_connect_over_websocket(env: Env, kind: Kind) -> None:
    server = env.server
    with trio.fail_after(10):
        async with stomp_user(server, 3, kind, rooms=[env.room]) as bystander:
            for dest, message, body in [
                (
                    room_dest(env.other),
                    "Not found",
                    f"room {env.other} does not exist or you are not a member",
                ),
                ("/queue/x", "Bad destination", "destination '/queue/x' is not available"),
            ]:
                async with stomp_user(server, 1, kind) as c:
                    await c.send_frame(
                        "SUBSCRIBE", {"destination": dest, "id": "0", "receipt": "r"}
                    )
                    await c.expect_error(message, body, receipt_id="r")
            async with stomp_user(server, 1, kind) as c:
                await c.publish(
                    room_dest(env.room), b"{bad", receipt=False, headers={"receipt": "s"}
                )
                await c.expect_error(
                    "Bad SEND", "bad_json: message is not valid JSON", receipt_id="s"
                )
            await carry_on(env, bystander, kind)


async def test_bad_escape_after_connect_per_version(env: Env) -> None:
    """1.1 defines no `\\r` escape, 1.2 does; 1.0 has no escapes at all (kept literally)."""
    server = env.server
    with trio.fail_after(10):
        login, passcode = await issue_login(server, 1)
        async with open_stomp(server) as c:
            await c.connect(login, passcode, accept_version="1.1")
            await c.send_raw(b"SUBSCRIBE\ndestination:/exchange/chat.direct/room.1\nid:a\\rb\n\n\0")
            await c.expect_error(
                "Invalid header escape",
                r"Undefined escape sequence '\\r' in header 'a\\rb'; STOMP 1.1 only defines "
                r"\n, \c, \\",
            )
        async with open_stomp(server) as c:
            await c.connect(login, passcode, accept_version="1.0")
            # In 1.0 the backslash is an ordinary character: a destination that is not ours.
            await c.send_raw(b"SUBSCRIBE\ndestination:/topic/a\\qb\nid:x\nreceipt:r\n\n\0")
            await c.expect_error(
                "Bad destination", "destination '/topic/a\\\\qb' is not available", receipt_id="r"
            )


async def test_rate_limited_send_is_an_error(start_server: StartServer) -> None:
    """A SEND over the per-user rate limit is refused like any bad SEND (ERROR, close)."""
    with trio.fail_after(10):
        server = await start_server(chat={"rate_per_second": 0.01, "rate_burst": 1})
        room = await make_room(server, [1, 2])
        async with stomp_user(server, 2, rooms=[room]) as bystander:
            async with stomp_user(server, 1) as c:
                await c.publish(room_dest(room), {"content": "one"})
                await c.publish(
                    room_dest(room), {"content": "two"}, receipt=False, headers={"receipt": "2"}
                )
                await c.expect_error(
                    "Bad SEND", "rate_limited: too many messages; slow down", receipt_id="2"
                )
            _, body = await next_event_of(bystander, "new_message")
            assert body["message"]["content"] == "one"
        assert server.state.metrics.rate_limited["stomp"] == 1


@pytest.mark.parametrize("version", ["1.0", "1.1"])
async def test_receipt_that_cannot_be_escaped_is_never_silently_dropped(
    env: Env, version: str
) -> None:
    with trio.fail_after(10):
        login, passcode = await issue_login(env.server, 1)
        async with open_stomp(env.server) as c:
            await c.connect(login, passcode, accept_version=version)
            await c.send_raw(
                b"BEGIN\ntransaction:t\nreceipt:a\rb\n\n\0"
                b"BEGIN\ntransaction:u\nreceipt:second\n\n\0"
            )
            frame = await c.next_frame()
            assert frame.command == "ERROR" or frame.get("receipt-id") == "a\rb", frame


@pytest.mark.parametrize("version", ["1.0", "1.1"])
async def test_unencodable_subscription_id_is_a_client_error(env: Env, version: str) -> None:
    with trio.fail_after(10):
        login, passcode = await issue_login(env.server, 1)
        async with open_stomp(env.server) as c:
            await c.connect(login, passcode, accept_version=version)
            await c.send_raw(
                b"SUBSCRIBE\ndestination:/exchange/chat.direct/user.1\nid:a\rb\nreceipt:x\n\n\0"
            )
            frame = await c.next_frame()
            assert frame.command == "RECEIPT" or frame.get("message") != "Internal error", frame


@pytest.mark.parametrize("what", ["transactions", "frames-in-one-transaction"])
async def test_open_transactions_are_bounded(env: Env, what: str) -> None:
    with trio.fail_after(10):
        async with stomp_user(env.server, 1) as c:
            if what == "transactions":
                data = b"".join(b"BEGIN\ntransaction:t%d\n\n\0" % i for i in range(2000))
            else:
                send = (
                    b"SEND\ndestination:" + room_dest(env.room).encode() + b"\ntransaction:t\n"
                    b'content-length:15\n\n{"content":"x"}\0'
                )
                data = b"BEGIN\ntransaction:t\n\n\0" + send * 2000
            await c.send_raw(data + b"BEGIN\ntransaction:last\nreceipt:last\n\n\0")
            frame = await c.next_frame()
            assert frame.command == "ERROR", frame
