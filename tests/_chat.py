"""Helpers for the black-box tests of the ticket protocol and the HTTP API.

Everything here talks to a real server over loopback with real clients (httpx,
trio-websocket) or, for the slow-consumer test, a raw socket speaking WebSocket by hand.
"""

from __future__ import annotations

import base64
import os
import socket
import struct
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlencode

import orjson
import trio
from trio_websocket import CloseReason, ConnectionClosed, WebSocketConnection, open_websocket_url

from .conftest import Server

Json = dict[str, Any]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def admin_headers(server: Server) -> dict[str, str]:
    return bearer(server.admin_token())


async def new_ticket(server: Server, user_id: int, username: str | None = None, **kw: Any) -> str:
    """POST /chat/ticket the way the guide does it: the JWT in an `accessToken` header."""
    async with server.client() as http:
        resp = await http.post(
            "/chat/ticket", headers={"accessToken": server.token(user_id, username, **kw)}
        )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert set(body) == {"ticket", "expiresIn"}
    return str(body["ticket"])


async def create_room(
    server: Server, members: list[int], name: str = "room", public: bool = False
) -> int:
    async with server.client() as http:
        resp = await http.post(
            "/admin/rooms",
            json={"name": name, "members": members, "public": public},
            headers=admin_headers(server),
        )
    assert resp.status_code == 201, resp.text
    return int(resp.json()["id"])


async def add_member(server: Server, room_id: int, user_id: int) -> Json:
    async with server.client() as http:
        resp = await http.post(
            f"/admin/rooms/{room_id}/members",
            json={"userId": user_id},
            headers=admin_headers(server),
        )
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


async def remove_member(server: Server, room_id: int, user_id: int) -> Json:
    async with server.client() as http:
        resp = await http.delete(
            f"/admin/rooms/{room_id}/members/{user_id}", headers=admin_headers(server)
        )
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


async def history(server: Server, user_id: int, room_id: int, limit: int = 200) -> list[Json]:
    """A room's stored messages, oldest first."""
    async with server.client() as http:
        resp = await http.get(
            f"/chat/rooms/{room_id}/messages",
            params={"limit": limit},
            headers={"accessToken": server.token(user_id)},
        )
    assert resp.status_code == 200, resp.text
    return list(reversed(resp.json()["messages"]))


def chat_url(server: Server, ticket: str | None, since: int | str | None = None) -> str:
    query: dict[str, str] = {}
    if ticket is not None:
        query["ticket"] = ticket
    if since is not None:
        query["since"] = str(since)
    return f"{server.ws_base}/chat" + (f"?{urlencode(query)}" if query else "")


@asynccontextmanager
async def chat(
    server: Server,
    user_id: int,
    *,
    since: int | None = None,
    origin: str | None = None,
    username: str | None = None,
    **token_claims: Any,
) -> AsyncIterator[WebSocketConnection]:
    """Fetch a ticket for the user and open /chat with it (one device)."""
    ticket = await new_ticket(server, user_id, username, **token_claims)
    headers = [("Origin", origin)] if origin is not None else None
    async with open_websocket_url(chat_url(server, ticket, since), extra_headers=headers) as ws:
        yield ws


async def send(ws: WebSocketConnection, room_id: int | Any, content: Any, **extra: Any) -> None:
    await ws.send_message(orjson.dumps({"roomId": room_id, "content": content, **extra}).decode())


async def recv(ws: WebSocketConnection) -> Json:
    data = await ws.get_message()
    obj = orjson.loads(data)
    assert isinstance(obj, dict), obj
    return obj


async def recv_message(ws: WebSocketConnection) -> Json:
    """The next frame, which must be a chat message (not an error reply)."""
    msg = await recv(ws)
    assert msg.get("type") != "error", msg
    return msg


async def recv_error(ws: WebSocketConnection) -> Json:
    msg = await recv(ws)
    assert msg.get("type") == "error", msg
    assert set(msg) >= {"type", "code", "message"}, msg
    assert isinstance(msg["message"], str) and msg["message"], msg
    return msg


async def expect_close(ws: WebSocketConnection) -> CloseReason:
    """Wait for the server to close; anything received before the close is a failure."""
    try:
        data = await ws.get_message()
    except ConnectionClosed as exc:
        assert exc.reason is not None
        return exc.reason
    raise AssertionError(f"expected a close, got {data!r}")


async def close_code_for(server: Server, url: str, origin: str | None = None) -> CloseReason:
    headers = [("Origin", origin)] if origin is not None else None
    async with open_websocket_url(url, extra_headers=headers) as ws:
        return await expect_close(ws)


async def roundtrip(ws: WebSocketConnection, room_id: int, content: str, **extra: Any) -> Json:
    """Send a message and wait for its echo on the same socket (proves the socket works)."""
    await send(ws, room_id, content, **extra)
    msg = await recv_message(ws)
    assert msg["content"] == content and msg["roomId"] == room_id, msg
    return msg


class Gate:
    """Holds the store's writer thread inside one job until released: writes queued
    meanwhile are committed together when it lets go. Use as
    `nursery.start_soon(store.write, gate.job)`, then `await gate.wait_entered()`."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def job(self, _conn: object) -> None:
        self.entered.set()
        self.release.wait(timeout=10)

    async def wait_entered(self) -> None:
        await trio.to_thread.run_sync(self.entered.wait)


# --- a WebSocket client by hand, for a peer that never reads ------------------------------


class RawWebSocket:
    """A WebSocket client on a plain trio socket with a tiny receive buffer. It reads
    only when told to, so the server's writes back up as they would for a stalled phone."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""

    @classmethod
    async def connect(cls, server: Server, path: str, rcvbuf: int = 4096) -> RawWebSocket:
        sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        await sock.connect(("127.0.0.1", server.running.http_port))
        self = cls(trio.SocketStream(sock))
        key = base64.b64encode(os.urandom(16)).decode()
        await self.stream.send_all(
            (
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        while b"\r\n\r\n" not in self.buffer:
            chunk = await self.stream.receive_some(4096)
            assert chunk, "connection closed during the handshake"
            self.buffer += chunk
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        return self

    async def _fill(self, n: int) -> bool:
        while len(self.buffer) < n:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                return False
            self.buffer += chunk
        return True

    async def read_frame(self) -> tuple[int, bytes] | None:
        """(opcode, payload) of the next whole frame, or None at EOF."""
        if not await self._fill(2):
            assert not self.buffer, f"EOF inside a frame header: {self.buffer!r}"
            return None
        b0, b1 = self.buffer[0], self.buffer[1]
        assert b0 & 0x80, "fragmented frames are not expected from chatd"
        assert not b1 & 0x80, "a server must not mask its frames"
        length, offset = b1 & 0x7F, 2
        if length == 126:
            assert await self._fill(4)
            (length,) = struct.unpack("!H", self.buffer[2:4])
            offset = 4
        elif length == 127:
            assert await self._fill(10)
            (length,) = struct.unpack("!Q", self.buffer[2:10])
            offset = 10
        assert await self._fill(offset + length), "EOF inside a frame"
        payload = self.buffer[offset : offset + length]
        self.buffer = self.buffer[offset + length :]
        return b0 & 0x0F, payload

    async def send_texts(self, payloads: list[bytes]) -> None:
        """Several text messages, each a masked frame (RFC 6455 5.3: a client masks
        every frame), in one `send_all`: on loopback the server reads them together."""
        frames = []
        for payload in payloads:
            n = len(payload)
            if n < 126:
                head = struct.pack("!BB", 0x81, 0x80 | n)
            elif n < 1 << 16:
                head = struct.pack("!BBH", 0x81, 0x80 | 126, n)
            else:
                head = struct.pack("!BBQ", 0x81, 0x80 | 127, n)
            key = os.urandom(4)
            mask = (key * (n // 4 + 1))[:n]
            masked = (int.from_bytes(payload, "big") ^ int.from_bytes(mask, "big")).to_bytes(
                n, "big"
            )
            frames.append(head + key + masked)
        await self.stream.send_all(b"".join(frames))

    async def aclose(self) -> None:
        await self.stream.aclose()
