"""The connection log (issue 14): one info line per connection that ends, with protocol,
transport, user, client address (behind a trusted proxy, the forwarded one), duration and
how it ended, as fields of its own in the json format; never a ticket or token."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import trio
from trio_websocket import HandshakeError, open_websocket_url

from chatd.ops import logs
from chatd.ops.logs import JsonFormatter

from ._chat import admin_headers, chat, chat_url, new_ticket, roundtrip
from .conftest import Server
from .stomp_client import make_room, open_stomp, stomp_user


class Lines(logging.Handler):
    """The connection log's records, with a way to wait for the next one."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []
        self._more = trio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self._more.set()

    async def next(self) -> logging.LogRecord:
        while not self.records:
            self._more = trio.Event()
            await self._more.wait()
        return self.records.pop(0)


@contextmanager
def connection_log() -> Iterator[Lines]:
    logger = logging.getLogger("chatd.connections")
    lines = Lines()
    old = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(lines)
    try:
        yield lines
    finally:
        logger.removeHandler(lines)
        logger.setLevel(old)


def fields(record: logging.LogRecord) -> dict[str, object]:
    out = json.loads(JsonFormatter().format(record))
    assert out["msg"] == record.getMessage()
    return dict(out)


async def test_a_chat_connection_closed_by_its_client(server: Server) -> None:
    with connection_log() as lines, trio.fail_after(15):
        room = await make_room(server, [1])
        ticket = await new_ticket(server, 1)
        async with open_websocket_url(chat_url(server, ticket)) as ws:
            await roundtrip(ws, room, "hello")
        record = await lines.next()
    text = record.getMessage()
    assert record.levelno == logging.INFO
    assert text.startswith("closed /chat websocket connection of user 1 from 127.0.0.1 after ")
    assert text.endswith(": 1000 (the client closed)")
    assert ticket not in text
    got = fields(record)
    assert {k: got[k] for k in ("event", "protocol", "transport", "userId", "client", "end")} == {
        "event": "connection_closed", "protocol": "/chat", "transport": "websocket",
        "userId": 1, "client": "127.0.0.1", "end": "1000 (the client closed)",
    }
    assert isinstance(got["seconds"], float) and got["seconds"] >= 0


async def test_a_chat_connection_the_server_ends_says_why(server: Server) -> None:
    with connection_log() as lines, trio.fail_after(15):
        async with chat(server, 5):
            async with server.client() as http:
                resp = await http.post("/admin/users/5/disconnect", headers=admin_headers(server))
            assert resp.json()["closed"] == 1
            record = await lines.next()
    assert record.getMessage().endswith(": 4003 disconnected by an administrator")
    assert fields(record)["userId"] == 5


async def test_behind_a_trusted_proxy_the_forwarded_client_is_logged(server: Server) -> None:
    # The test connects from 127.0.0.1, a trusted proxy in the default config.
    with connection_log() as lines, trio.fail_after(15):
        ticket = await new_ticket(server, 2)
        headers = [("X-Forwarded-For", "198.51.100.9, 203.0.113.7")]
        async with open_websocket_url(chat_url(server, ticket), extra_headers=headers):
            pass
        record = await lines.next()
    assert " from 203.0.113.7 after " in record.getMessage()
    assert fields(record)["client"] == "203.0.113.7"


async def test_an_untrusted_peer_cannot_choose_its_logged_address(
    start_server: object,
) -> None:
    server = await start_server(http={"trusted_proxies": []})  # type: ignore[operator]
    with connection_log() as lines, trio.fail_after(15):
        ticket = await new_ticket(server, 2)
        headers = [("X-Forwarded-For", "203.0.113.7")]
        async with open_websocket_url(chat_url(server, ticket), extra_headers=headers):
            pass
        record = await lines.next()
    assert fields(record)["client"] == "127.0.0.1"


@pytest.mark.parametrize("route", ["preflight", "bad token", "/ws origin"])
async def test_refusals_name_the_forwarded_client(server: Server, route: str) -> None:
    logs.refusals.reset()
    refused = logging.getLogger("chatd.refused")
    lines = Lines()
    level = refused.level
    refused.setLevel(logging.INFO)
    refused.addHandler(lines)
    forwarded = [("X-Forwarded-For", "203.0.113.8")]
    try:
        with trio.fail_after(15):
            if route == "/ws origin":
                url = f"ws://127.0.0.1:{server.running.stomp_ws_port}/ws"
                with pytest.raises(HandshakeError):
                    async with open_websocket_url(
                        url, extra_headers=[*forwarded, ("Origin", "http://evil.example")]
                    ):
                        pass
            else:
                async with server.client() as http:
                    if route == "preflight":
                        await http.options("/chat/ticket", headers=[
                            *forwarded, ("Origin", "http://evil.example")])
                    else:
                        await http.get("/chat/rooms", headers=[
                            *forwarded, ("Authorization", "Bearer nonsense")])
            record = await lines.next()
    finally:
        refused.removeHandler(lines)
        refused.setLevel(level)
    assert " from 203.0.113.8: " in record.getMessage(), record.getMessage()


@pytest.mark.parametrize("kind", ["tcp", "ws"])
async def test_stomp_sessions_are_logged_with_how_they_ended(server: Server, kind: str) -> None:
    with connection_log() as lines, trio.fail_after(15):
        async with stomp_user(server, 7, kind) as c:
            await c.disconnect()
        record = await lines.next()
        transport = "tcp" if kind == "tcp" else "websocket"
        assert record.getMessage().startswith(
            f"closed STOMP {transport} connection of user 7 from 127.0.0.1 after ")
        assert record.getMessage().endswith(": DISCONNECT")
        # Ended by the server: its ERROR's message says why.
        async with open_stomp(server, kind) as c:
            await c.send_connect("nobody", "wrong")
            await c.expect_error("Bad CONNECT", "Access refused for user 'nobody'")
        record = await lines.next()
    assert " connection of anonymous from " in record.getMessage()
    assert record.getMessage().endswith(": error frame: Bad CONNECT")
    assert "wrong" not in record.getMessage()
    assert fields(record)["protocol"] == "STOMP" and fields(record)["userId"] is None
