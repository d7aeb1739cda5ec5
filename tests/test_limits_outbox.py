"""A connection's outbox is bounded in bytes as well as in frames ([chat] outbox_bytes),
through the real server: a consumer that stops reading is cut off once the bytes waiting
for it pass the byte bound, long before the frame bound, and the room carries on."""

from __future__ import annotations

import orjson
import trio

from ._chat import RawWebSocket, chat, create_room, new_ticket, recv_message, roundtrip
from .conftest import StartServer
from .stomp_client import issue_login, make_room, next_event_of, open_raw_tcp, room_dest, stomp_user

# Far more frames than the test ever sends, so only the byte bound can cut.
BY_BYTES = {
    "rate_per_second": 100000,
    "rate_burst": 100000,
    "outbox_messages": 100000,
    "outbox_bytes": 256 * 1024,
    "max_content_chars": 60000,
}
BIG = "x" * 50000
# Loopback's socket buffers take a few MB before the outbox has to hold anything: the
# cut comes after that and 256 KB more, some 100 messages of 50 KB. The frame bound
# alone (100,000) would never cut within the cap.
CAP = 400


async def test_a_chat_consumer_is_cut_by_bytes_and_the_room_carries_on(
    start_server: StartServer,
) -> None:
    with trio.fail_after(30):
        server = await start_server(chat=BY_BYTES)
        room = await create_room(server, [1, 2, 3])
        ticket = await new_ticket(server, 3)
        silent = await RawWebSocket.connect(server, f"/chat?ticket={ticket}")
        try:
            async with chat(server, 1) as flooder, chat(server, 2) as reader:
                sent = 0
                while server.state.metrics.slow_consumer_disconnects == 0:
                    sent += 1
                    assert sent <= CAP, "the silent client was never cut off"
                    msg = await roundtrip(flooder, room, f"{sent}:{BIG}")
                    assert await recv_message(reader) == msg
                for i in range(10):
                    msg = await roundtrip(flooder, room, f"after {i}")
                    assert await recv_message(reader) == msg
                assert server.state.metrics.slow_consumer_disconnects == 1
                # What the silent client finds when it reads: whole frames, then 4008.
                close: bytes | None = None
                texts = 0
                while (frame := await silent.read_frame()) is not None:
                    opcode, payload = frame
                    assert close is None, "a frame after the close frame"
                    if opcode == 0x8:
                        close = payload
                    else:
                        orjson.loads(payload)
                        texts += 1
                assert close is not None and int.from_bytes(close[:2], "big") == 4008
                assert texts < sent
        finally:
            await silent.aclose()
        async with server.client() as http:
            assert (await http.get("/healthz")).status_code == 200


async def test_a_stomp_consumer_is_cut_by_bytes_and_the_room_carries_on(
    start_server: StartServer,
) -> None:
    with trio.fail_after(30):
        server = await start_server(chat=BY_BYTES)
        room = await make_room(server, [1, 2, 3])
        async with stomp_user(server, 1) as flooder, stomp_user(server, 2, "ws") as reader:
            login, passcode = await issue_login(server, 3)
            async with open_raw_tcp(server) as silent:
                await silent.connect(login, passcode)
                await silent.subscribe(room_dest(room))
                await reader.subscribe(room_dest(room))
                sent = 0
                while server.state.metrics.slow_consumer_disconnects == 0:
                    assert sent < CAP, "the silent client was never cut off"
                    await flooder.publish(room_dest(room), {"content": f"{sent}:{BIG}"})
                    _, body = await next_event_of(reader, "new_message")
                    assert body["message"]["content"].startswith(f"{sent}:")
                    sent += 1
                for i in range(5):
                    await flooder.publish(room_dest(room), {"content": f"after {i}"})
                    _, body = await next_event_of(reader, "new_message")
                    assert body["message"]["content"] == f"after {i}"
                while (frame := await silent.next_frame()).command == "MESSAGE":
                    pass
                assert frame.command == "ERROR" and frame.get("message") == "Slow consumer"
                assert server.state.metrics.slow_consumer_disconnects == 1
