"""One STOMP connection: version and heart-beat negotiation, login, subscriptions, SEND,
receipts, transactions. Transports (WebSocket, TCP) only move bytes; this decides.

Every ERROR frame ends the connection, as the STOMP specification requires.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import re
import secrets
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import trio

from chatd.auth import AuthError
from chatd.model import Event, Outgoing, User
from chatd.net import wire
from chatd.net.websocket import CLOSE_SLOW_CONSUMER
from chatd.net.wire import WireWriter
from chatd.service import ServiceError
from chatd.state import ServerState
from chatd.stomp import (
    CLOSED,
    NEED_DATA,
    Frame,
    FrameReader,
    FrameTemplate,
    FrameWriter,
    HeartBeat,
    LocalProtocolError,
    RemoteProtocolError,
)
from chatd.stomp.general_broker import BrokerError, Consumer
from chatd.validation import InvalidMessage, parse_json_object, stomp_send_body

log = logging.getLogger("chatd.stomp")

VERSIONS = ("1.0", "1.1", "1.2")
SERVER_NAME = "chatd/0.1"
CHAT_EXCHANGE = "/exchange/chat.direct/"
CONNECT_TIMEOUT = 10.0
# RabbitMQ's limits: a client cannot park unbounded work in server memory.
MAX_TRANSACTIONS = 16
MAX_TX_FRAMES = 1024

_CHAT_DEST = re.compile(r"/exchange/chat\.direct/(room|user)\.([1-9][0-9]{0,17})")
_message_ids = itertools.count(1)


class StompTransport(Protocol):
    out: WireWriter
    framing: str  # how `wire` wraps a frame: equal framings give equal bytes

    def wire(self, frame: bytes, utf8: bool = False) -> bytes: ...
    async def receive(self) -> bytes | None: ...
    async def aclose(self) -> None: ...


class Fatal(Exception):
    """Answer with an ERROR frame and close."""

    def __init__(self, message: str, detail: str = "", **headers: str) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail
        self.headers = headers


@dataclass(eq=False, slots=True)
class Subscription:
    session: StompSession
    id: str
    destination: str
    topic: str
    ack: str
    line: bytes  # the encoded `subscription:` header, built once
    key: tuple[str, str]  # the event cache key of its MESSAGE template: (destination, version)
    out: WireWriter
    # The event cache key of the wire bytes of its MESSAGE: subscriptions with the same
    # id, destination, version, ack mode and framing get the very same bytes. Clients of
    # one app number their subscriptions alike (stompjs: sub-0, sub-1, ...), so a room's
    # fan-out builds a MESSAGE once or a few times, not once per member. Interned, so the
    # cache lookup compares by identity.
    wire_key: str

    def offer(self, event: Event) -> None:
        data = event.cache.get(self.wire_key)
        if data is None:
            data = event.cache[self.wire_key] = self.session.message_wire(self, event)
        if not self.out.offer(data):
            self.session.slow_consumer()


@dataclass(slots=True)
class _ChatSend:
    """An admitted SEND to a chat room, waiting to be stored with its neighbours."""

    out: Outgoing
    receipt_id: str | None
    receipt: bytes | None  # the encoded RECEIPT frame, when one was asked for


def chat_destination(dest: str) -> tuple[str, int] | None:
    m = _CHAT_DEST.fullmatch(dest)
    return (m.group(1), int(m.group(2))) if m else None


def _parse_heartbeat(value: str | None) -> tuple[int, int]:
    if value is None:
        return 0, 0
    parts = value.split(",")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise Fatal("Invalid heart-beat header", f"heart-beat must be 'cx,cy', got {value!r}")
    return int(parts[0]), int(parts[1])


class StompSession:
    protocol = "stomp"
    __slots__ = (
        "state",
        "kind",
        "reader",
        "writer",
        "transport",
        "out",
        "_wire",
        "user",
        "user_id",
        "login",
        "version",
        "session_id",
        "subs",
        "broker_subs",
        "transactions",
        "registered",
        "heart_out",
        "heart_in",
        "last_recv",
        "_finished",
        "_next_beat",
        "_seen_writes",
    )

    def __init__(self, state: ServerState, kind: str, transport: StompTransport) -> None:
        cfg = state.cfg.stomp
        self.state = state
        self.kind = kind
        self.reader = FrameReader(
            max_frame_size=cfg.max_frame_bytes,
            max_headers=cfg.max_headers,
            max_header_length=cfg.max_header_bytes,
        )
        self.writer = FrameWriter("1.2")
        self.transport = transport
        self.out = transport.out
        self._wire = transport.wire
        self.user: User | None = None
        self.user_id = 0
        self.login = ""
        self.version = "1.0"
        self.session_id = "session-" + secrets.token_urlsafe(12)
        self.subs: dict[str, Subscription] = {}
        self.broker_subs: dict[str, Consumer] = {}
        self.transactions: dict[str, list[Frame]] = {}
        self.registered = False
        self.heart_out = 0.0
        self.heart_in = 0.0
        self.last_recv = trio.current_time()
        self._finished = False
        self._next_beat = 0.0
        self._seen_writes = 0
        state.unconnected.add(self)

    # --- run --------------------------------------------------------------------------

    async def run(self) -> None:
        transport = self.transport
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read_loop, nursery.cancel_scope)
                await self.out.run()
                nursery.cancel_scope.cancel()
        finally:
            self._teardown()
            with trio.move_on_after(1) as scope:
                scope.shield = True
                # The peer may be gone already; there is nothing left to tell it.
                with contextlib.suppress(Exception):
                    await transport.aclose()

    async def _read_loop(self, scope: trio.CancelScope) -> None:
        receive = self.transport.receive
        try:
            with trio.move_on_after(CONNECT_TIMEOUT):
                while not self._finished and not self.registered:
                    data = await receive()
                    if data is None:
                        break
                    await self.receive_data(data)
            if not self.registered and not self._finished:
                self._fail(Fatal("Timed out", "no CONNECT frame in time"))
            while not self._finished:
                data = await receive()
                if data is None:
                    break
                self.last_recv = trio.current_time()
                await self.receive_data(data)
        except Exception:
            log.exception("stomp session %s: unexpected error", self.session_id)
            self._fail(Fatal("Internal error", "the server hit an unexpected error"))
            return
        if not self._finished:
            scope.cancel()

    def beat(self, now: float) -> None:
        """Called by the server's Heartbeats task every tick once heart-beats are agreed.
        A beat goes out when half the send interval passed with no write, so the peer
        never waits longer than the agreed interval."""
        if self.heart_in and now >= self.last_recv + self.heart_in * self._tolerance():
            log.info("stomp session %s: heart-beats stopped, closing", self.session_id)
            self.state.heartbeats.discard(self)
            self._finished = True
            self.out.abort()
            return
        if self.heart_out and now >= self._next_beat:
            if self.out.writes == self._seen_writes:
                self._emit(b"\n")
            self._seen_writes = self.out.writes
            self._next_beat = now + self.heart_out / 2

    def _tolerance(self) -> float:
        return self.state.cfg.stomp.heartbeat_tolerance

    def _teardown(self) -> None:
        self._finished = True
        self.state.unconnected.discard(self)
        self.state.heartbeats.discard(self)
        self.out.close_soon()
        for sub in list(self.subs.values()):
            self._drop_sub(sub)
        if self.broker_subs and self.state.stomp_broker is not None:
            self.state.stomp_broker.peer_gone(self)
            self.broker_subs.clear()
        if self.registered:
            self.registered = False
            self.state.service.session_closed(self)

    # --- hub-facing (never block) ---------------------------------------------------

    def close(self, code: int, reason: str) -> None:
        if code == CLOSE_SLOW_CONSUMER:
            if not self._finished:
                self._finished = True
                error = Frame("ERROR", (("message", "Slow consumer"),))
                self.out.abort(self._wire(self.writer.send(error)))
            return
        self._fail(Fatal(reason[:1].upper() + reason[1:], reason))

    def room_left(self, room_id: int) -> None:
        topic = f"room.{room_id}"
        for sub in [s for s in self.subs.values() if s.topic == topic]:
            self._drop_sub(sub)

    def _emit(self, frame: bytes) -> None:
        if not self.out.offer(self._wire(frame)):
            self.slow_consumer()

    push_frame = _emit  # the general broker's way out

    def slow_consumer(self) -> None:
        self.state.metrics.slow_consumer_disconnects += 1
        log.warning("stomp session %s: slow consumer, closing", self.session_id)
        self.close(CLOSE_SLOW_CONSUMER, "slow consumer")

    def message_wire(self, sub: Subscription, event: Event) -> bytes:
        """The MESSAGE frame of `event` for `sub`, ready for the wire."""
        key = sub.key
        template: FrameTemplate | None = event.cache.get(key)
        if template is None:
            mid = event.cache.get("mid")
            if mid is None:
                mid = event.cache["mid"] = f"T-{next(_message_ids)}"
            template = event.cache[key] = self.writer.template(
                Frame(
                    "MESSAGE",
                    (
                        ("destination", sub.destination),
                        ("message-id", mid),
                        ("redelivered", "false"),
                        ("content-type", "application/json"),
                    ),
                    event.body,
                )
            )
        if sub.ack == "auto":
            frame = template.assemble(sub.line)
        else:
            frame = template.assemble(sub.line, template.header_line("ack", event.cache["mid"]))
        # Every part is UTF-8 by construction (str headers, an orjson body): checking the
        # whole frame again cost ~0.5 µs a delivery for Korean text.
        return self._wire(frame, True)

    # --- frames -----------------------------------------------------------------------

    async def receive_data(self, data: bytes) -> None:
        if self._finished:
            return
        self.reader.receive_data(data)
        # Chat SENDs that arrived together are stored together: admitted one by one, in
        # order, then written with one wait for the store, and their RECEIPTs go out in
        # one write. Any other frame, an error, or the end of the data first finishes the
        # SENDs before it, so every frame is still answered in the order it came.
        sends: list[_ChatSend] = []
        while not self._finished:
            try:
                event = self.reader.next_event()
            except RemoteProtocolError as exc:
                await self._store_sends(sends)
                self._fail(Fatal(exc.message, exc.detail))
                return
            if event is NEED_DATA or event is CLOSED:
                break
            if isinstance(event, HeartBeat):
                continue
            assert isinstance(event, Frame)
            try:
                if event.command == "SEND" and self.registered:
                    send = self._admit_chat_send(event)
                    if send is not None:
                        sends.append(send)
                        continue
                await self._store_sends(sends)
                if not self._finished:
                    await self._handle(event)
            except Fatal as exc:
                await self._store_sends(sends)
                receipt = event.get("receipt")
                if receipt is not None and "receipt-id" not in exc.headers:
                    exc.headers["receipt-id"] = receipt
                self._fail(exc)
                return
        await self._store_sends(sends)

    def _admit_chat_send(self, frame: Frame) -> _ChatSend | None:
        """A SEND to a chat room outside a transaction, checked and ready to store; None
        for any other SEND, which takes the ordinary path."""
        dest = frame.get("destination")
        if not dest or frame.get("transaction") is not None:
            return None
        parsed = chat_destination(dest)
        if parsed is None or parsed[0] != "room" or self.user is None:
            return None
        return self._chat_send(frame, parsed[1])

    def _chat_send(self, frame: Frame, room_id: int) -> _ChatSend:
        assert self.user is not None
        try:
            out = stomp_send_body(
                parse_json_object(frame.body), room_id, self.state.cfg.chat.max_content_chars
            )
            self.state.service.admit(self.user, out, "stomp")
        except (InvalidMessage, ServiceError) as exc:
            raise Fatal("Bad SEND", f"{exc.code}: {exc.message}") from None
        receipt = frame.get("receipt")
        # Encoded now, so a receipt this version cannot carry refuses the SEND unstored.
        return _ChatSend(out, receipt, None if receipt is None else self._receipt_frame(receipt))

    async def _store_sends(self, sends: list[_ChatSend]) -> None:
        """Store the admitted SENDs and answer their receipts; empties `sends`. A SEND the
        store failed ends the session with an ERROR, after the others' RECEIPTs."""
        if not sends or self.user is None:
            return
        batch = sends[:]
        sends.clear()
        results = await self.state.service.store_admitted(self.user, [s.out for s in batch])
        failed: tuple[_ChatSend, BaseException] | None = None
        # Each message is its own operation: the ones around a failed one are stored,
        # and their RECEIPTs (one write for all) say so, before the ERROR that names the
        # failed one.
        with wire.corked():
            for send, result in zip(batch, results, strict=True):
                if isinstance(result, BaseException):
                    failed = failed or (send, result)
                elif send.receipt is not None:
                    self._emit(send.receipt)
        if failed is not None:
            send, error = failed
            log.error("stomp session %s: could not store a message: %s", self.session_id, error)
            fatal = Fatal("Internal error", "the message could not be stored")
            if send.receipt_id is not None:
                fatal.headers["receipt-id"] = send.receipt_id
            self._fail(fatal)

    def _send(self, frame: Frame) -> None:
        try:
            data = self.writer.send(frame)
        except LocalProtocolError as exc:  # pragma: no cover - a bug of ours
            log.error("stomp: cannot encode %s: %s", frame.command, exc)
            return
        self._emit(data)

    def _fail(self, exc: Fatal) -> None:
        if self._finished:
            return
        headers = [("message", exc.message), *exc.headers.items()]
        body = exc.detail.encode() if exc.detail else b""
        if body:
            headers.append(("content-type", "text/plain"))
        try:
            data = self.writer.send(Frame("ERROR", tuple(headers), body))
        except LocalProtocolError:
            # An echoed value (a receipt-id with a raw CR under 1.0/1.1) that this version
            # cannot carry: the ERROR still goes out, without it.
            data = self.writer.send(Frame("ERROR", (("message", exc.message),), body))
        self._emit(data)
        self._finished = True
        self.out.close_soon()

    def _receipt(self, frame: Frame) -> None:
        receipt = frame.get("receipt")
        if receipt is not None:
            self._emit(self._receipt_frame(receipt))

    def _receipt_frame(self, receipt: str) -> bytes:
        try:
            return self.writer.send(Frame("RECEIPT", (("receipt-id", receipt),)))
        except LocalProtocolError:
            raise Fatal(
                "Bad receipt", f"the receipt header cannot be echoed in STOMP {self.version}"
            ) from None

    async def _handle(self, frame: Frame) -> None:
        command = frame.command
        if command in ("CONNECT", "STOMP"):
            if self.registered:
                raise Fatal("Already connected", "CONNECT was sent twice")
            self._connect(frame)
            return
        if not self.registered:
            raise Fatal("Not connected", f"{command} before CONNECT")
        tx = frame.get("transaction")
        if tx is not None and command in ("SEND", "ACK", "NACK"):
            if tx not in self.transactions:
                raise Fatal("Bad transaction", f"transaction {tx!r} was not begun")
            queued = self.transactions[tx]
            if len(queued) >= MAX_TX_FRAMES:
                raise Fatal("Transaction too large", f"at most {MAX_TX_FRAMES} frames")
            queued.append(frame)
            self._receipt(frame)
            return
        handler = self._handlers.get(command)
        if handler is None:
            raise Fatal("Bad command", f"{command} is not a client frame")
        await handler(self, frame)

    # --- CONNECT ----------------------------------------------------------------------

    def _connect(self, frame: Frame) -> None:
        state = self.state
        cfg = state.cfg.stomp
        offered = (frame.get("accept-version") or "1.0").replace(" ", "").split(",")
        common = [v for v in VERSIONS if v in offered]
        if not common:
            raise Fatal(
                "Unsupported version",
                f"supported protocol versions are {','.join(VERSIONS)}",
                version=",".join(VERSIONS),
            )
        version = common[-1]
        host = frame.get("host")
        if cfg.vhosts and host is not None and host not in cfg.vhosts:
            raise Fatal("Bad CONNECT", f"Virtual host '{host}' access denied")
        cx, cy = _parse_heartbeat(frame.get("heart-beat"))
        login = frame.get("login") or ""
        passcode = frame.get("passcode") or ""
        user = self._authenticate(login, passcode)
        if user is None and not (cfg.allow_anonymous and login == "guest" and passcode == "guest"):
            state.metrics.auth_failures["stomp_login"] += 1
            raise Fatal("Bad CONNECT", f"Access refused for user '{login}'")

        floor = cfg.heartbeat_min_ms
        sx = max(cy, floor) if cy else 0
        sy = max(cx, floor) if cx else 0
        self.heart_out = sx / 1000
        self.heart_in = sy / 1000
        self.version = version
        self.user = user
        self.user_id = user.id if user is not None else 0
        self.login = login
        headers = [
            ("version", version),
            ("heart-beat", f"{sx},{sy}"),
            ("server", SERVER_NAME),
            ("session", self.session_id),
        ]
        self._send(Frame("CONNECTED", tuple(headers)))
        self.reader.version = version
        self.writer.version = version
        self.registered = True
        state.unconnected.discard(self)
        state.service.session_opened(self)
        if self.heart_out or self.heart_in:
            self._next_beat = trio.current_time() + self.heart_out / 2
            self._seen_writes = self.out.writes
            state.heartbeats.add(self)

    def _authenticate(self, login: str, passcode: str) -> User | None:
        state = self.state
        if state.stomp_logins is not None:
            user = state.stomp_logins.check(login, passcode)
            if user is not None:
                return user
        if passcode.count(".") == 2:
            try:
                return state.auth.verify(passcode)
            except AuthError as exc:
                state.metrics.auth_failures[exc.reason] += 1
        return None

    # --- destinations -----------------------------------------------------------------

    def _check_read(self, dest: str) -> str:
        """The hub topic for `dest`, if this session may read it."""
        parsed = chat_destination(dest)
        if parsed is None:
            raise Fatal("Bad destination", f"destination {dest!r} is not available")
        kind, n = parsed
        if kind == "user":
            if self.user is None or n != self.user.id:
                raise Fatal("Access refused", f"you may not read {dest}")
            return f"user.{n}"
        room = self.state.rooms.get(n)
        if room is None:
            raise Fatal("Not found", f"room {n} does not exist")
        if self.user is not None and self.user.id in room.members:
            return f"room.{n}"
        if self.user is None and room.public:
            return f"room.{n}"
        raise Fatal("Access refused", f"you are not a member of room {n}")

    async def _subscribe(self, frame: Frame) -> None:
        dest = frame.get("destination")
        if not dest:
            raise Fatal("Missing destination", "SUBSCRIBE needs a destination header")
        sub_id = frame.get("id")
        if sub_id is None:
            if self.version != "1.0":
                raise Fatal("Missing id", "SUBSCRIBE needs an id header")
            sub_id = dest
        if sub_id in self.subs or sub_id in self.broker_subs:
            raise Fatal("Duplicate subscription", f"subscription id {sub_id!r} is in use")
        ack = frame.get("ack") or "auto"
        if ack not in ("auto", "client", "client-individual"):
            raise Fatal("Bad ack mode", f"ack must be auto, client or client-individual: {ack!r}")
        if chat_destination(dest) is None:
            self.broker_subs[sub_id] = self._broker_subscribe(frame, sub_id, dest, ack)
            self._receipt(frame)
            return
        topic = self._check_read(dest)
        try:
            line = self.writer.template(Frame("RECEIPT")).header_line("subscription", sub_id)
        except LocalProtocolError:
            raise Fatal(
                "Bad subscription id", f"the id cannot be carried in STOMP {self.version}"
            ) from None
        wire_key = sys.intern("\n".join((dest, self.version, ack, self.transport.framing, sub_id)))
        sub = Subscription(
            self, sub_id, dest, topic, ack, line, (dest, self.version), self.out, wire_key
        )
        self.subs[sub_id] = sub
        self.state.hub.subscribe(topic, sub)
        self._receipt(frame)

    def _broker_subscribe(self, frame: Frame, sub_id: str, dest: str, ack: str) -> Consumer:
        broker = self.state.stomp_broker
        if broker is None or self.user is None:
            raise Fatal("Bad destination", f"destination {dest!r} is not available")
        raw = frame.get("prefetch-count") or "0"
        if not raw.isdigit():
            raise Fatal("Bad prefetch-count", f"prefetch-count must be a whole number: {raw!r}")
        try:
            return broker.subscribe(self, sub_id, dest, ack, int(raw))
        except BrokerError as exc:
            raise Fatal(exc.message, exc.detail) from None

    async def _unsubscribe(self, frame: Frame) -> None:
        sub_id = frame.get("id")
        if sub_id is None and self.version == "1.0":
            sub_id = frame.get("destination")
        if sub_id is None:
            raise Fatal("Missing id", "UNSUBSCRIBE needs an id header")
        consumer = self.broker_subs.pop(sub_id, None)
        if consumer is not None and self.state.stomp_broker is not None:
            self.state.stomp_broker.unsubscribe(consumer)
            self._receipt(frame)
            return
        sub = self.subs.get(sub_id)
        if sub is None:
            raise Fatal("Unknown subscription", f"no subscription with id {sub_id!r}")
        self._drop_sub(sub)
        self._receipt(frame)

    def _drop_sub(self, sub: Subscription) -> None:
        self.subs.pop(sub.id, None)
        self.state.hub.unsubscribe(sub.topic, sub)

    async def _send_frame(self, frame: Frame) -> None:
        dest = frame.get("destination")
        if not dest:
            raise Fatal("Missing destination", "SEND needs a destination header")
        parsed = chat_destination(dest)
        if parsed is None:
            self._broker_publish(frame, dest)
            self._receipt(frame)
            return
        kind, room_id = parsed
        if kind != "room" or self.user is None:
            raise Fatal("Access refused", f"you may not send to {dest}")
        await self._store_sends([self._chat_send(frame, room_id)])

    def _broker_publish(self, frame: Frame, dest: str) -> None:
        broker = self.state.stomp_broker
        if broker is None or self.user is None:
            raise Fatal("Bad destination", f"destination {dest!r} is not available")
        try:
            broker.publish(dest, frame.headers, frame.body)
        except BrokerError as exc:
            raise Fatal(exc.message, exc.detail) from None

    async def _ack(self, frame: Frame) -> None:
        if self.version == "1.2":
            ack_id = frame.get("id")
            if ack_id is None:
                raise Fatal("Missing id", f"{frame.command} needs an id header")
        else:
            ack_id = frame.get("message-id")
            if ack_id is None:
                raise Fatal("Missing message-id", f"{frame.command} needs a message-id header")
        broker = self.state.stomp_broker
        if self.broker_subs and broker is not None:
            broker.settle(
                self,
                ack_id,
                frame.get("subscription"),
                ack=frame.command == "ACK",
                requeue=frame.get("requeue", "true") != "false",
            )
        # Chat destinations are fan-out with nothing to redeliver: their ACKs and NACKs
        # (and ones for deliveries already settled) only need to be well formed.
        self._receipt(frame)

    async def _begin(self, frame: Frame) -> None:
        tx = frame.get("transaction")
        if not tx:
            raise Fatal("Missing transaction", "BEGIN needs a transaction header")
        if tx in self.transactions:
            raise Fatal("Bad transaction", f"transaction {tx!r} is already open")
        if len(self.transactions) >= MAX_TRANSACTIONS:
            raise Fatal("Too many transactions", f"at most {MAX_TRANSACTIONS} open at once")
        self.transactions[tx] = []
        self._receipt(frame)

    async def _commit(self, frame: Frame) -> None:
        frames = self._end_tx(frame)
        for queued in frames:
            plain = Frame(
                queued.command,
                tuple(h for h in queued.headers if h[0] not in ("transaction", "receipt")),
                queued.body,
            )
            await self._handlers[plain.command](self, plain)
            if self._finished:  # a SEND the store failed ended the session
                return
        self._receipt(frame)

    async def _abort_tx(self, frame: Frame) -> None:
        self._end_tx(frame)
        self._receipt(frame)

    def _end_tx(self, frame: Frame) -> list[Frame]:
        tx = frame.get("transaction")
        if not tx:
            raise Fatal("Missing transaction", f"{frame.command} needs a transaction header")
        if tx not in self.transactions:
            raise Fatal("Bad transaction", f"transaction {tx!r} was not begun")
        return self.transactions.pop(tx)

    async def _disconnect(self, frame: Frame) -> None:
        self._receipt(frame)
        self._finished = True
        self.out.close_soon()

    _handlers: dict[str, Callable[[StompSession, Frame], Awaitable[None]]] = {}


StompSession._handlers = {
    "SUBSCRIBE": StompSession._subscribe,
    "UNSUBSCRIBE": StompSession._unsubscribe,
    "SEND": StompSession._send_frame,
    "ACK": StompSession._ack,
    "NACK": StompSession._ack,
    "BEGIN": StompSession._begin,
    "COMMIT": StompSession._commit,
    "ABORT": StompSession._abort_tx,
    "DISCONNECT": StompSession._disconnect,
}
