"""A WebSocket connection over a trio stream, on chatd.net.websocket, for /chat and STOMP.

Every write, pongs and the close frame included, goes through one WireWriter, so frames
never interleave, and an idle socket is written directly (see wire.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import trio

from chatd.net import websocket as ws
from chatd.net.connections import close_with
from chatd.net.wire import WireWriter


class Upgrade:
    """A handshake handed from the listener to a protocol. `take` empties it: a
    coroutine frame keeps its arguments for the connection's whole life, and with ten
    thousand connections a kept request head is ten megabytes."""

    __slots__ = ("_request", "_leftover")

    def __init__(self, request: ws.Request, leftover: bytes) -> None:
        self._request: ws.Request | None = request
        self._leftover = leftover

    def take(self) -> tuple[ws.Request, bytes]:
        request, leftover = self._request, self._leftover
        assert request is not None, "an upgrade is taken once"
        self._request, self._leftover = None, b""
        return request, leftover


class WebSocketTransport:
    __slots__ = (
        "stream",
        "parser",
        "out",
        "closed",
        "peer_closed",
        "close_code",
        "close_reason",
        "_events",
        "last_seen",
    )
    framing = "ws"

    def __init__(
        self,
        stream: trio.SocketStream,
        parser: ws.FrameParser,
        limit: int,
        max_bytes: int | None = None,
    ) -> None:
        self.stream = stream
        self.parser = parser
        # `limit` frames and `max_bytes` bytes: [chat] outbox_messages and outbox_bytes.
        self.out = WireWriter(limit, stream, stream.socket.fileno(), max_bytes)
        self.closed = False  # our close frame is queued or sent
        self.peer_closed = False  # the peer's close frame or EOF came: nothing more will
        # The close code we sent (the peer's, echoed, when it closed first) and our reason,
        # for the connection log; None while open, and when the connection was just lost.
        self.close_code: int | None = None
        self.close_reason = ""
        self.last_seen = trio.current_time()
        self._events: list[ws.Message | ws.Ping | ws.Close] = []

    async def receive(self) -> bytes | None:
        """The next whole message; None once the peer closed or broke the protocol."""
        events = self._events
        while True:
            while events:
                ev = events.pop(0)
                if isinstance(ev, ws.Message):
                    return ev.data
                if isinstance(ev, ws.Ping):
                    self.out.offer(ws.encode_frame(ws.OP_PONG, ev.payload))
                else:
                    self.peer_closed = True
                    self.close(ws.CLOSE_NORMAL if ev.code == ws.CLOSE_NO_STATUS else ev.code)
                    return None
            try:
                events.extend(self.parser.events())
            except ws.ProtocolError as exc:
                self.close(exc.code, exc.message)
                return None
            if events:
                continue
            # What `self.stream.receive_some` does, by hand: a connection waits here for
            # its whole life, and trio's layers above the wait (the stream's and the
            # socket's frames, an error-translating context manager, the BlockingIOError
            # being handled while it waits) held 1.8 KB more per connection
            # (bench/conn_heap.py). The checkpoints are trio's: cancelled before a byte is
            # taken, never after.
            await trio.lowlevel.checkpoint_if_cancelled()
            try:
                # No more than one whole message of the current limit: before a STOMP
                # login that is a few KB, so a flood of connections sending megabytes
                # holds a few KB each while it is refused, not 64 KiB.
                chunk = os.read(
                    self.stream.socket.fileno(), min(65536, self.parser.max_message + 14)
                )
            except BlockingIOError:
                chunk = None  # waited for below: inside `except`, the error would be kept
            except OSError:  # reset by the peer, or closed here
                self.peer_closed = True
                return None
            if chunk is None:
                try:
                    await trio.lowlevel.wait_readable(self.stream.socket)
                except trio.ClosedResourceError:
                    self.peer_closed = True
                    return None
                continue
            await trio.lowlevel.cancel_shielded_checkpoint()
            if not chunk:
                self.peer_closed = True
                return None
            self.last_seen = trio.current_time()
            self.parser.receive_data(chunk)

    def take_ready_messages(self) -> list[bytes]:
        """The data messages `receive` parsed along with the one it returned, up to the
        first control frame, without reading the socket."""
        events = self._events
        taken: list[bytes] = []
        while events:
            ev = events[0]
            if not isinstance(ev, ws.Message):
                break
            taken.append(ev.data)
            del events[0]
        return taken

    def keepalive(self, now: float, interval: float) -> None:
        """Called every `interval` seconds: ping a connection that has been quiet for an
        interval, and cut one that stayed silent (no pong either) for two more."""
        quiet = now - self.last_seen
        if quiet >= 3 * interval:
            self.abort(ws.CLOSE_GOING_AWAY, "no answer to pings")
        elif quiet >= interval:
            self.out.offer(ws.encode_frame(ws.OP_PING, b""))

    @staticmethod
    def text_frame(data: bytes) -> bytes:
        return ws.frame_header(ws.OP_TEXT, len(data)) + data

    @staticmethod
    def wire(data: bytes, utf8: bool = False) -> bytes:
        """Text when the bytes are UTF-8 (`utf8`: known to be, so not checked), binary
        otherwise."""
        opcode = ws.OP_TEXT if utf8 or _is_utf8(data) else ws.OP_BINARY
        return ws.frame_header(opcode, len(data)) + data

    def close(self, code: int, reason: str = "") -> None:
        """Queue the close frame after what is already queued; the writer then stops."""
        if not self.closed:
            self.closed = True
            self.close_code, self.close_reason = code, reason
            self.out.offer(ws.close_frame(code, reason))
            self.out.close_soon()

    def abort(self, code: int, reason: str) -> None:
        """Cut a consumer that stopped reading: queued messages are dropped, the close
        frame follows whatever frame was already begun, and the writer gives up soon."""
        if not self.closed:
            self.closed = True
            self.close_code, self.close_reason = code, reason
            self.out.abort(ws.close_frame(code, reason))
        else:
            self.out.abort()

    async def aclose(self, drain: bool = True) -> None:
        """Our close frame (unless queued already), then close so that the peer reads
        it, and what came before it, even while it is still sending: the drain of
        close_with, which ends at the peer's own close frame (`drain`: see close_with)."""
        if self.out.broken:
            await self.stream.aclose()
            return
        answer = b""
        if not self.closed:
            self.closed = True
            answer = ws.close_frame(ws.CLOSE_NORMAL)
        if self.peer_closed or any(isinstance(ev, ws.Close) for ev in self._events):
            # The peer said it is done: it closes once it has our close frame and EOF.
            await close_with(self.stream, answer, drain=drain)
        else:
            await close_with(self.stream, answer, self._peer_done(), drain=drain)

    def _peer_done(self) -> Callable[[bytes], bool]:
        """What tells the drain that the peer's close frame came among what it still
        sends. After a protocol error the bytes cannot be read as frames any more; the
        drain then waits for the EOF."""
        parser = self.parser
        parsing = True

        def peer_done(chunk: bytes) -> bool:
            nonlocal parsing
            if not parsing:
                return False
            parser.receive_data(chunk)
            try:
                return any(isinstance(ev, ws.Close) for ev in parser.events())
            except ws.ProtocolError:
                parsing = False
                return False

        return peer_done


def _is_utf8(data: bytes) -> bool:
    if data.isascii():
        return True
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def ws_end(ws: WebSocketTransport) -> str:
    """How a WebSocket connection ended, for the connection log."""
    if ws.close_code is None:
        return "connection lost"
    end = f"{ws.close_code} {ws.close_reason}".rstrip()
    return f"{end} (the client closed)" if ws.peer_closed else end
