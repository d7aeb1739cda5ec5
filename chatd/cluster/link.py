"""One STOMP connection from this node to RabbitMQ's STOMP plugin, over TCP.

chatd's own sans-I/O codec (`chatd.stomp`) speaks it, as a client this time (the way
Spring's broker relay talks to RabbitMQ): no AMQP library, nothing that needs asyncio.
A `Link` is connected by `Link.open`, then `run` reads frames and writes what `send`
queued until the connection ends, which it does by raising `LinkLost`. Heart-beats both
ways find a dead peer. Like a session's `WireWriter`, `send` writes straight to the idle
socket, and only what the kernel does not take waits for the write loop. What it queues
is bounded in bytes: past the bound a frame is dropped and counted, never held (the other
nodes catch up from the store). A frame from RabbitMQ past the reader's limits (a client
of the vhost published it: no node sends such a frame) is passed over and counted, and the
connection stays: one outsider's frame, copied to every node's queue, must not take the
whole cluster off the bus.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Awaitable, Callable, Sequence

import trio

from chatd.config import BusAddress
from chatd.ops.logs import RateLimitedLog
from chatd.stomp import CLOSED, NEED_DATA, Frame, FrameReader, FrameWriter, StompError

log = logging.getLogger("chatd.cluster")

CONNECT_TIMEOUT = 10.0
# Heart-beats asked of RabbitMQ and promised to it (ms); a peer silent for
# HEARTBEAT_TOLERANCE times its interval is taken for dead.
HEARTBEAT_MS = 5000
HEARTBEAT_TOLERANCE = 2.5
MAX_FRAME_BYTES = 64 * 1024 * 1024
# Anyone allowed to publish on the vhost's amq.direct can put headers of their own on a
# frame, and RabbitMQ passes them on: a long one is bounded by the frame, not refused.
MAX_HEADER_BYTES = 1024 * 1024
_READ = 65536


class LinkLost(Exception):
    """The connection to RabbitMQ ended or could not be made; the message says why
    (never with the password)."""


class Link:
    def __init__(self, stream: trio.SocketStream, max_pending: int) -> None:
        self._stream = stream
        self._fd = stream.socket.fileno()
        self._reader = FrameReader(
            max_frame_size=MAX_FRAME_BYTES,
            max_headers=1000,
            max_header_length=MAX_HEADER_BYTES,
            skip_oversized=True,
        )
        self._skipped_seen = 0
        self._skipped_log = RateLimitedLog(log, 60.0, trio.current_time)
        self._writer = FrameWriter()
        self._pending = bytearray()
        self._has_pending = trio.Event()
        self._writing = False  # the write loop is mid-send: nothing may go around it
        self._written_at = trio.current_time()  # for heart-beats: when we last wrote
        self._heard_at = self._written_at  # and when RabbitMQ last sent something
        self.max_pending = max_pending
        self.dropped = 0  # frames not queued: the bound was reached
        self._send_every: float | None = None
        self._silent_for: float | None = None
        self._receipts = 0
        self._receipt_waits: dict[str, trio.Event] = {}
        self._closed = False
        self._flushed = trio.Event()
        self.error: str | None = None  # RabbitMQ's ERROR frame that ended the link, if one

    @property
    def skipped(self) -> int:
        """Frames from RabbitMQ passed over for their size."""
        return self._reader.skipped

    @classmethod
    async def open(cls, address: BusAddress, max_pending: int) -> Link:
        """Connect and log in; LinkLost when RabbitMQ cannot be reached or refuses."""
        where = f"{address.host}:{address.port}"
        try:
            with trio.fail_after(CONNECT_TIMEOUT):
                stream = await trio.open_tcp_stream(address.host, address.port)
        except (OSError, trio.TooSlowError) as exc:
            raise LinkLost(f"cannot connect to {where}: {exc or 'timed out'}") from None
        link = cls(stream, max_pending)
        try:
            with trio.fail_after(CONNECT_TIMEOUT):
                await link._login(address)
        except trio.TooSlowError:
            await link.aclose()
            raise LinkLost(f"{where} did not answer CONNECT in time") from None
        except BaseException:
            await link.aclose()
            raise
        return link

    async def _login(self, address: BusAddress) -> None:
        connect = Frame(
            "CONNECT",
            (
                ("accept-version", "1.2"),
                ("host", address.vhost),
                ("login", address.login),
                ("passcode", address.passcode),
                ("heart-beat", f"{HEARTBEAT_MS},{HEARTBEAT_MS}"),
            ),
        )
        await self._send_now(self._writer.send(connect))
        frame = await self._next_frame()
        if frame.command == "ERROR":
            # RabbitMQ's own words ("Bad CONNECT", "Access refused"); it never repeats
            # the passcode.
            raise LinkLost(f"RabbitMQ refused the login: {frame.get('message', '')}")
        if frame.command != "CONNECTED":
            raise LinkLost(f"RabbitMQ answered CONNECT with {frame.command}")
        sx, _, sy = (frame.get("heart-beat") or "0,0").partition(",")
        server_sends = int(sx) if sx.isdigit() else 0
        server_wants = int(sy) if sy.isdigit() else 0
        if server_wants:
            self._send_every = max(server_wants, HEARTBEAT_MS) / 1000 / 2
        if server_sends:
            self._silent_for = max(server_sends, HEARTBEAT_MS) / 1000 * HEARTBEAT_TOLERANCE

    async def _send_now(self, data: bytes) -> None:
        self._writing = True
        try:
            await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise LinkLost(f"connection lost while writing: {exc}") from None
        finally:
            self._writing = False
        self._written_at = trio.current_time()

    async def _next_frame(self) -> Frame:
        while (frame := self._buffered_frame()) is None:
            await self._receive()
        return frame

    async def _receive(self) -> None:
        # What `SocketStream.receive_some` does, by hand, as a session's transport reads
        # (chatd.net.ws_transport): every frame from the bus wakes the node from sleep,
        # its caches cold, and each layer of trio's above the wait (the stream's, the
        # socket's, their context managers) costs there several times what it costs
        # warm. The checkpoints are trio's (cancelled before a byte is taken, never
        # after), but a read after the wait is not followed by one: the wait was one.
        await trio.lowlevel.checkpoint_if_cancelled()
        waited = False
        while True:
            try:
                data = os.read(self._fd, _READ)
                break
            except BlockingIOError:
                pass
            except OSError as exc:
                raise LinkLost(f"connection lost while reading: {exc}") from None
            try:
                await trio.lowlevel.wait_readable(self._stream.socket)
            except trio.ClosedResourceError as exc:
                raise LinkLost(f"connection lost while reading: {exc}") from None
            waited = True
        if not waited:
            await trio.lowlevel.cancel_shielded_checkpoint()
        self._heard_at = trio.current_time()
        try:
            self._reader.receive_data(data)
        except RuntimeError:
            raise LinkLost("RabbitMQ closed the connection") from None

    # --- sending ------------------------------------------------------------------

    def send(self, frame: Frame) -> bool:
        """Queue `frame`; False (and counted) when the queue is over its bound."""
        data = self._writer.send(frame)
        if self._closed or len(self._pending) + len(data) > self.max_pending:
            self.dropped += 1
            return False
        if not self._pending and not self._writing:
            try:
                n = os.write(self._fd, data)
            except BlockingIOError:
                n = 0
            except OSError:
                n = 0  # broken: the write loop's send finds out and ends the link
            if n:
                self._written_at = trio.current_time()
                if n == len(data):
                    return True
                data = data[n:]
        self._pending += data
        self._has_pending.set()
        return True

    async def subscribe(
        self,
        destinations: str | Sequence[str],
        sub_id: str,
        max_queue_bytes: int = 0,
        queue: str = "",
    ) -> None:
        """Subscribe to each destination, and return once RabbitMQ has bound them all (a
        RECEIPT after the last). With `queue`, every one binds that queue, declared
        exclusive to this connection: RabbitMQ refuses it (an ERROR, `resource_locked`,
        which ends the link) while another connection holds it. With `max_queue_bytes`,
        the queue keeps no more than that many bytes of frames not yet sent here,
        dropping the oldest (a node too slow to read must not fill RabbitMQ's memory: at
        its alarm RabbitMQ blocks every publisher, the other nodes too)."""
        if isinstance(destinations, str):
            destinations = [destinations]
        shared: list[tuple[str, str]] = [("ack", "auto")]
        if max_queue_bytes:
            shared += [("x-max-length-bytes", str(max_queue_bytes)), ("x-overflow", "drop-head")]
        if queue:
            shared += [("x-queue-name", queue), ("exclusive", "true")]
        self._receipts += 1
        receipt = f"r{self._receipts}"
        done = self._receipt_waits[receipt] = trio.Event()
        last = len(destinations) - 1
        for i, destination in enumerate(destinations):
            headers = [("destination", destination), ("id", f"{sub_id}-{i}" if last else sub_id)]
            if i == last:
                headers.append(("receipt", receipt))
            self.send(Frame("SUBSCRIBE", (*headers, *shared)))
        with trio.fail_after(CONNECT_TIMEOUT):
            await done.wait()

    # --- running --------------------------------------------------------------------

    async def run(self, on_frames: Callable[[list[Frame]], None]) -> str:
        """Read and write until the connection ends; returns why it ended."""
        why = "closed"

        async def guarded(loop: Callable[[], Awaitable[None]]) -> None:
            nonlocal why
            try:
                await loop()
            except LinkLost as exc:
                why = str(exc)
            nursery.cancel_scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(guarded, self._write_loop)
            nursery.start_soon(guarded, self._watch_silence)
            nursery.start_soon(guarded, functools.partial(self._read_loop, on_frames))
        return why

    async def _read_loop(self, on_frames: Callable[[list[Frame]], None]) -> None:
        while True:
            # Every frame one read brought, handed over together: the receiver delivers
            # them as one batch (each connection's frames in one write).
            frames = [await self._next_frame()]
            while (more := self._buffered_frame()) is not None:
                frames.append(more)
            messages = []
            for frame in frames:
                if frame.command == "RECEIPT":
                    waiter = self._receipt_waits.pop(frame.get("receipt-id") or "", None)
                    if waiter is not None:
                        waiter.set()
                elif frame.command == "ERROR":
                    self.error = frame.get("message", "") or ""
                    raise LinkLost(f"RabbitMQ sent an ERROR frame: {self.error}")
                elif frame.command == "MESSAGE":
                    messages.append(frame)
            if messages:
                on_frames(messages)

    async def _watch_silence(self) -> None:
        """RabbitMQ silent for `_silent_for` (no frame, no heart-beat) is taken for dead.
        One timer beside the reads, not a deadline around each: every frame from the bus
        is a read, and most come to a node asleep, its caches cold."""
        if self._silent_for is None:
            await trio.sleep_forever()
        silent_for = self._silent_for
        while (due := self._heard_at + silent_for) > trio.current_time():
            await trio.sleep_until(due)
        raise LinkLost(f"RabbitMQ silent for {silent_for:g} s")

    def _buffered_frame(self) -> Frame | None:
        """The next frame already received (heart-beats pass), or None when more bytes
        are needed."""
        while True:
            try:
                event = self._reader.next_event()
            except StompError as exc:
                # A frame this codec cannot read leaves it broken: the connection ends
                # (and is made again) rather than the node.
                raise LinkLost(f"unreadable frame from RabbitMQ: {exc}") from None
            if self._reader.skipped != self._skipped_seen:
                self._report_skipped()
            if isinstance(event, Frame):
                return event
            if event is CLOSED:
                raise LinkLost("RabbitMQ closed the connection")
            if event is NEED_DATA:
                return None

    def _report_skipped(self) -> None:
        self._skipped_seen = self._reader.skipped
        self._skipped_log.warning(
            "cluster: passed over a frame from RabbitMQ past this node's limits (%s):"
            " no chatd node sends one, so something else publishes on the vhost; give the"
            " cluster a vhost of its own",
            self._reader.skip_reason,
        )

    async def flushed(self) -> None:
        """Returns once everything queued so far has been written."""
        while self._pending:
            self._flushed = trio.Event()
            await self._flushed.wait()

    async def _write_loop(self) -> None:
        while True:
            if not self._pending:
                self._has_pending = trio.Event()
                if self._send_every is None:
                    await self._has_pending.wait()
                    continue
                # A heart-beat once nothing was written for `_send_every`, directly
                # (`send`) or here.
                with trio.move_on_at(self._written_at + self._send_every):
                    await self._has_pending.wait()
                if not self._pending:
                    if trio.current_time() >= self._written_at + self._send_every:
                        await self._send_now(self._writer.heartbeat())
                    continue
            data = bytes(self._pending)
            self._pending.clear()
            await self._send_now(data)
            if not self._pending:
                self._flushed.set()

    async def aclose(self) -> None:
        self._closed = True
        with trio.move_on_after(1) as scope:
            scope.shield = True
            await self._stream.aclose()
