"""The general broker's flow from queue to connection, over real sockets (issue 13): a
queue hands a consumer only what its connection can take, so a backlog drains whole at
any size, competing consumers lose and duplicate nothing in every ack mode, and a
subscriber that really stops reading is cut without taking the queue's messages along."""

from __future__ import annotations

import contextlib
import itertools

import pytest
import trio

from chatd.stomp import Frame, RemoteProtocolError

from .conftest import Server, StartServer
from .stomp_client import Kind, StompClient, open_raw_tcp, open_stomp


def broker(**more: object) -> dict[str, object]:
    return {"broker_enabled": True, "broker_destinations": ["/queue/*", "/topic/*"], **more}


async def login(c: StompClient, server: Server, user_id: int) -> None:
    await c.connect("x", server.token(user_id))


async def subscribe(c: StompClient, dest: str, ack: str) -> None:
    """SUBSCRIBE with no receipt: a backlog's MESSAGEs may come at once."""
    await c.send_frame("SUBSCRIBE", {"destination": dest, "id": "s", "ack": ack})


async def send_all(c: StompClient, dest: str, bodies: list[bytes]) -> None:
    """SEND each body, 64 KB of frames a write (one WebSocket message may carry several
    frames: STOMP is a byte stream), the last with a receipt: its RECEIPT says every SEND
    before it was handled."""
    chunk: list[bytes] = []
    size = 0
    for body in bodies[:-1]:
        chunk.append(c.writer.send(Frame("SEND", (("destination", dest),), body)))
        size += len(chunk[-1])
        if size >= 65536:
            await c.send_raw(b"".join(chunk))
            chunk, size = [], 0
    if chunk:
        await c.send_raw(b"".join(chunk))
    assert await c.request("SEND", {"destination": dest}, bodies[-1]) == []


@pytest.mark.parametrize("kind", ["tcp", "ws"])
async def test_a_backlog_of_4k_messages_drains_whole_and_in_order(
    start_server: StartServer, kind: Kind
) -> None:
    server = await start_server(stomp=broker())
    n = 1500
    bodies = [f"{i:05d}".encode() + b"x" * (4096 - 5) for i in range(n)]
    with trio.fail_after(20):
        async with open_stomp(server, kind) as producer:
            await login(producer, server, 1)
            await send_all(producer, "/queue/big4k", bodies)
        async with open_stomp(server, kind) as consumer:
            await login(consumer, server, 2)
            await subscribe(consumer, "/queue/big4k", "auto")
            for i in range(n):
                frame = await consumer.next_frame()
                assert frame.command == "MESSAGE", (i, frame, frame.body[:200])
                assert frame.body == bodies[i]
            # Nothing more waits, and the connection is still whole.
            assert await consumer.request("BEGIN", {"transaction": "t"}) == []


def _body(i: int) -> bytes:
    # Mixed sizes, from no padding to 9 KB; the index first so each is told apart.
    pad = (0, 40, 300, 2000, 9000, 3)[i % 6]
    return f"{i:06d}|".encode() + bytes([65 + i % 26]) * pad


@pytest.mark.parametrize("kind", ["tcp", "ws"])
@pytest.mark.parametrize("ack", ["auto", "client", "client-individual"])
async def test_three_competing_consumers_lose_nothing(
    start_server: StartServer, kind: Kind, ack: str
) -> None:
    server = await start_server(stomp=broker())
    total = 10_000
    early = 4_000  # waiting before any consumer comes: a backlog over the outbox's bytes
    got: list[list[int]] = [[], [], []]
    done = trio.Event()

    async def consume(c: StompClient, mine: list[int]) -> None:
        acks: list[bytes] = []
        while True:
            frame = await c.next_frame()
            assert frame.command == "MESSAGE", (frame, frame.body[:200])
            i = int(frame.body[:6])
            assert frame.body == _body(i)
            assert frame.get("redelivered") == "false"
            mine.append(i)
            # ACKs go 25 at a time (in `client` mode the last acknowledges them all): with
            # no prefetch-count, unacknowledged messages do not hold deliveries back.
            if ack == "client-individual" or (ack == "client" and len(mine) % 25 == 0):
                acks.append(c.writer.send(Frame("ACK", (("id", frame.get("ack") or ""),))))
            if len(acks) == 25 or (ack == "client" and acks):
                await c.send_raw(b"".join(acks))
                acks.clear()
            if sum(map(len, got)) == total:
                done.set()

    # 5-13 s on a loaded 2-core box (WebSocket is the slow one: the test client's
    # trio-websocket); the bound is for a hang, not for speed.
    with trio.fail_after(60):
        async with (
            open_stomp(server, kind) as producer,
            open_stomp(server, kind) as c0,
            open_stomp(server, kind) as c1,
            open_stomp(server, kind) as c2,
        ):
            await login(producer, server, 1)
            await send_all(producer, "/queue/work", [_body(i) for i in range(early)])
            async with trio.open_nursery() as nursery:
                for uid, (c, mine) in enumerate(zip((c0, c1, c2), got, strict=True), start=2):
                    await login(c, server, uid)
                    await subscribe(c, "/queue/work", ack)
                    nursery.start_soon(consume, c, mine)
                await send_all(producer, "/queue/work", [_body(i) for i in range(early, total)])
                await done.wait()
                nursery.cancel_scope.cancel()
    received = list(itertools.chain(*got))
    assert sorted(received) == list(range(total))  # nothing lost, nothing twice
    for mine in got:
        assert mine and mine == sorted(mine)  # each consumer had a share, in queue order


async def test_a_subscriber_that_stops_reading_is_cut_and_its_unsent_messages_requeued(
    start_server: StartServer,
) -> None:
    server = await start_server(
        stomp=broker(broker_queue_max_messages=1600),
        chat={"outbox_messages": 64, "outbox_bytes": 64 * 1024},
    )
    # 6 MB: more than a stuck reader's socket buffers and half its outbox hold, on any
    # kernel's defaults (Linux's tcp_wmem tops at 4 MB).
    n = 1500
    bodies = [f"{i:05d}".encode() + b"q" * 4096 for i in range(n)]
    with trio.fail_after(20):
        async with open_raw_tcp(server) as stuck, open_stomp(server, "tcp") as producer:
            await login(stuck, server, 2)
            await stuck.subscribe("/queue/jobs", "q", ack="auto")
            await stuck.subscribe("/topic/news", "t", ack="auto")
            await login(producer, server, 1)
            # It takes what its connection can; the rest waits in the queue.
            await send_all(producer, "/queue/jobs", bodies)
            # Its topic queue fills: it alone is cut; the publisher carries on.
            await send_all(producer, "/topic/news", [b"n"] * 1650)
            async with open_stomp(server, "tcp") as fresh:
                await login(fresh, server, 3)
                await subscribe(fresh, "/queue/jobs", "auto")
                rest: list[Frame] = []
                # What never left for the stuck one comes at once; what was on its way
                # out comes back once its writer gives up (the abort's grace), redelivered.
                while not rest or rest[-1].get("redelivered") != "true":
                    rest.append(await fresh.next_frame())
                # Now the stuck one reads what its socket took before the cut.
                seen: list[bytes] = []
                with contextlib.suppress(RemoteProtocolError):
                    while (event := await stuck.next_event()) is not None:
                        if isinstance(event, Frame) and event.get("subscription") == "q":
                            seen.append(event.body)
                assert seen == bodies[: len(seen)]
                while len({*seen, *(f.body for f in rest)}) < n:
                    rest.append(await fresh.next_frame())
    assert 0 < len(seen) < n
    assert {*seen, *(f.body for f in rest)} == set(bodies)  # nothing lost
    assert all(f.command == "MESSAGE" for f in rest)
    for f in rest:
        # A message twice (its frame half written when the writer gave up) says so.
        assert f.body not in seen or f.get("redelivered") == "true"
