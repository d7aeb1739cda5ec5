"""/chat messages that arrive in one read are stored together: one commit, and every
member receives them in order. Each message is still answered in the order it came, also
when one of the burst is refused (it gets its error reply between the echoes of those
before and after it, which are stored), is a retry, or cannot be stored.

The sender is a raw client that writes a burst of frames with one `send_all`, so the
server reads them together; the other members are ordinary trio-websocket clients."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest
import trio
from trio_websocket import WebSocketConnection

from ._chat import (
    Json,
    RawWebSocket,
    chat,
    create_room,
    history,
    new_ticket,
    recv_message,
    roundtrip,
)
from .conftest import Server, StartServer
from .test_stomp_bursts import fail_to_store

OP_TEXT, OP_CLOSE, OP_PING = 0x1, 0x8, 0x9

_carry_on = itertools.count()


def message(room: int, content: str, **extra: Any) -> bytes:
    return orjson.dumps(
        {"roomId": room, "content": content, "timestamp": "2024-01-15T10:30:00Z", **extra}
    )


@asynccontextmanager
async def raw_chat(server: Server, user_id: int) -> AsyncIterator[RawWebSocket]:
    """A /chat connection by hand (with a normal receive buffer), to write bursts."""
    ticket = await new_ticket(server, user_id)
    ws = await RawWebSocket.connect(server, f"/chat?ticket={ticket}", rcvbuf=1 << 20)
    try:
        yield ws
    finally:
        await ws.aclose()


async def next_reply(raw: RawWebSocket) -> Json:
    """The next text frame from the server, decoded; pings are skipped."""
    while True:
        frame = await raw.read_frame()
        assert frame is not None, "the server closed the connection"
        opcode, payload = frame
        if opcode == OP_PING:
            continue
        assert opcode == OP_TEXT, frame
        obj = orjson.loads(payload)
        assert isinstance(obj, dict), obj
        if obj.get("type") == "error":
            assert set(obj) == {"type", "code", "message"}, obj
            assert isinstance(obj["message"], str) and obj["message"], obj
        return obj


async def replies(raw: RawWebSocket, count: int) -> list[Json]:
    return [await next_reply(raw) for _ in range(count)]


def outline(replies: list[Json]) -> list[str]:
    """Each reply as its content, or `error:<code>` for an error reply."""
    return [f"error:{r['code']}" if r.get("type") == "error" else r["content"] for r in replies]


def chat_messages(replies: list[Json]) -> list[Json]:
    return [r for r in replies if r.get("type") != "error"]


async def expect_raw_close(raw: RawWebSocket) -> tuple[int, bytes]:
    """The close frame's (code, reason), which must come next and be followed by the end
    of the stream."""
    while True:
        frame = await raw.read_frame()
        assert frame is not None, "the stream ended without a close frame"
        opcode, payload = frame
        if opcode == OP_PING:
            continue
        assert opcode == OP_CLOSE, f"expected a close, got {frame!r}"
        break
    assert await raw.read_frame() is None, "a frame after the close frame"
    return int.from_bytes(payload[:2], "big"), payload[2:]


async def receive(ws: WebSocketConnection, count: int) -> list[Json]:
    return [await recv_message(ws) for _ in range(count)]


async def contents_in_history(server: Server, room: int, user_id: int = 2) -> list[str]:
    return [m["content"] for m in await history(server, user_id, room)]


async def assert_carries_on(
    server: Server, room: int, bystander: WebSocketConnection, user_id: int
) -> Json:
    """The server and the other clients carry on: a new connection of `user_id` posts to
    `room` and gets its echo, and `bystander`, a member connected all along, receives that
    message as the next thing (so nothing else was pending for it)."""
    content = f"carry on {next(_carry_on)}"
    async with chat(server, user_id) as fresh:
        sent = await roundtrip(fresh, room, content)
    assert await recv_message(bystander) == sent
    return sent


def assert_increasing(messages: list[Json]) -> None:
    ids = [m["id"] for m in messages]
    assert ids == sorted(ids) and len(set(ids)) == len(ids), ids


# --- one read, one commit ----------------------------------------------------------------


async def test_a_burst_is_one_commit_and_every_member_receives_it_in_order(
    server: Server,
) -> None:
    with trio.fail_after(10):
        room = await create_room(server, [1, 2])
        async with (
            raw_chat(server, 1) as sender,
            chat(server, 1) as other_device,
            chat(server, 2) as member,
        ):
            metrics = server.state.metrics
            commits = metrics.commit_count
            contents = [f"m{i}" for i in range(10)]
            await sender.send_texts([message(room, c) for c in contents])
            mine = await replies(sender, 10)
            assert outline(mine) == contents
            assert_increasing(mine)
            assert all(m["roomId"] == room and m["user"]["id"] == 1 for m in mine)
            assert await receive(other_device, 10) == mine
            assert await receive(member, 10) == mine
            # Handled one by one, each message waited for its own commit: ten of them.
            assert metrics.commit_count == commits + 1
            stored = await history(server, 2, room)
            assert [m["id"] for m in stored] == [m["id"] for m in mine]
            assert [m["content"] for m in stored] == contents
            await assert_carries_on(server, room, member, user_id=1)


async def test_a_burst_to_two_rooms_reaches_each_room_s_members_only(server: Server) -> None:
    with trio.fail_after(10):
        room_a = await create_room(server, [1, 2])
        room_b = await create_room(server, [1, 3])
        async with (
            raw_chat(server, 1) as sender,
            chat(server, 2) as in_a,
            chat(server, 3) as in_b,
        ):
            metrics = server.state.metrics
            commits = metrics.commit_count
            burst = [(room_a, "a0"), (room_b, "b0"), (room_a, "a1"), (room_b, "b1"), (room_a, "a2")]
            await sender.send_texts([message(room, c) for room, c in burst])
            mine = await replies(sender, 5)
            assert [(m["roomId"], m["content"]) for m in mine] == burst
            assert_increasing(mine)
            assert await receive(in_a, 3) == [m for m in mine if m["roomId"] == room_a]
            assert await receive(in_b, 2) == [m for m in mine if m["roomId"] == room_b]
            assert metrics.commit_count == commits + 1
            assert await contents_in_history(server, room_a) == ["a0", "a1", "a2"]
            assert await contents_in_history(server, room_b, user_id=3) == ["b0", "b1"]
            # Neither member heard the other room's messages: the next thing each gets is
            # a new message of its own room.
            await assert_carries_on(server, room_a, in_a, user_id=2)
            await assert_carries_on(server, room_b, in_b, user_id=3)


# --- a refused message mid-burst -----------------------------------------------------------

# The refusals tried mid-burst, by the error code each gets (`refused_frame` builds each
# frame); a room one is not in answers as a missing room does (issue 12, point 15).
REFUSALS = ["bad_json", "bad_content", "unknown_room", "other_room", "frame_too_large"]
REPLY_CODE = {"other_room": "unknown_room"}
MAX_FRAME = 1000


def refused_frame(code: str, room: int, other: int) -> bytes:
    frames = {
        "bad_json": b'{"roomId": ' + str(room).encode() + b', "content": "x"',
        "bad_content": orjson.dumps({"roomId": room, "content": 5}),
        "unknown_room": message(424242, "nowhere"),
        "other_room": message(other, "not mine"),
        # Over [chat] max_frame_bytes but within twice it: an error reply, not a close.
        "frame_too_large": message(room, "x" * (MAX_FRAME + 100)),
    }
    return frames[code]


@pytest.mark.parametrize("code", REFUSALS)
async def test_a_refused_message_mid_burst_comes_between_the_ones_around_it(
    start_server: StartServer, code: str
) -> None:
    with trio.fail_after(10):
        server = await start_server(chat={"max_frame_bytes": MAX_FRAME})
        room = await create_room(server, [1, 2])
        other = await create_room(server, [2])
        async with raw_chat(server, 1) as sender, chat(server, 2) as member:
            metrics = server.state.metrics
            commits = metrics.commit_count
            await sender.send_texts(
                [
                    message(room, "first"),
                    message(room, "second"),
                    refused_frame(code, room, other),
                    message(room, "third"),
                    message(room, "fourth"),
                ]
            )
            got = await replies(sender, 5)
            # Those before are stored and echoed first, then the error; the ones after it
            # are stored too (unlike a bad STOMP SEND, a refusal on /chat is not fatal).
            reply = REPLY_CODE.get(code, code)
            assert outline(got) == ["first", "second", f"error:{reply}", "third", "fourth"]
            mine = chat_messages(got)
            assert_increasing(mine)
            assert await receive(member, 4) == mine
            # One commit for the two before the refusal, one for the two after it.
            assert metrics.commit_count == commits + 2
            assert await contents_in_history(server, room) == ["first", "second", "third", "fourth"]
            assert await history(server, 2, other) == []
            await assert_carries_on(server, room, member, user_id=1)
            # The sender's connection is still open and still receives.
            assert (await next_reply(sender))["content"].startswith("carry on")


async def test_refusals_at_the_ends_and_side_by_side_keep_their_places(server: Server) -> None:
    with trio.fail_after(10):
        room = await create_room(server, [1, 2])
        other = await create_room(server, [2])
        async with raw_chat(server, 1) as sender, chat(server, 2) as member:
            metrics = server.state.metrics
            commits = metrics.commit_count
            await sender.send_texts(
                [
                    b"not json",
                    message(room, "a"),
                    message(other, "not mine"),
                    orjson.dumps({"roomId": room}),
                    message(room, "b"),
                    message(room, "c"),
                    message(room, " \n "),
                ]
            )
            got = await replies(sender, 7)
            assert outline(got) == [
                "error:bad_json",
                "a",
                "error:unknown_room",
                "error:bad_content",
                "b",
                "c",
                "error:empty_content",
            ]
            mine = chat_messages(got)
            assert_increasing(mine)
            assert await receive(member, 3) == mine
            # "a" alone, then "b" and "c" together; nothing to store is no commit.
            assert metrics.commit_count == commits + 2
            assert await contents_in_history(server, room) == ["a", "b", "c"]
            await assert_carries_on(server, room, member, user_id=1)


async def test_the_rate_limit_cutting_in_mid_burst_refuses_the_rest_after_the_admitted(
    start_server: StartServer,
) -> None:
    with trio.fail_after(10):
        # A refill of one token per 1000 s: three are admitted however slow the machine.
        server = await start_server(chat={"rate_per_second": 0.001, "rate_burst": 3})
        room = await create_room(server, [1, 2, 3])
        async with raw_chat(server, 1) as sender, chat(server, 2) as member:
            metrics = server.state.metrics
            commits = metrics.commit_count
            await sender.send_texts([message(room, f"m{i}") for i in range(5)])
            got = await replies(sender, 5)
            assert outline(got) == ["m0", "m1", "m2", "error:rate_limited", "error:rate_limited"]
            mine = chat_messages(got)
            assert_increasing(mine)
            assert await receive(member, 3) == mine
            assert metrics.commit_count == commits + 1
            assert metrics.rate_limited["chat"] == 2
            assert await contents_in_history(server, room) == ["m0", "m1", "m2"]
            # Other users are not limited, and the limited connection still receives.
            sent = await assert_carries_on(server, room, member, user_id=3)
            assert await next_reply(sender) == sent


# --- retries -----------------------------------------------------------------------------


async def test_a_retry_in_a_burst_answers_the_sender_in_its_place_and_stores_nothing(
    server: Server,
) -> None:
    with trio.fail_after(10):
        room = await create_room(server, [1, 2])
        async with raw_chat(server, 1) as sender, chat(server, 2) as member:
            await sender.send_texts([message(room, "once", clientMessageId="c-1")])
            first = await next_reply(sender)
            assert first["content"] == "once"
            assert await recv_message(member) == first
            metrics = server.state.metrics
            commits = metrics.commit_count
            suppressed = metrics.duplicates_suppressed
            await sender.send_texts(
                [
                    message(room, "a"),
                    message(room, "once", clientMessageId="c-1"),  # a retry of an earlier one
                    message(room, "b", clientMessageId="c-2"),
                    message(room, "b", clientMessageId="c-2"),  # a retry within the burst
                    message(room, "c"),
                ]
            )
            got = await replies(sender, 5)
            assert outline(got) == ["a", "once", "b", "b", "c"]
            # Each retry is answered at its place with the stored message it repeats.
            assert got[1] == first
            assert got[3] == got[2]
            fresh = [got[0], got[2], got[4]]
            assert_increasing([first, *fresh])
            # Nobody else hears of the retries, and they are not stored again.
            assert await receive(member, 3) == fresh
            assert metrics.commit_count == commits + 1
            assert metrics.duplicates_suppressed == suppressed + 2
            assert await contents_in_history(server, room) == ["once", "a", "b", "c"]
            await assert_carries_on(server, room, member, user_id=1)


# --- store failures --------------------------------------------------------------------------


async def test_a_store_failure_mid_burst_stores_the_others_then_closes_1011(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trio.fail_after(10):
        room = await create_room(server, [1, 2])
        async with chat(server, 2) as member:
            metrics = server.state.metrics
            async with raw_chat(server, 1) as sender:
                fail_to_store(monkeypatch, "doomed")
                commits = metrics.commit_count
                await sender.send_texts(
                    [message(room, "kept"), message(room, "doomed"), message(room, "also kept")]
                )
                # Each message is its own operation: the one after the failed one is stored
                # as well, and the sender hears of both before its connection is closed.
                got = await replies(sender, 2)
                assert outline(got) == ["kept", "also kept"]
                assert_increasing(got)
                code, _reason = await expect_raw_close(sender)
                assert code == 1011
            assert await receive(member, 2) == got
            assert metrics.commit_count == commits + 1
            assert await contents_in_history(server, room) == ["kept", "also kept"]
            monkeypatch.undo()
            await assert_carries_on(server, room, member, user_id=1)
