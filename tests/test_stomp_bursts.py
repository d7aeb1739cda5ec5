"""SENDs that arrive together are stored together: one commit, RECEIPTs in order and in
one write, and every frame still answered in the order it came, also when one of the
burst is refused or the store fails."""

from __future__ import annotations

from collections.abc import Iterable

import orjson
import pytest
import trio

from chatd.stomp import Frame, FrameWriter
from chatd.store import engine as store_module

from ._chat import history as http_history
from .conftest import Server, StartServer
from .stomp_client import (
    KINDS,
    Kind,
    StompClient,
    assert_carries_on,
    make_room,
    next_event_of,
    room_dest,
    stomp_user,
)

_writer = FrameWriter("1.2")


def send_frame(room: int, content: str | bytes, receipt: str | None) -> bytes:
    body = content if isinstance(content, bytes) else orjson.dumps({"content": content})
    headers = [("destination", room_dest(room)), ("content-type", "application/json")]
    if receipt is not None:
        headers.append(("receipt", receipt))
    return _writer.send(Frame("SEND", tuple(headers), body))


def fail_to_store(monkeypatch: pytest.MonkeyPatch, content: str) -> None:
    """From now on the store fails to write any message with this content (a fault
    injected into the real server's store)."""
    real_op = store_module._append_op

    def op_for(new, *args, **kwargs):  # type: ignore[no-untyped-def]
        if new.content != content:
            return real_op(new, *args, **kwargs)

        def fail(_conn):  # type: ignore[no-untyped-def]
            raise OSError("disk on fire")

        return fail

    monkeypatch.setattr(store_module, "_append_op", op_for)


async def frames_until(client: StompClient, count: int) -> list[Frame]:
    return [await client.next_frame() for _ in range(count)]


def receipts_of(frames: Iterable[Frame]) -> list[str | None]:
    return [f.get("receipt-id") for f in frames if f.command == "RECEIPT"]


async def published_to(bystander: StompClient, count: int) -> list[str]:
    return [
        (await next_event_of(bystander, "new_message"))[1]["message"]["content"]
        for _ in range(count)
    ]


async def contents_in_history(server: Server, room: int) -> list[str]:
    return [m["content"] for m in await http_history(server, 2, room)]


@pytest.mark.parametrize("kind", KINDS)
async def test_a_burst_of_sends_is_one_commit_with_receipts_in_order(
    server: Server, kind: Kind
) -> None:
    with trio.fail_after(10):
        room = await make_room(server, [1, 2, 3])
        async with (
            stomp_user(server, 1, kind) as sender,
            stomp_user(server, 2, "ws", rooms=[room]) as reader,
        ):
            metrics = server.state.metrics
            commits = metrics.commit_count
            burst = b"".join(send_frame(room, f"m{i}", f"r{i}") for i in range(10))
            await sender.send_raw(burst)  # one WebSocket message, or one TCP write
            frames = await frames_until(sender, 10)
            assert receipts_of(frames) == [f"r{i}" for i in range(10)]
            got = [(await next_event_of(reader, "new_message"))[1]["message"] for _ in range(10)]
            assert [m["content"] for m in got] == [f"m{i}" for i in range(10)]
            ids = [m["id"] for m in got]
            assert ids == sorted(ids) and len(set(ids)) == 10
            if kind != "tcp":  # a TCP read may in principle split the burst
                assert metrics.commit_count == commits + 1


async def test_a_refused_send_mid_burst_answers_those_before_and_stores_none_after(
    server: Server,
) -> None:
    with trio.fail_after(10):
        room = await make_room(server, [1, 2, 3])
        async with (
            stomp_user(server, 2, "ws", rooms=[room]) as bystander,
            stomp_user(server, 1, "ws") as sender,
        ):
            burst = b"".join(
                [
                    send_frame(room, "first", "r0"),
                    send_frame(room, "second", "r1"),
                    send_frame(room, b"{not json", "r2"),
                    send_frame(room, "never", "r3"),
                ]
            )
            await sender.send_raw(burst)
            r0, r1 = await frames_until(sender, 2)
            assert receipts_of([r0, r1]) == ["r0", "r1"]
            await sender.expect_error(
                "Bad SEND", "bad_json: message is not valid JSON", receipt_id="r2"
            )
            assert await contents_in_history(server, room) == ["first", "second"]
            assert await published_to(bystander, 2) == ["first", "second"]
            await assert_carries_on(server, room, bystander)


async def test_a_subscribe_between_sends_sees_only_the_sends_after_it(server: Server) -> None:
    with trio.fail_after(10):
        room = await make_room(server, [1])
        async with stomp_user(server, 1, "tcp") as c:
            subscribe = _writer.send(
                Frame(
                    "SUBSCRIBE",
                    (("destination", room_dest(room)), ("id", "s"), ("receipt", "r-sub")),
                )
            )
            await c.send_raw(
                send_frame(room, "before", "r0") + subscribe + send_frame(room, "after", "r1")
            )
            frames = await frames_until(c, 4)
            assert [(f.command, f.get("receipt-id")) for f in frames] == [
                ("RECEIPT", "r0"),
                ("RECEIPT", "r-sub"),
                ("MESSAGE", None),
                ("RECEIPT", "r1"),
            ]
            assert orjson.loads(frames[2].body)["message"]["content"] == "after"


async def test_rate_limit_mid_burst_answers_the_admitted_ones(
    start_server: StartServer,
) -> None:
    server = await start_server(chat={"rate_per_second": 0.001, "rate_burst": 3})
    with trio.fail_after(10):
        room = await make_room(server, [1, 2, 3])
        async with (
            stomp_user(server, 2, "ws", rooms=[room]) as bystander,
            stomp_user(server, 1, "ws") as sender,
        ):
            burst = b"".join(send_frame(room, f"m{i}", f"r{i}") for i in range(5))
            await sender.send_raw(burst)
            frames = await frames_until(sender, 3)
            assert receipts_of(frames) == ["r0", "r1", "r2"]
            error = await sender.expect_error("Bad SEND", receipt_id="r3")
            assert error.body.startswith(b"rate_limited")
            assert await contents_in_history(server, room) == ["m0", "m1", "m2"]
            assert await published_to(bystander, 3) == ["m0", "m1", "m2"]
            await assert_carries_on(server, room, bystander, user_id=3)


async def test_a_store_failure_answers_the_stored_ones_then_an_error(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trio.fail_after(10):
        room = await make_room(server, [1, 2, 3])
        async with (
            stomp_user(server, 2, "ws", rooms=[room]) as bystander,
            stomp_user(server, 1, "ws") as sender,
        ):
            fail_to_store(monkeypatch, "doomed")
            burst = b"".join(
                [
                    send_frame(room, "kept", "r0"),
                    send_frame(room, "doomed", "r1"),
                    send_frame(room, "also kept", "r2"),
                ]
            )
            await sender.send_raw(burst)
            # Each message is its own operation: the one after the failed one is stored,
            # and the RECEIPTs say which, before the ERROR that names the failed one.
            assert receipts_of(await frames_until(sender, 2)) == ["r0", "r2"]
            await sender.expect_error(
                "Internal error", "the message could not be stored", receipt_id="r1"
            )
            assert await contents_in_history(server, room) == ["kept", "also kept"]
            assert await published_to(bystander, 2) == ["kept", "also kept"]
            monkeypatch.undo()
            await assert_carries_on(server, room, bystander, user_id=3)


async def test_a_store_failure_inside_a_committed_transaction_stops_it(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trio.fail_after(10):
        room = await make_room(server, [1, 2, 3])
        async with (
            stomp_user(server, 2, "ws", rooms=[room]) as bystander,
            stomp_user(server, 1, "tcp") as sender,
        ):
            fail_to_store(monkeypatch, "doomed")
            assert await sender.request("BEGIN", {"transaction": "t"}) == []
            for content in ("kept", "doomed", "never"):
                headers = {"destination": room_dest(room), "transaction": "t"}
                await sender.send_frame("SEND", headers, orjson.dumps({"content": content}))
            await sender.send_frame("COMMIT", {"transaction": "t", "receipt": "r-commit"})
            # No RECEIPT for the COMMIT: the failed SEND ends the session first.
            await sender.expect_error("Internal error", "the message could not be stored")
            assert await contents_in_history(server, room) == ["kept"]
            assert await published_to(bystander, 1) == ["kept"]
            monkeypatch.undo()
            await assert_carries_on(server, room, bystander, user_id=3)
