"""What a connection leaves behind once it is closed: nothing. Attack 3 of issue 12 showed
why this needs a test of its own: every connection cut for a too-large transaction left
its session, and the megabytes of frames the transaction held, in the expiry heap until
its token would have expired (bench/run.py abuse: +1 GB in 15 s)."""

from __future__ import annotations

import gc

import trio

from chatd.stomp.session import StompSession
from chatd.ticketws.session import ChatConnection

from ._chat import chat, roundtrip
from .conftest import StartServer
from .stomp_client import KINDS, make_room, room_dest, stomp_user
from .test_connection_log import connection_log


def alive(kind: type) -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, kind))


async def test_a_refused_transaction_leaves_nothing_behind(start_server: StartServer) -> None:
    server = await start_server(stomp={"max_transaction_bytes": 200_000})
    room = await make_room(server, [1])
    body = b'{"content":"%s"}' % (b"x" * 3000)
    with connection_log() as lines, trio.fail_after(30):
        for kind in KINDS:
            async with stomp_user(server, 1, kind) as c:
                assert await c.request("BEGIN", {"transaction": "t"}) == []
                for n in range(200):
                    headers = {"destination": room_dest(room), "transaction": "t"}
                    await c.send_frame("SEND", {**headers, "receipt": f"s{n}"}, body)
                    if (await c.next_frame()).command == "ERROR":
                        break
                await c.expect_closed()
            record = await lines.next()
            assert record.getMessage().endswith("error frame: Transaction too large")
    assert alive(StompSession) == 0


async def test_closed_chat_connections_leave_nothing_behind(start_server: StartServer) -> None:
    server = await start_server()
    room = await make_room(server, [1])
    with connection_log() as lines, trio.fail_after(30):
        for n in range(3):
            async with chat(server, 1) as ws:
                await roundtrip(ws, room, f"hello {n}")
            await lines.next()
    assert alive(ChatConnection) == 0
