"""One STOMP connection: its I/O, its login, and the chat routing. Transports (WebSocket,
TCP) only move bytes; the rules of STOMP itself (CONNECT first, versions, heart-beats,
headers, receipts, transactions, DISCONNECT) are the sans-I/O conversation's
(`chatd.stomp._conversation`); this acts on its events: it checks the login, puts chat
subscriptions in the hub, hands chat SENDs to the service and the rest to the general
broker, and writes the answers.

Every ERROR frame ends the connection, as the STOMP specification requires.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import secrets
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from chatd.auth import AuthError, Identity
from chatd.model import Event, Outgoing, User
from chatd.net import connections, wire
from chatd.net.connections import peer_address
from chatd.net.websocket import CLOSE_SLOW_CONSUMER
from chatd.net.wire import WireWriter
from chatd.ops import logs
from chatd.service import ServiceError
from chatd.state import ServerState
from chatd.stomp import (
    CHAT_EXCHANGE_NAME,
    CLOSED,
    EXCHANGE_PREFIX,
    NEED_DATA,
    ROOM_PREFIX,
    USER_PREFIX,
    Ack,
    ConnectRequest,
    Conversation,
    Disconnect,
    Frame,
    FrameTemplate,
    LocalProtocolError,
    Receipt,
    RemoteProtocolError,
    Send,
    StompError,
    Subscribe,
    Unsubscribe,
    destination_error,
    exchange_configured,
    parse_digits,
    parse_prefetch_count,
)
from chatd.stomp.general_broker import BrokerError, Consumer, GeneralBroker
from chatd.store import StoreUnavailable
from chatd.validation import InvalidMessage, parse_json_object, stomp_send_body

log = logging.getLogger("chatd.stomp")

CONNECT_TIMEOUT = 10.0

_MAX_ID_DIGITS = 18
_message_ids = itertools.count(1)


def _hidden_room(room_id: int) -> RemoteProtocolError:
    """One ERROR for a room that does not exist and one the session may not use, as the
    other protocols answer both alike (chatd.service.hidden_room): ids cannot be probed."""
    detail = f"room {room_id} does not exist or you are not a member"
    return RemoteProtocolError("Not found", detail)


class StompTransport(Protocol):
    stream: trio.SocketStream
    out: WireWriter
    framing: str  # how `wire` wraps a frame: equal framings give equal bytes

    def wire(self, frame: bytes, utf8: bool = False) -> bytes: ...
    async def receive(self) -> bytes | None: ...
    async def aclose(self, drain: bool = True) -> None: ...
    def logged_in(self, max_frame_bytes: int) -> None: ...  # the login is accepted


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
    """("room", id) or ("user", id) for a chat destination, None for any other. An id is
    written one way only: ASCII digits, no leading zero, at most 18 of them."""
    parsed = _parsed.get(dest)
    if parsed is not None:
        return parsed
    if dest.startswith(ROOM_PREFIX):
        kind, digits = "room", dest[len(ROOM_PREFIX) :]
    elif dest.startswith(USER_PREFIX):
        kind, digits = "user", dest[len(USER_PREFIX) :]
    else:
        return None
    n = parse_digits(digits, _MAX_ID_DIGITS)
    if not n or digits[0] == "0":
        return None
    if len(_parsed) >= _MAX_PARSED:
        _parsed.clear()
    parsed = _parsed[dest] = kind, n
    return parsed


# Every SEND names its destination, and clients send to a few rooms again and again: a
# parse looked up costs a tenth of the regex. Only chat destinations go in (short, by the
# pattern), and the map starts over when full, so no input can grow it past a few hundred KB.
_parsed: dict[str, tuple[str, int]] = {}
_MAX_PARSED = 4096


class StompSession:
    protocol = "stomp"
    __slots__ = (
        "state",
        "kind",
        "conv",
        "writer",
        "transport",
        "out",
        "_wire",
        "user",
        "user_id",
        "login",
        "session_id",
        "subs",
        "broker_subs",
        "registered",
        "heart_out",
        "heart_in",
        "last_recv",
        "_finished",
        "_next_beat",
        "_seen_written",
        "_nursery",
        "_flow_waiting",
        "end",
    )

    def __init__(self, state: ServerState, kind: str, transport: StompTransport) -> None:
        cfg = state.cfg.stomp
        self.state = state
        self.kind = kind
        self.conv = Conversation(
            max_frame_size=cfg.max_frame_bytes,
            max_connect_frame_size=cfg.max_connect_frame_bytes,
            max_headers=cfg.max_headers,
            max_header_length=cfg.max_header_bytes,
            vhosts=cfg.vhosts,
            heartbeat_min_ms=cfg.heartbeat_min_ms,
            max_subscriptions=cfg.max_subscriptions,
            max_tx_bytes=cfg.max_transaction_bytes,
            tx_timeout=cfg.transaction_timeout_seconds,
            clock=trio.current_time,
        )
        # The conversation's writer: it follows the agreed version. MESSAGE templates and
        # the general broker's deliveries are encoded with it.
        self.writer = self.conv.writer
        self.transport = transport
        self.out = transport.out
        self._wire = transport.wire
        self.user: User | None = None
        self.user_id = 0
        self.login = ""
        self.session_id = "session-" + secrets.token_urlsafe(12)
        self.subs: dict[str, Subscription] = {}
        self.broker_subs: dict[str, Consumer] = {}
        self.registered = False
        self.heart_out = 0.0
        self.heart_in = 0.0
        self.last_recv = trio.current_time()
        self._finished = False
        self._next_beat = 0.0
        self._seen_written = 0
        self._nursery: trio.Nursery | None = None  # runs the general broker's flow waits
        self._flow_waiting = False
        # How the session ended, for the connection log; "" until the server or the
        # client ends it on purpose (then the connection was closed or lost).
        self.end = ""
        state.unconnected.add(self)

    # --- run --------------------------------------------------------------------------

    async def run(self) -> None:
        transport = self.transport
        try:
            limit = self.state.cfg.stomp.max_unauthenticated_connections
            if len(self.state.unconnected) > limit:
                # Refused before a byte is read: what an anonymous crowd may hold is bounded
                # by this count times the small pre-login frame size.
                self._fail(
                    RemoteProtocolError(
                        "Too many connections",
                        f"node limit ({limit}) of connections not yet logged in is reached;"
                        " try again later",
                    )
                )
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if not self._finished:
                    nursery.start_soon(self._read_loop, nursery.cancel_scope)
                # The writer stops through the nursery's scope: the session ends with it.
                await self.out.run(nursery.cancel_scope)
                nursery.cancel_scope.cancel()
        finally:
            self._nursery = None
            self._teardown()
            # Shielded (an ERROR at shutdown still reaches the peer) and bounded: the
            # transport's drain takes ANSWER_SECONDS at most.
            with trio.move_on_after(connections.ANSWER_SECONDS + 1) as scope:
                scope.shield = True
                # The peer may be gone already; there is nothing left to tell it.
                with contextlib.suppress(Exception):
                    await transport.aclose(drain=not self.state.closing.is_set())

    async def _read_loop(self, scope: trio.CancelScope) -> None:
        # `self.transport.receive()` each time, not a bound method kept in a local: this
        # frame waits for the connection's whole life, and what it holds is per connection.
        try:
            with trio.move_on_after(CONNECT_TIMEOUT):
                while not self._finished and not self.registered:
                    data = await self.transport.receive()
                    if data is None:
                        break
                    await self.receive_data(data)
            if not self.registered and not self._finished:
                self._fail(RemoteProtocolError("Timed out", "no CONNECT frame in time"))
            conv = self.conv
            while not self._finished:
                deadline = conv.transaction_deadline
                if deadline == math.inf:
                    data = await self.transport.receive()
                else:
                    # Only a connection with a transaction open pays for a timer, and only
                    # while it is open: an idle one costs nothing.
                    data = None
                    with trio.move_on_at(deadline) as timer:
                        data = await self.transport.receive()
                    if timer.cancelled_caught:
                        error = conv.expired()
                        if error is not None:
                            self._fail(error)
                        continue
                if data is None:
                    break
                self.last_recv = trio.current_time()
                await self.receive_data(data)
        except Exception:
            log.exception("stomp session %s: unexpected error", self.session_id)
            self._fail(StompError("Internal error", "the server hit an unexpected error"))
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
            self.end = "heart-beats stopped"
            self.out.abort()
            return
        if self.heart_out and now >= self._next_beat:
            # What the writer has written, modulo 256: a small int, shared, where the
            # count itself would keep one more int alive per connection. A multiple of
            # 256 bytes written since costs one beat more than needed, which is harmless.
            if self.out.written & 255 == self._seen_written:
                self._emit(b"\n")
            self._seen_written = self.out.written & 255
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
        if self.state.stomp_broker is not None:
            # Also after an UNSUBSCRIBE: deliveries still unwritten go back to the queue.
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
                self.end = "error frame: Slow consumer"
                error = self.conv.send_error(RemoteProtocolError("Slow consumer", ""))
                self.out.abort(self._wire(error))
            return
        self._fail(StompError(reason[:1].upper() + reason[1:], reason))

    def room_left(self, room_id: int) -> None:
        topic = f"room.{room_id}"
        # Every subscription to the room ends, live and shadowed: none resumes.
        for sub in [s for s in self.subs.values() if s.topic == topic]:
            self._drop_sub(sub)
            self.conv.forget_subscription(sub.id)

    def _emit(self, frame: bytes) -> None:
        if not self.out.offer(self._wire(frame)):
            self.slow_consumer()

    # --- the general broker's way out (general_broker.Peer): credit, not a cut -----------

    def can_take(self) -> bool:
        if self.out.space_for(0):
            return True
        self._resume_broker_on_space(0)
        return False

    def deliver(self, frame: bytes) -> int | None:
        out = self.out
        data = self._wire(frame)
        if not out.space_for(len(data)) or not out.offer(data):
            self._resume_broker_on_space(len(data))
            return None
        return out.written + out.unwritten

    def bytes_written(self) -> int:
        return self.out.written

    def cut(self) -> None:
        if not self._finished:
            self.slow_consumer()

    def _resume_broker_on_space(self, size: int) -> None:
        """One task at a time, and only while a queue waits on this connection: an idle
        connection costs the broker nothing."""
        nursery = self._nursery
        if self._flow_waiting or nursery is None or self.out.closing:
            return
        self._flow_waiting = True
        nursery.start_soon(self._resume_broker, size)

    async def _resume_broker(self, size: int) -> None:
        await self.out.wait_space(size)
        self._flow_waiting = False
        broker = self.state.stomp_broker
        if broker is not None and not self.out.closing:
            broker.resume(self)

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

    # --- the conversation's events ----------------------------------------------------

    async def receive_data(self, data: bytes) -> None:
        if self._finished:
            return
        conv = self.conv
        conv.receive_data(data)
        # Chat SENDs that arrived together are stored together: admitted one by one, in
        # order, then written with one wait for the store, and their RECEIPTs go out in
        # one write. Any other event, an error, or the end of the data first finishes the
        # SENDs before it, so every frame is still answered in the order it came.
        sends: list[_ChatSend] = []
        while not self._finished:
            try:
                event = conv.next_event()
            except RemoteProtocolError as exc:
                await self._store_sends(sends)
                self._fail(exc)
                return
            if event is NEED_DATA or event is CLOSED:
                break
            try:
                if type(event) is Send and event.transaction is None:
                    send = self._admit_chat_send(event)
                    if send is not None:
                        sends.append(send)
                        continue
                await self._store_sends(sends)
                if not self._finished:
                    await self._handlers[type(event)](self, event)
            except RemoteProtocolError as exc:
                await self._store_sends(sends)
                self._fail(exc, event.error_receipt_id)
                return
        await self._store_sends(sends)

    def _admit_chat_send(self, event: Send) -> _ChatSend | None:
        """A SEND to a chat room, checked and ready to store; None for any other SEND,
        which takes the ordinary path."""
        parsed = chat_destination(event.destination)
        if parsed is None or parsed[0] != "room" or self.user is None:
            return None
        try:
            out = stomp_send_body(
                parse_json_object(event.frame.body),
                parsed[1],
                self.state.cfg.chat.max_content_chars,
            )
            self.state.service.admit(self.user, out, "stomp")
        except (InvalidMessage, ServiceError) as exc:
            raise RemoteProtocolError("Bad SEND", f"{exc.code}: {exc.message}") from None
        receipt = event.receipt
        # Encoded now, so a receipt this version cannot carry refuses the SEND unstored.
        return _ChatSend(out, receipt, None if receipt is None else self.conv.receipt(receipt))

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
            if isinstance(error, StoreUnavailable):
                # Documented and retryable: the store logged why, once for all sessions.
                self._fail(
                    StompError(error.code, f"{error.code}: {error.message}"), send.receipt_id
                )
                return
            log.error("stomp session %s: could not store a message: %s", self.session_id, error)
            self._fail(
                StompError("Internal error", "the message could not be stored"), send.receipt_id
            )

    def _fail(self, error: StompError, receipt_id: str | None = None) -> None:
        if self._finished:
            return
        self.end = f"error frame: {error.message}"
        self._emit(self.conv.send_error(error, receipt_id))
        self._finished = True
        self.out.close_soon()

    def _receipt(self, receipt_id: str | None) -> None:
        if receipt_id is not None:
            self._emit(self.conv.receipt(receipt_id))

    # --- CONNECT ----------------------------------------------------------------------

    async def _connect(self, event: ConnectRequest) -> None:
        state = self.state
        cfg = state.cfg.stomp
        login = event.login
        passcode = event.passcode
        identity = self._authenticate(login, passcode)
        user = identity.user if identity is not None else None
        if user is None and not (cfg.allow_anonymous and login == "guest" and passcode == "guest"):
            state.metrics.auth_failures["stomp_login"] += 1
            why = f"no valid passcode for login {login!r}"  # the passcode never logged
            logs.refused(f"STOMP {self.kind} login", why, peer_address(self.transport.stream))
            raise RemoteProtocolError("Bad CONNECT", f"Access refused for user '{login}'")
        sx, sy = event.heart_beat
        self.heart_out = sx / 1000
        self.heart_in = sy / 1000
        self.user = user
        self.user_id = user.id if user is not None else 0
        self.login = login
        if user is not None:
            # What POST /chat-ws/connect hands out (each of the user's rooms, and the user
            # destination) always fits, however many rooms that is.
            rooms = len(state.rooms.rooms_of(user.id))
            self.conv.max_subscriptions = max(cfg.max_subscriptions, rooms + 1)
        self._emit(self.conv.accept(self.session_id))
        self.transport.logged_in(cfg.max_frame_bytes)
        self.registered = True
        state.unconnected.discard(self)
        # The session ends when its JWT or issued login expires (an anonymous one never).
        state.service.session_opened(self, None if identity is None else identity.valid_until)
        if self.heart_out or self.heart_in:
            self._next_beat = trio.current_time() + self.heart_out / 2
            self._seen_written = self.out.written & 255
            state.heartbeats.add(self)

    def _authenticate(self, login: str, passcode: str) -> Identity | None:
        state = self.state
        if state.stomp_logins is not None:
            identity = state.stomp_logins.check(login, passcode)
            if identity is not None:
                return identity
        if passcode.count(".") == 2:
            try:
                return state.auth.identify(passcode)
            except AuthError as exc:
                state.metrics.auth_failures[exc.reason] += 1
        return None

    # --- destinations -----------------------------------------------------------------

    def _check_read(self, dest: str) -> str:
        """The hub topic for `dest`, if this session may read it."""
        parsed = chat_destination(dest)
        if parsed is None:
            raise RemoteProtocolError("Bad destination", f"destination {dest!r} is not available")
        kind, n = parsed
        if kind == "user":
            if self.user is None or n != self.user.id:
                raise RemoteProtocolError("Access refused", f"you may not read {dest}")
            return f"user.{n}"
        room = self.state.rooms.get(n)
        if room is not None and self.user is not None and self.user.id in room.members:
            return f"room.{n}"
        if room is not None and self.user is None and room.public:
            return f"room.{n}"
        raise _hidden_room(n)

    async def _subscribe(self, event: Subscribe) -> None:
        dest = event.destination
        sub_id = event.id
        if event.shadows is not None:
            self._pause(event.shadows)
        if chat_destination(dest) is None:
            self.broker_subs[sub_id] = self._broker_subscribe(event.frame, sub_id, dest, event.ack)
            self._receipt(event.receipt)
            return
        topic = self._check_read(dest)
        version = self.conv.version
        try:
            line = self.writer.template(Frame("RECEIPT")).header_line("subscription", sub_id)
        except LocalProtocolError:
            raise RemoteProtocolError(
                "Bad subscription id", f"the id cannot be carried in STOMP {version}"
            ) from None
        wire_key = sys.intern("\n".join((dest, version, event.ack, self.transport.framing, sub_id)))
        sub = Subscription(
            self, sub_id, dest, topic, event.ack, line, (dest, version), self.out, wire_key
        )
        self.subs[sub_id] = sub
        self.state.hub.subscribe(topic, sub)
        self._receipt(event.receipt)

    def _broker(self, dest: str) -> GeneralBroker:
        """The general broker for a destination that is not the chat's, once it is known to
        be a destination at all (RabbitMQ's answers where it has one)."""
        error = destination_error(dest)
        if error is not None:
            raise RemoteProtocolError(*error)
        broker = self.state.stomp_broker
        if dest.startswith(EXCHANGE_PREFIX):
            name = dest[len(EXCHANGE_PREFIX) :].partition("/")[0]
            if name != CHAT_EXCHANGE_NAME and (
                broker is None or not exchange_configured(name, broker.patterns)
            ):
                # An exchange nobody configured does not exist: chatd makes none on the fly.
                detail = f"NOT_FOUND - no exchange '{name}' in vhost '{self.conv.host}'"
                raise RemoteProtocolError("not_found", detail)
        if broker is None or self.user is None:
            raise RemoteProtocolError("Bad destination", f"destination {dest!r} is not available")
        return broker

    def _broker_subscribe(self, frame: Frame, sub_id: str, dest: str, ack: str) -> Consumer:
        broker = self._broker(dest)
        prefetch = parse_prefetch_count(frame.get("prefetch-count"))
        try:
            return broker.subscribe(self, sub_id, dest, ack, prefetch)
        except BrokerError as exc:
            raise RemoteProtocolError(exc.message, exc.detail) from None

    async def _unsubscribe(self, event: Unsubscribe) -> None:
        # The conversation knows the id: it is the general broker's or the hub's.
        consumer = self.broker_subs.pop(event.id, None)
        if consumer is not None:
            if self.state.stomp_broker is not None:
                self.state.stomp_broker.unsubscribe(consumer)
        else:
            sub = self.subs.get(event.id)
            if sub is not None:
                self._drop_sub(sub)
        if event.resumes is not None:
            self._resume(event.resumes)
        self._receipt(event.receipt)

    def _pause(self, sub_id: str) -> None:
        """Stop delivering to `sub_id`, shadowed by a newer subscription to its
        destination; it stays in subs or broker_subs for _resume."""
        sub = self.subs.get(sub_id)
        if sub is not None:
            self.state.hub.unsubscribe(sub.topic, sub)
            return
        consumer = self.broker_subs.get(sub_id)
        if consumer is not None and self.state.stomp_broker is not None:
            self.state.stomp_broker.unsubscribe(consumer)

    def _resume(self, sub_id: str) -> None:
        """Deliver to `sub_id` again: the subscription that shadowed it ended."""
        sub = self.subs.get(sub_id)
        if sub is not None:
            self.state.hub.subscribe(sub.topic, sub)
            return
        old = self.broker_subs.get(sub_id)
        broker = self.state.stomp_broker
        if old is not None and broker is not None:
            try:
                self.broker_subs[sub_id] = broker.subscribe(
                    self, sub_id, old.destination, old.ack, old.prefetch
                )
            except BrokerError as exc:
                raise RemoteProtocolError(exc.message, exc.detail) from None

    def _drop_sub(self, sub: Subscription) -> None:
        self.subs.pop(sub.id, None)
        self.state.hub.unsubscribe(sub.topic, sub)

    async def _send(self, event: Send) -> None:
        """A SEND that did not join a burst: one a COMMIT released, the general broker's,
        or one to a chat destination this session may not send to."""
        send = self._admit_chat_send(event)
        if send is not None:
            # Stored one at a time: a SEND the store fails stops the rest of its COMMIT.
            await self._store_sends([send])
            return
        dest = event.destination
        if chat_destination(dest) is not None:
            raise RemoteProtocolError("Access refused", f"you may not send to {dest}")
        broker = self._broker(dest)
        try:
            broker.publish(dest, event.frame.headers, event.frame.body)
        except BrokerError as exc:
            raise RemoteProtocolError(exc.message, exc.detail) from None
        self._receipt(event.receipt)

    async def _ack(self, event: Ack) -> None:
        broker = self.state.stomp_broker
        if self.broker_subs and broker is not None:
            # A `subscription` header that names no subscription is ignored, as RabbitMQ
            # ignores it: the message id alone says what is settled.
            sub = event.subscription if event.subscription in self.broker_subs else None
            broker.settle(self, event.id, sub, ack=event.ack, requeue=event.requeue)
        # Chat destinations are fan-out with nothing to redeliver: their ACKs and NACKs
        # (and ones for deliveries already settled) only need to be well formed.
        self._receipt(event.receipt)

    async def _answer(self, event: Receipt) -> None:
        self._receipt(event.receipt)

    async def _disconnect(self, event: Disconnect) -> None:
        self._receipt(event.receipt)
        self.end = "DISCONNECT"
        self._finished = True
        self.out.close_soon()

    _handlers: dict[type, Callable[[StompSession, Any], Awaitable[None]]] = {}


StompSession._handlers = {
    ConnectRequest: StompSession._connect,
    Send: StompSession._send,
    Subscribe: StompSession._subscribe,
    Unsubscribe: StompSession._unsubscribe,
    Ack: StompSession._ack,
    Receipt: StompSession._answer,
    Disconnect: StompSession._disconnect,
}
