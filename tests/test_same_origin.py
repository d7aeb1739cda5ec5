"""A page of chatd's own origin (the web client at /) may open /chat and /ws on the HTTP
listener with `[auth] allowed_origins` empty, the shipped default; any other origin is
refused as before, the server's own name on another port included."""

from __future__ import annotations

import pytest
import trio
from trio_websocket import HandshakeError, open_websocket_url

from ._chat import chat_url, new_ticket, roundtrip
from .conftest import StartServer
from .stomp_client import make_room


async def test_the_servers_own_origin_needs_no_allowed_origins(start_server: StartServer) -> None:
    server = await start_server(auth={"allowed_origins": []})
    port = server.running.http_port
    own = [("Origin", f"http://127.0.0.1:{port}")]
    room = await make_room(server, [1])
    with trio.fail_after(20):
        ticket = await new_ticket(server, 1)
        async with open_websocket_url(chat_url(server, ticket), extra_headers=own) as ws:
            await roundtrip(ws, room, "from the web client")
        async with open_websocket_url(
            f"ws://127.0.0.1:{port}/ws", extra_headers=own, subprotocols=["v12.stomp"]
        ) as ws:
            await ws.send_message("CONNECT\naccept-version:1.2\nhost:/\n\n\0")
            frame = await ws.get_message()
            assert frame.startswith("ERROR") or frame.startswith("CONNECTED"), frame
            assert "origin" not in frame.lower()

        # Another origin, and the same host on another port (the STOMP listener's page
        # would be a different origin), are refused.
        stomp_port = server.running.stomp_ws_port
        for origin, url in [
            ("http://evil.example", f"ws://127.0.0.1:{port}/ws"),
            (f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{stomp_port}/ws"),
        ]:
            with pytest.raises(HandshakeError):
                async with open_websocket_url(url, extra_headers=[("Origin", origin)],
                                              subprotocols=["v12.stomp"]):
                    pass
        ticket = await new_ticket(server, 1)
        async with open_websocket_url(
            chat_url(server, ticket), extra_headers=[("Origin", "http://evil.example")]
        ) as ws:
            with pytest.raises(Exception) as closed:
                await ws.get_message()
        assert getattr(closed.value, "reason", None) is not None
        assert closed.value.reason.code == 1002  # type: ignore[attr-defined]
