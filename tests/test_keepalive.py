"""Server pings on /chat: a quiet client that answers stays; a silent one is closed.

Real time passes here on purpose (the interval is what is under test), with a short one.
"""

from __future__ import annotations

import trio

from ._chat import RawWebSocket, chat, create_room, new_ticket, roundtrip
from .conftest import StartServer

INTERVAL = 0.2


async def test_silent_connection_is_pinged_then_closed(start_server: StartServer) -> None:
    with trio.fail_after(10):
        server = await start_server(chat={"ping_interval_seconds": INTERVAL})
        room = await create_room(server, [1, 2])
        silent = await RawWebSocket.connect(server, f"/chat?ticket={await new_ticket(server, 2)}")
        try:
            frames = []
            while (frame := await silent.read_frame()) is not None:
                frames.append(frame)
                if frame[0] == 0x8:
                    break
            opcodes = [op for op, _ in frames]
            assert 0x9 in opcodes, "pinged first"
            assert opcodes[-1] == 0x8
            assert int.from_bytes(frames[-1][1][:2], "big") == 1001
        finally:
            await silent.aclose()
        # The silent user went offline; the server carries on for everyone else.
        async with chat(server, 1) as ws:
            assert (await roundtrip(ws, room, "still here"))["content"] == "still here"


async def test_client_that_answers_pings_stays(start_server: StartServer) -> None:
    with trio.fail_after(10):
        server = await start_server(chat={"ping_interval_seconds": INTERVAL})
        room = await create_room(server, [1])
        # trio-websocket answers pings by itself, as browsers do.
        async with chat(server, 1) as ws:
            await trio.sleep(INTERVAL * 6)
            assert (await roundtrip(ws, room, "alive"))["content"] == "alive"
            assert server.state.hub.count("chat") == 1
