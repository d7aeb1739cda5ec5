"""A minimal async STOMP client for the black-box tests, over plain TCP or WebSocket.

Built on chatd's own sans-I/O codec (`chatd.stomp.FrameReader` / `FrameWriter`), so what
it reads is exactly what the spec grammar allows; everything else is plain trio sockets
and trio-websocket. It never hides a frame: `next_frame()` skips heart-beats only, and
`expect_error()` / `expect_closed()` insist that nothing else comes first.

    async with open_stomp(server, "tcp") as c:          # or "ws" / "http"
        await c.connect(login, passcode)
        await c.subscribe("/exchange/chat.direct/room.1")
        await c.publish("/exchange/chat.direct/room.1", {"content": "hi"})
        frame, body = await c.expect_message()
"""

from __future__ import annotations

import itertools
import socket
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import Any, Literal, Protocol

import orjson
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

from chatd.stomp import CLOSED, NEED_DATA, Frame, FrameReader, FrameWriter, HeartBeat

from .conftest import Server

Kind = Literal["tcp", "ws", "http"]
KINDS: tuple[Kind, ...] = ("tcp", "ws", "http")
Headers = Mapping[str, str] | Iterable[tuple[str, str]]
Json = dict[str, Any]

CHAT = "/exchange/chat.direct/"


def room_dest(room_id: int) -> str:
    return f"{CHAT}room.{room_id}"


def user_dest(user_id: int) -> str:
    return f"{CHAT}user.{user_id}"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def ws_url(server: Server, kind: Kind) -> str:
    """`ws` is the dedicated Web-STOMP listener, `http` is /ws on the main HTTP port."""
    port = server.running.stomp_ws_port if kind == "ws" else server.running.http_port
    return f"ws://127.0.0.1:{port}/ws"


class _Transport(Protocol):
    async def send(self, data: bytes) -> None: ...
    async def receive(self) -> bytes: ...  # b"" at the end of the stream


class _Tcp:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def receive(self) -> bytes:
        try:
            return await self.stream.receive_some(65536)
        except trio.BrokenResourceError:  # a reset is an end too
            return b""


class _Ws:
    def __init__(self, ws: WebSocketConnection, binary: bool) -> None:
        self.ws = ws
        self.binary = binary
        #: The Python type (str for a TEXT message, bytes for BINARY) of each message.
        self.kinds: list[type] = []

    async def send(self, data: bytes) -> None:
        if self.binary:
            await self.ws.send_message(data)
        else:
            await self.ws.send_message(data.decode("utf-8"))

    async def receive(self) -> bytes:
        try:
            msg = await self.ws.get_message()
        except ConnectionClosed:
            return b""
        self.kinds.append(type(msg))
        return msg.encode("utf-8") if isinstance(msg, str) else msg


class StompClient:
    def __init__(self, transport: _Transport, kind: str) -> None:
        self.transport = transport
        self.kind = kind
        self.reader = FrameReader()
        self.writer = FrameWriter("1.2")
        self.version: str | None = None
        self.connected: Frame | None = None
        self.heartbeats = 0  # heart-beats received so far
        self._eof = False
        self._receipts = itertools.count(1)

    # --- bytes and frames -------------------------------------------------------------

    @property
    def ws(self) -> WebSocketConnection:
        assert isinstance(self.transport, _Ws)
        return self.transport.ws

    @property
    def ws_kinds(self) -> list[type]:
        assert isinstance(self.transport, _Ws)
        return self.transport.kinds

    async def send_raw(self, data: bytes) -> None:
        await self.transport.send(data)

    async def send_frame(self, command: str, headers: Headers = (), body: bytes = b"") -> None:
        items = tuple(headers.items()) if isinstance(headers, Mapping) else tuple(headers)
        await self.transport.send(self.writer.send(Frame(command, items, body)))

    async def heartbeat(self) -> None:
        await self.transport.send(b"\n")

    async def next_event(self) -> Frame | HeartBeat | None:
        """The next frame or heart-beat; None once the server closed the connection."""
        while True:
            event = self.reader.next_event()
            if event is CLOSED:
                return None
            if event is NEED_DATA:
                assert not self._eof
                data = await self.transport.receive()
                self._eof = not data
                self.reader.receive_data(data)
                continue
            if isinstance(event, HeartBeat):
                self.heartbeats += 1
            return event  # type: ignore[return-value]

    async def next_frame(self) -> Frame:
        """The next frame, skipping heart-beats; the connection must still be open."""
        while True:
            event = await self.next_event()
            assert event is not None, "the server closed the connection"
            if isinstance(event, Frame):
                return event

    async def expect_closed(self) -> None:
        """Nothing more arrives (not even a heart-beat): only the end of the stream."""
        event = await self.next_event()
        assert event is None, f"expected the connection to close, got {event!r}"

    # --- the protocol -----------------------------------------------------------------

    async def send_connect(
        self,
        login: str | None = None,
        passcode: str | None = None,
        *,
        accept_version: str | None = "1.2",
        heart_beat: str | None = "0,0",
        host: str | None = "/",
        command: str = "CONNECT",
        extra: Headers = (),
    ) -> None:
        headers: list[tuple[str, str]] = []
        for name, value in (
            ("accept-version", accept_version),
            ("host", host),
            ("login", login),
            ("passcode", passcode),
            ("heart-beat", heart_beat),
        ):
            if value is not None:
                headers.append((name, value))
        headers += list(extra.items() if isinstance(extra, Mapping) else extra)
        await self.send_frame(command, headers)

    async def connect(
        self, login: str | None = None, passcode: str | None = None, **kw: Any
    ) -> Frame:
        """CONNECT and insist on CONNECTED; switches the codec to the negotiated version."""
        await self.send_connect(login, passcode, **kw)
        frame = await self.next_frame()
        assert frame.command == "CONNECTED", (frame, frame.body)
        self.connected = frame
        self.version = frame.get("version", "1.0")
        self.reader.version = self.version
        self.writer.version = self.version
        return frame

    def receipt_id(self) -> str:
        return f"r-{next(self._receipts)}"

    async def request(self, command: str, headers: Headers = (), body: bytes = b"") -> list[Frame]:
        """Send a frame with a fresh `receipt` and wait for its RECEIPT; returns the frames
        that arrived before the RECEIPT (e.g. the MESSAGE of one's own SEND)."""
        rid = self.receipt_id()
        items = list(headers.items() if isinstance(headers, Mapping) else headers)
        await self.send_frame(command, [*items, ("receipt", rid)], body)
        before: list[Frame] = []
        while True:
            frame = await self.next_frame()
            if frame.command == "RECEIPT" and frame.get("receipt-id") == rid:
                assert frame.headers == (("receipt-id", rid),), frame
                assert frame.body == b""
                return before
            assert frame.command != "ERROR", (frame, frame.body)
            before.append(frame)

    async def subscribe(
        self, destination: str, sub_id: str | None = None, ack: str | None = None
    ) -> str:
        """SUBSCRIBE with a receipt; nothing may arrive before the RECEIPT."""
        sub_id = sub_id or f"sub-{destination.rsplit('/', 1)[-1]}"
        headers = [("destination", destination), ("id", sub_id)]
        if ack is not None:
            headers.append(("ack", ack))
        assert await self.request("SUBSCRIBE", headers) == []
        return sub_id

    async def unsubscribe(self, sub_id: str) -> None:
        assert await self.request("UNSUBSCRIBE", {"id": sub_id}) == []

    async def publish(
        self,
        destination: str,
        body: Json | bytes,
        *,
        receipt: bool = True,
        headers: Headers = (),
    ) -> list[Frame]:
        """SEND (a dict goes as JSON); with `receipt`, wait for it (see `request`)."""
        data = orjson.dumps(body) if isinstance(body, dict) else body
        items = [("destination", destination), ("content-type", "application/json")]
        items += list(headers.items() if isinstance(headers, Mapping) else headers)
        if receipt:
            return await self.request("SEND", items, data)
        await self.send_frame("SEND", items, data)
        return []

    async def expect_message(self, event_type: str | None = None) -> tuple[Frame, Json]:
        """The next frame must be a MESSAGE with a JSON body (of `event_type`, if given)."""
        frame = await self.next_frame()
        assert frame.command == "MESSAGE", (frame, frame.body)
        body = orjson.loads(frame.body)
        if event_type is not None:
            assert body.get("type") == event_type, body
        return frame, body

    async def expect_error(
        self,
        message: str,
        body: str | None = None,
        *,
        receipt_id: str | None = None,
        closed: bool = True,
    ) -> Frame:
        """The next frame is an ERROR with this `message` header (and body, if given) and
        `receipt-id` exactly `receipt_id` (absent when None); then the connection closes."""
        frame = await self.next_frame()
        assert frame.command == "ERROR", (frame, frame.body)
        assert frame.get("message") == message, (frame, frame.body)
        if body is not None:
            assert frame.body.decode() == body, frame.body
        if frame.body:
            assert frame.get("content-type") == "text/plain", frame
            assert frame.get("content-length") == str(len(frame.body)), frame
        assert frame.get("receipt-id") == receipt_id, frame
        if closed:
            await self.expect_closed()
        return frame

    async def disconnect(self) -> None:
        """DISCONNECT with a receipt: the RECEIPT comes first, then the close."""
        assert await self.request("DISCONNECT") == []
        await self.expect_closed()


# --- opening connections ------------------------------------------------------------------


@asynccontextmanager
async def open_stomp(
    server: Server,
    kind: Kind = "tcp",
    *,
    subprotocols: Iterable[str] | None = ("v12.stomp",),
    origin: str | None = None,
    binary: bool = False,
) -> AsyncIterator[StompClient]:
    """A raw STOMP connection (nothing sent yet) to one of the three STOMP endpoints."""
    if kind == "tcp":
        stream = await trio.open_tcp_stream("127.0.0.1", server.running.stomp_tcp_port)
        async with stream:
            yield StompClient(_Tcp(stream), kind)
        return
    headers = [(b"Origin", origin.encode())] if origin is not None else None
    async with open_websocket_url(
        ws_url(server, kind),
        subprotocols=list(subprotocols) if subprotocols is not None else None,
        extra_headers=headers,
        disconnect_timeout=2,
    ) as ws:
        yield StompClient(_Ws(ws, binary), kind)


@asynccontextmanager
async def open_raw_tcp(server: Server, rcvbuf: int = 4096) -> AsyncIterator[StompClient]:
    """A TCP STOMP connection with a tiny receive buffer, for a consumer that never reads."""
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    await sock.connect(("127.0.0.1", server.running.stomp_tcp_port))
    async with trio.SocketStream(sock) as stream:
        yield StompClient(_Tcp(stream), "tcp")


async def chatws_connect(server: Server, user_id: int, **claims: Any) -> Json:
    """POST /chat-ws/connect for the user; the whole JSON answer."""
    async with server.client() as http:
        resp = await http.post("/chat-ws/connect", headers=bearer(server.token(user_id, **claims)))
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


async def issue_login(server: Server, user_id: int, **claims: Any) -> tuple[str, str]:
    info = (await chatws_connect(server, user_id, **claims))["connectionInfo"]
    return info["username"], info["password"]


@asynccontextmanager
async def stomp_user(
    server: Server,
    user_id: int,
    kind: Kind = "tcp",
    *,
    rooms: Iterable[int] = (),
    user_queue: bool = False,
    **connect_kw: Any,
) -> AsyncIterator[StompClient]:
    """A user connected with a login issued by /chat-ws/connect, subscribed (with receipts)
    to `rooms` and, with `user_queue`, to its own user destination."""
    login, passcode = await issue_login(server, user_id)
    async with open_stomp(server, kind) as c:
        await c.connect(login, passcode, **connect_kw)
        for room in rooms:
            await c.subscribe(room_dest(room))
        if user_queue:
            await c.subscribe(user_dest(user_id))
        yield c


async def post_json(
    server: Server, path: str, user_id: int | None, body: Any = None, **kw: Any
) -> Any:
    """POST to the HTTP API as `user_id` (None: no token); returns the httpx response."""
    headers = bearer(server.token(user_id)) if user_id is not None else {}
    async with server.client() as http:
        if body is None:
            return await http.post(path, headers=headers, **kw)
        return await http.post(path, headers=headers, json=body, **kw)


async def make_room(
    server: Server, members: Iterable[int], *, public: bool = False, name: str = "room"
) -> int:
    room = await server.state.service.create_room(name, public, list(members))
    return int(room.id)


async def next_event_of(
    c: StompClient, event_type: str, skip: Iterable[str] = ("user_status_changed",)
) -> tuple[Frame, Json]:
    """The next MESSAGE of `event_type`, passing over only events of the `skip` types
    (presence comes and goes as the test's own clients connect)."""
    skip = set(skip)
    while True:
        frame, body = await c.expect_message()
        if body["type"] == event_type:
            return frame, body
        assert body["type"] in skip, body


_carry_on = itertools.count(1)


async def assert_carries_on(
    server: Server, room: int, bystander: StompClient, user_id: int = 2, kind: Kind = "tcp"
) -> None:
    """The server and the other clients carry on: a new connection can CONNECT, SUBSCRIBE
    and SEND (and receives its own message), and `bystander`, connected all along and
    subscribed to `room`, receives that message too."""
    content = f"carry on {next(_carry_on)}"
    async with stomp_user(server, user_id, kind, rooms=[room]) as fresh:
        before = await fresh.publish(room_dest(room), {"content": content})
        assert [orjson.loads(f.body)["message"]["content"] for f in before] == [content]
        await fresh.disconnect()
    _, body = await next_event_of(bystander, "new_message")
    assert body["message"]["content"] == content
