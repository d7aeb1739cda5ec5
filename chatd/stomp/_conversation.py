"""The STOMP conversation of one connection, sans-I/O, in the style of h11's ``_state.py``.

Bytes in (:meth:`Conversation.receive_data`), events out (:meth:`Conversation.next_event`):
the rules STOMP itself makes are kept here, and what they mean for the chat is left to
the caller (``chatd.stomp.session``), which does the I/O, checks logins and routes.

Kept here: CONNECT first and once (and, until the login is accepted, frames of at most
``max_connect_frame_size`` bytes), version negotiation (``accept-version``, 1.0 when
absent, the highest version both speak), ``heart-beat`` parsing and negotiation, the
virtual host, the headers each command needs in each version, subscriptions (ids unique
and known to UNSUBSCRIBE, at most ``max_subscriptions``, and one live subscription per
destination: the newest),
transactions (BEGIN/COMMIT/ABORT; frames in a transaction held until COMMIT, dropped on
ABORT), receipts, DISCONNECT, and the ERROR that ends it all.

Every state and every frame's transition is in :data:`TRANSITIONS`::

    AWAIT_CONNECT --CONNECT/STOMP--> LOGIN --accept()--> CONNECTED --DISCONNECT--> DISCONNECTED
    AWAIT_CONNECT, CONNECTED --end of stream--> CLOSED
    any state --a refused frame, receipt() refused, send_error()--> ERROR

A refused frame raises :class:`RemoteProtocolError` (the peer's fault); its ``message``,
``detail`` and ``headers`` are the ERROR frame to answer with, which
:meth:`Conversation.send_error` encodes. A call the state does not allow raises
:class:`LocalProtocolError` (the caller's fault). Once in ERROR, the conversation reads
nothing more and answers nothing more but that one ERROR frame.
"""

from __future__ import annotations

import enum
import functools
import math
import sys
import time
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Final, Literal, TypeAlias

from ._codec import FrameReader, FrameWriter
from ._errors import LocalProtocolError, RemoteProtocolError, StompError
from ._frames import CLIENT_COMMANDS, CLOSED, COMMANDS, NEED_DATA, Frame, HeartBeat, Sentinel
from ._names import V10, V12, VERSIONS
from ._numbers import parse_digits

__all__ = [
    "ACK_MODES",
    "SERVER_NAME",
    "TRANSITIONS",
    "Ack",
    "ConnectRequest",
    "Conversation",
    "ConversationEvent",
    "Disconnect",
    "Receipt",
    "Refuse",
    "Send",
    "State",
    "Subscribe",
    "Take",
    "Unsubscribe",
    "parse_heart_beat",
    "parse_prefetch_count",
]

SERVER_NAME: Final = "chatd/0.1"
ACK_MODES: Final = ("auto", "client", "client-individual")
# RabbitMQ's limits: a client cannot park unbounded work in server memory.
MAX_TRANSACTIONS: Final = 16
MAX_TX_FRAMES: Final = 1024
# What a connection's open transactions may hold in all, in bytes, and for how long one may
# stay open (seconds): frames held until COMMIT are memory a client chooses to park.
MAX_TX_BYTES: Final = 8 * 1024 * 1024
TX_TIMEOUT: Final = 60.0
# Until the login is accepted a frame may be no larger than this: a CONNECT needs a few
# hundred bytes, or one to two KB with a JWT passcode (RabbitMQ allows 8 KB before
# authentication for the same reason).
MAX_CONNECT_FRAME_SIZE: Final = 8192
# Subscriptions one connection may hold (live or shadowed, see Conversation._subscribe).
MAX_SUBSCRIPTIONS: Final = 256
# A heart-beat interval in milliseconds: 18 digits is about 32 million years.
_MAX_HEART_BEAT_DIGITS: Final = 18
_MAX_PREFETCH_COUNT: Final = 65535
_MAX_PREFETCH_DIGITS: Final = 5


class State(enum.Enum):
    AWAIT_CONNECT = "AWAIT_CONNECT"  # nothing but CONNECT (or STOMP) is taken
    LOGIN = "LOGIN"  # CONNECT read: the caller checks the login, then accept()s or refuses
    CONNECTED = "CONNECTED"
    DISCONNECTED = "DISCONNECTED"  # the client said DISCONNECT: nothing more is read
    CLOSED = "CLOSED"  # the client ended the stream between frames
    ERROR = "ERROR"  # an ERROR frame is (or was) the last word

    def __repr__(self) -> str:
        return self.value


# --- events out -----------------------------------------------------------------------
#
# Plain slotted dataclasses, read-only by convention: a frozen one costs three times as much
# to build, and a SEND makes one on the hot path.
#
# `receipt` is the id of the RECEIPT owed once the caller has handled the event (None: none
# owed); `error_receipt_id` is the receipt-id of an ERROR the event causes: the frame's
# own receipt, or the COMMIT's for a frame the COMMIT released.


@dataclass(slots=True)
class ConnectRequest:
    """A CONNECT (or STOMP) that passed the version, host and heart-beat checks. The
    caller checks the login, then calls :meth:`Conversation.accept` or refuses."""

    version: str  # agreed
    heart_beat: tuple[int, int]  # agreed, ms: how often the server beats, how often the client must
    login: str
    passcode: str
    host: str | None
    error_receipt_id: str | None  # a CONNECT is answered by CONNECTED, never by a RECEIPT


@dataclass(slots=True)
class Send:
    """A SEND to route now: outside a transaction, or released by its COMMIT (then without
    its `transaction` and `receipt` headers)."""

    frame: Frame
    destination: str
    transaction: str | None  # the transaction whose COMMIT released it
    receipt: str | None
    error_receipt_id: str | None


@dataclass(slots=True)
class Subscribe:
    frame: Frame
    id: str  # the `id` header; STOMP 1.0 may leave it out, then it is the destination
    destination: str
    ack: str  # one of ACK_MODES
    receipt: str | None
    error_receipt_id: str | None
    # The subscription to the same destination that was live until now: it stops being
    # delivered to (the new one takes over) but stays known, and resumes if this one ends.
    shadows: str | None = None


@dataclass(slots=True)
class Unsubscribe:
    id: str  # a subscription id this conversation knows
    receipt: str | None
    error_receipt_id: str | None
    # The older subscription to the same destination that is live again now, if any.
    resumes: str | None = None


@dataclass(slots=True)
class Ack:
    """An ACK (`ack` True) or NACK to settle now, outside a transaction or at its COMMIT."""

    frame: Frame
    id: str  # `id` in STOMP 1.2, `message-id` before
    subscription: str | None
    ack: bool
    requeue: bool  # NACK only: `requeue:false` drops the message instead
    receipt: str | None
    error_receipt_id: str | None


@dataclass(slots=True)
class Receipt:
    """A frame the conversation handled alone (BEGIN, ABORT, a frame held in a
    transaction, a COMMIT once every frame it released was handled): only its RECEIPT
    is owed."""

    receipt: str
    error_receipt_id: str | None


@dataclass(slots=True)
class Disconnect:
    """The client is done: answer the receipt, if any, then close."""

    receipt: str | None
    error_receipt_id: str | None


ConversationEvent: TypeAlias = (
    ConnectRequest | Send | Subscribe | Unsubscribe | Ack | Receipt | Disconnect
)


# --- the table --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Take:
    """The frame is taken by the handler `handler` (a name below); once it has made its
    event (or none, for a frame with nothing to answer), the state is `then`."""

    handler: str
    then: State


@dataclass(frozen=True, slots=True)
class Refuse:
    """The frame ends the conversation with this ERROR (`{command}` is filled in)."""

    message: str
    detail: str


# Where chatd meets a condition RabbitMQ's STOMP plugin meets too, the ERROR says what
# RabbitMQ's says (rabbit_stomp_processor), so that clients, log searches and alerts
# written for RabbitMQ keep working; the README has the table.
_NOT_CONNECTED: Final = Refuse("Illegal command", "You must log in using CONNECT first")
_TWICE: Final = Refuse("Already connected", "CONNECT was sent twice")
_NOT_CLIENT: Final = Refuse("Bad command", 'Could not interpret command "{command}"')

#: Every state that reads frames, and what each command does in it. A state not listed
#: reads no frame (LOGIN waits for the caller; the others are over).
TRANSITIONS: Final[dict[State, dict[str, Take | Refuse]]] = {
    State.AWAIT_CONNECT: {
        **dict.fromkeys(COMMANDS, _NOT_CONNECTED),
        "CONNECT": Take("connect", State.LOGIN),
        "STOMP": Take("connect", State.LOGIN),
    },
    State.CONNECTED: {
        **dict.fromkeys(COMMANDS - CLIENT_COMMANDS, _NOT_CLIENT),
        "CONNECT": _TWICE,
        "STOMP": _TWICE,
        "SEND": Take("send", State.CONNECTED),
        "SUBSCRIBE": Take("subscribe", State.CONNECTED),
        "UNSUBSCRIBE": Take("unsubscribe", State.CONNECTED),
        "ACK": Take("ack", State.CONNECTED),
        "NACK": Take("ack", State.CONNECTED),
        "BEGIN": Take("begin", State.CONNECTED),
        "COMMIT": Take("commit", State.CONNECTED),
        "ABORT": Take("abort", State.CONNECTED),
        "DISCONNECT": Take("disconnect", State.DISCONNECTED),
    },
}

# Held in a transaction rather than acted on (the STOMP specification's list).
_TRANSACTIONAL: Final = frozenset({"SEND", "ACK", "NACK"})
_STRIPPED_AT_COMMIT: Final = ("transaction", "receipt")


def parse_heart_beat(value: str | None) -> tuple[int, int]:
    """The client's `heart-beat` header as (cx, cy) in ms; (0, 0) when absent. Spaces
    around either number are tolerated (ASCII spaces and tabs: nothing else)."""
    if value is None:
        return 0, 0
    cx, _, cy = value.partition(",")
    x = parse_digits(cx.strip(" \t"), _MAX_HEART_BEAT_DIGITS)
    y = parse_digits(cy.strip(" \t"), _MAX_HEART_BEAT_DIGITS)
    if x is None or y is None:  # also for no comma (cy empty) or a second one (in cy)
        raise RemoteProtocolError(
            "Invalid heart-beat header", f"heart-beat must be 'cx,cy', got {value!r}"
        )
    return x, y


def parse_prefetch_count(value: str | None) -> int:
    """RabbitMQ's `prefetch-count` SUBSCRIBE header: how many unacknowledged messages a
    subscription may hold; 0 (absent or empty) for no limit. AMQP carries it in 16 bits."""
    if not value:
        return 0
    count = parse_digits(value, _MAX_PREFETCH_DIGITS)
    if count is None or count > _MAX_PREFETCH_COUNT:
        raise RemoteProtocolError(
            "Bad prefetch-count",
            f"prefetch-count must be a whole number from 0 to {_MAX_PREFETCH_COUNT}: "
            f"{value[:40]!r}",
        )
    return count


def negotiate_version(accept_version: str | None) -> str | None:
    """The highest version both speak; `accept-version` absent (or empty) means 1.0."""
    offered = (accept_version or V10).replace(" ", "").split(",")
    common = [v for v in VERSIONS if v in offered]
    return common[-1] if common else None


def negotiate_heart_beat(client: tuple[int, int], floor_ms: int) -> tuple[int, int]:
    """(sx, sy) for the CONNECTED frame: the server beats as often as the client wants to
    hear (cy) and wants to hear as often as the client offers to beat (cx), neither more
    often than `floor_ms`; 0 stays 0 (never)."""
    cx, cy = client
    return (max(cy, floor_ms) if cy else 0, max(cx, floor_ms) if cx else 0)


@functools.lru_cache(maxsize=8)
def _shared_vhosts(vhosts: tuple[str, ...]) -> frozenset[str]:
    # One frozenset per configured list, not one per connection (216 bytes each).
    return frozenset(vhosts)


class Conversation:
    """One connection's STOMP conversation, server side."""

    __slots__ = (
        "state",
        "version",
        "heart_beat",
        "host",
        "reader",
        "writer",
        "vhosts",
        "heartbeat_min_ms",
        "max_transactions",
        "max_tx_frames",
        "max_subscriptions",
        "max_tx_bytes",
        "tx_timeout",
        "transaction_deadline",
        "_clock",
        "_tx_bytes",
        "_max_frame_size",
        "_table",
        "_subscriptions",
        "_destinations",
        "_shadowed",
        "_transactions",
        "_released",
        "_blame",
        "_error_sent",
    )

    def __init__(
        self,
        *,
        max_frame_size: int = 4 * 1024 * 1024,
        max_connect_frame_size: int = MAX_CONNECT_FRAME_SIZE,
        max_headers: int = 100,
        max_header_length: int = 8192,
        vhosts: Collection[str] = (),
        heartbeat_min_ms: int = 1000,
        max_transactions: int = MAX_TRANSACTIONS,
        max_tx_frames: int = MAX_TX_FRAMES,
        max_subscriptions: int = MAX_SUBSCRIPTIONS,
        max_tx_bytes: int = MAX_TX_BYTES,
        tx_timeout: float = TX_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.state = State.AWAIT_CONNECT
        self.version = V10  # until CONNECTED says otherwise
        self.heart_beat = (0, 0)  # agreed (sx, sy), ms
        self.host = "/"  # the virtual host CONNECT named (RabbitMQ's default when none)
        # Anyone can open a connection: until accept(), a frame is bounded by the small
        # limit, so an anonymous peer cannot make the server hold megabytes.
        self._max_frame_size = max_frame_size
        self.reader = FrameReader(
            max_frame_size=min(max_connect_frame_size, max_frame_size),
            max_headers=max_headers,
            max_header_length=max_header_length,
        )
        # 1.2 until the version is agreed: CONNECT and CONNECTED are never escaped, and an
        # ERROR before CONNECTED may need to carry any receipt-id.
        self.writer = FrameWriter(V12)
        self.vhosts = _shared_vhosts(tuple(vhosts))
        self.heartbeat_min_ms = heartbeat_min_ms
        self.max_transactions = max_transactions
        self.max_tx_frames = max_tx_frames
        self.max_subscriptions = max_subscriptions
        self.max_tx_bytes = max_tx_bytes
        self.tx_timeout = tx_timeout
        # Read at BEGIN and when a transaction is used or checked: the caller's clock (the
        # session's is trio's, a test's a fake one).
        self._clock = clock
        self._tx_bytes = 0  # held by all open transactions together
        # When the oldest open transaction times out, on the clock; inf when none is open.
        # The caller calls expired() then (or later). An attribute, not a property: the
        # session reads it before every receive.
        self.transaction_deadline = math.inf
        self._table = _RUN[State.AWAIT_CONNECT]
        self._subscriptions: dict[str, str] = {}  # id -> destination
        self._destinations: dict[str, str] = {}  # destination -> its live (newest) id
        # id -> the older id of the same destination it shadows; made on the first
        # duplicate, which most connections never send.
        self._shadowed: dict[str, str] | None = None
        self._transactions: dict[str, _Transaction] = {}
        # A COMMIT's frames, then its own receipt, waiting to come out of next_event().
        # Made on the first COMMIT: an empty deque is 760 bytes, on every connection.
        self._released: deque[tuple[Frame | None, str, str | None]] | None = None
        self._blame: str | None = None  # the receipt-id of the frame being handled
        self._error_sent = False

    # --- bytes in, events out -------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Bytes from the client; ``b""`` for the end of the stream. While the login is
        checked they wait, unread."""
        if not self._table and self.state is not State.LOGIN:
            raise self._not_reading()
        self.reader.receive_data(data)

    def next_event(self) -> ConversationEvent | Literal[Sentinel.NEED_DATA, Sentinel.CLOSED]:
        """The next thing the caller must act on, NEED_DATA, or CLOSED (the client ended
        the stream between frames). Heart-beats are consumed here.

        Raises RemoteProtocolError for a frame that breaks the protocol (the conversation
        is in ERROR then), LocalProtocolError when the state reads no frames.
        """
        if not self._table:
            if self.state is State.CLOSED:
                return CLOSED
            raise self._not_reading()
        try:
            while True:
                if self._released:
                    event = self._release()
                else:
                    frame = self.reader.next_event()
                    if type(frame) is not Frame:
                        if frame is NEED_DATA:
                            return NEED_DATA
                        if frame is CLOSED:
                            self._enter(State.CLOSED)
                            return CLOSED
                        assert isinstance(frame, HeartBeat)
                        continue
                    receipt = self._blame = frame.get("receipt")
                    take, then = self._table[frame.command]
                    event = take(self, frame, receipt)
                    if then is not self.state:
                        self._enter(then)
                if event is not None:
                    return event
        except RemoteProtocolError:
            self._enter(State.ERROR)
            raise

    def _take(self, frame: Frame, receipt: str | None) -> ConversationEvent | None:
        take, then = self._table[frame.command]
        event = take(self, frame, receipt)
        if then is not self.state:
            self._enter(then)
        return event

    def _release(self) -> ConversationEvent | None:
        assert self._released is not None  # next_event() calls this only when it holds some
        frame, tx, commit_receipt = self._released.popleft()
        self._blame = commit_receipt
        if frame is None:  # every frame of the COMMIT was handled: its own receipt
            return None if commit_receipt is None else Receipt(commit_receipt, commit_receipt)
        event = self._take(frame, None)
        if type(event) is Send:
            return Send(event.frame, event.destination, tx, None, commit_receipt)
        return event

    # --- the caller's answers -------------------------------------------------------

    def accept(self, session_id: str) -> bytes:
        """The login of the ConnectRequest is good: the CONNECTED frame to send. From now
        on, frames are read and written in the agreed version, up to the full frame size."""
        if self.state is not State.LOGIN:
            raise LocalProtocolError("Not expecting a login", f"accept() in state {self.state!r}")
        sx, sy = self.heart_beat
        data = self.writer.send(
            Frame(
                "CONNECTED",
                (
                    ("version", self.version),
                    ("heart-beat", f"{sx},{sy}"),
                    ("server", SERVER_NAME),
                    ("session", session_id),
                ),
            )
        )
        self.reader.version = self.version
        self.reader.max_frame_size = self._max_frame_size
        self.writer.version = self.version
        self._enter(State.CONNECTED)
        return data

    def receipt(self, receipt_id: str) -> bytes:
        """The RECEIPT frame for `receipt_id`. A receipt this version cannot echo (a CR
        before 1.2) is refused: that is an ERROR, never a RECEIPT silently dropped."""
        if self.state is State.ERROR:
            raise LocalProtocolError("Conversation over", "no RECEIPT after an ERROR")
        try:
            return self.writer.send(Frame("RECEIPT", (("receipt-id", receipt_id),)))
        except LocalProtocolError:
            self._enter(State.ERROR)
            raise RemoteProtocolError(
                "Bad receipt",
                f"the receipt header cannot be echoed in STOMP {self.version}",
                (("receipt-id", receipt_id),),
            ) from None

    def send_error(self, error: StompError, receipt_id: str | None = None) -> bytes:
        """The ERROR frame for `error`: its message, its headers, `receipt_id` unless the
        error names one, and its detail as a text body. The conversation is over after it;
        one ERROR at most."""
        if self._error_sent:
            raise LocalProtocolError("Conversation over", "an ERROR was sent already")
        self._error_sent = True
        self._enter(State.ERROR)
        headers = [("message", error.message), *error.headers]
        if receipt_id is not None and not any(name == "receipt-id" for name, _ in headers):
            headers.append(("receipt-id", receipt_id))
        body = error.detail.encode() if error.detail else b""
        if body:
            headers.append(("content-type", "text/plain"))
        try:
            return self.writer.send(Frame("ERROR", tuple(headers), body))
        except LocalProtocolError:
            # An echoed value (a receipt-id with a raw CR under 1.0/1.1) that this version
            # cannot carry: the ERROR still goes out, without it.
            return self.writer.send(Frame("ERROR", (("message", error.message),), body))

    def expired(self) -> RemoteProtocolError | None:
        """The ERROR owed for a transaction open longer than ``tx_timeout``, or None. A
        frame for such a transaction, or its COMMIT, is refused the same way."""
        now = self._clock()
        for tx, held in self._transactions.items():
            if now >= held.deadline:
                return self._timed_out(tx, RemoteProtocolError)
        return None

    def forget_subscription(self, sub_id: str) -> str | None:
        """The server ended subscription `sub_id` (its user left the room): the id is free
        again, and UNSUBSCRIBE no longer knows it. Returns the older subscription to the
        same destination that is live again, if any (see Unsubscribe.resumes)."""
        if sub_id not in self._subscriptions:
            return None
        return self._remove_subscription(sub_id)

    # --- handlers: one frame in, an event (or None) out -----------------------------

    def _connect(self, frame: Frame, receipt: str | None) -> ConnectRequest:
        version = negotiate_version(frame.get("accept-version"))
        if version is None:
            supported = ",".join(VERSIONS)
            raise self._refusal(
                "Version mismatch", f"Supported versions are {supported}", ("version", supported)
            )
        host = frame.get("host")
        if self.vhosts and host is not None and host not in self.vhosts:
            raise self._refusal("Bad CONNECT", f"Virtual host '{host}' access denied")
        try:
            client = parse_heart_beat(frame.get("heart-beat"))
        except RemoteProtocolError as exc:
            raise self._refusal(exc.message, exc.detail) from None
        self.version = version
        self.heart_beat = negotiate_heart_beat(client, self.heartbeat_min_ms)
        if host:
            self.host = host
        return ConnectRequest(
            version,
            self.heart_beat,
            frame.get("login") or "",
            frame.get("passcode") or "",
            host,
            receipt,
        )

    def _hold(self, frame: Frame, tx: str, receipt: str | None) -> Receipt | None:
        held = self._transactions.get(tx)
        if held is None:
            raise self._refusal("Bad transaction", f'Invalid transaction identifier: "{tx}"')
        if self._clock() >= held.deadline:
            raise self._timed_out(tx, self._refusal)
        if len(held.frames) >= self.max_tx_frames:
            raise self._refusal(
                "Transaction too large",
                f"Too many actions in transaction (limit {self.max_tx_frames})",
            )
        # Checked when released, as if sent then: a bad frame fails its COMMIT.
        kept = Frame(
            frame.command,
            tuple(h for h in frame.headers if h[0] not in _STRIPPED_AT_COMMIT),
            frame.body,
        )
        size = _held_size(kept)
        if self._tx_bytes + size > self.max_tx_bytes:
            raise self._refusal(
                "Transaction too large",
                f"the open transactions of a connection may hold at most {self.max_tx_bytes} "
                f"bytes; {frame.command} to transaction {tx!r} would hold {size} more",
            )
        held.frames.append(kept)
        held.size += size
        self._tx_bytes += size
        return None if receipt is None else Receipt(receipt, receipt)

    def _send(self, frame: Frame, receipt: str | None) -> Send | Receipt | None:
        tx = frame.get("transaction")
        if tx is not None:
            return self._hold(frame, tx, receipt)
        destination = self._destination(frame)
        return Send(frame, destination, None, receipt, self._blame)

    def _subscribe(self, frame: Frame, receipt: str | None) -> Subscribe:
        destination = self._destination(frame)
        sub_id = frame.get("id")
        if sub_id is None:
            if self.version != V10:
                raise self._missing_header("SUBSCRIBE", "id")
            sub_id = destination
        if sub_id in self._subscriptions:
            raise self._refusal(
                "Duplicated subscription identifier",
                f"A subscription identified by '{sub_id}' already exists.",
            )
        if len(self._subscriptions) >= self.max_subscriptions:
            raise self._refusal(
                "Too many subscriptions",
                f"reached maximum ({self.max_subscriptions}) of subscriptions per connection",
            )
        ack = frame.get("ack") or "auto"
        if ack not in ACK_MODES:
            raise self._refusal(
                "Bad ack mode", f"ack must be auto, client or client-individual: {ack!r}"
            )
        # A second SUBSCRIBE to a destination is taken (stompjs apps send one whenever a
        # part of the app wants a room, and the STOMP guide's joinRoom() subscribes to a
        # room it is already in), but a message still reaches the connection once: under
        # the newest subscription, which stompjs dispatches to the newest callback.
        # RabbitMQ would deliver it once per subscription, so that thousands of
        # SUBSCRIBEs made one message thousands of frames.
        shadows = self._destinations.get(destination)
        if shadows is not None:
            if self._shadowed is None:
                self._shadowed = {}
            self._shadowed[sub_id] = shadows
        self._subscriptions[sub_id] = destination
        self._destinations[destination] = sub_id
        return Subscribe(frame, sub_id, destination, ack, receipt, self._blame, shadows)

    def _unsubscribe(self, frame: Frame, receipt: str | None) -> Unsubscribe:
        sub_id = frame.get("id")
        if sub_id is None and self.version == V10:
            sub_id = frame.get("destination")
        if sub_id is None:
            raise self._refusal(
                "Missing destination or id",
                "UNSUBSCRIBE must include a 'destination' or 'id' header",
            )
        if sub_id not in self._subscriptions:
            raise self._refusal(
                "No subscription found",
                "UNSUBSCRIBE must refer to an existing subscription.\n"
                f'Subscription to "{sub_id}" not found.',
            )
        resumes = self._remove_subscription(sub_id)
        return Unsubscribe(sub_id, receipt, self._blame, resumes)

    def _remove_subscription(self, sub_id: str) -> str | None:
        """Forget a known id; returns the older id of its destination that is live again
        (when `sub_id` was the live one and shadowed another)."""
        destination = self._subscriptions.pop(sub_id)
        shadowed = self._shadowed
        older = None if shadowed is None else shadowed.pop(sub_id, None)
        if self._destinations[destination] == sub_id:
            if older is None:
                del self._destinations[destination]
            else:
                self._destinations[destination] = older
        else:
            # A shadowed one: whoever shadowed it now shadows what it shadowed.
            assert shadowed is not None
            newer = next(n for n, o in shadowed.items() if o == sub_id)
            if older is None:
                del shadowed[newer]
            else:
                shadowed[newer] = older
            older = None
        if shadowed is not None and not shadowed:
            self._shadowed = None
        return older

    def _ack(self, frame: Frame, receipt: str | None) -> Ack | Receipt | None:
        tx = frame.get("transaction")
        if tx is not None:
            return self._hold(frame, tx, receipt)
        command = frame.command
        if self.version == V12:
            ack_id = frame.get("id")
            if ack_id is None:
                raise self._missing_header(command, "id")
        else:
            ack_id = frame.get("message-id")
            if ack_id is None:
                raise self._missing_header(command, "message-id")
        return Ack(
            frame,
            ack_id,
            frame.get("subscription"),
            command == "ACK",
            # RabbitMQ reads `requeue:False` (any case) as false too.
            (frame.get("requeue") or "true").lower() != "false",
            receipt,
            self._blame,
        )

    def _begin(self, frame: Frame, receipt: str | None) -> Receipt | None:
        tx = frame.get("transaction")
        if not tx:
            raise self._missing_transaction("BEGIN")
        if tx in self._transactions:
            raise self._refusal("Bad transaction", f"transaction {tx!r} is already open")
        if len(self._transactions) >= self.max_transactions:
            raise self._refusal(
                "Transaction limit exceeded",
                f"Too many concurrent transactions (limit {self.max_transactions})",
            )
        deadline = self._clock() + self.tx_timeout
        self._transactions[tx] = _Transaction(deadline)
        self.transaction_deadline = min(self.transaction_deadline, deadline)
        return None if receipt is None else Receipt(receipt, receipt)

    def _commit(self, frame: Frame, receipt: str | None) -> None:
        tx, held = self._end_transaction(frame)
        if self._clock() >= held.deadline:
            raise self._timed_out(tx, self._refusal)
        # Its frames come out of next_event() one by one, each answered (or refused) in
        # turn, and the COMMIT's receipt last: it is owed only once all of them are done.
        if self._released is None:
            self._released = deque()
        self._released.extend((f, tx, receipt) for f in held.frames)
        self._released.append((None, tx, receipt))
        return None

    def _abort(self, frame: Frame, receipt: str | None) -> Receipt | None:
        self._end_transaction(frame)
        return None if receipt is None else Receipt(receipt, receipt)

    def _end_transaction(self, frame: Frame) -> tuple[str, _Transaction]:
        tx = frame.get("transaction")
        if not tx:
            raise self._missing_transaction(frame.command)
        held = self._transactions.pop(tx, None)
        if held is None:
            raise self._refusal("Bad transaction", f'Invalid transaction identifier: "{tx}"')
        self._tx_bytes -= held.size
        self.transaction_deadline = min(
            (t.deadline for t in self._transactions.values()), default=math.inf
        )
        return tx, held

    def _disconnect(self, frame: Frame, receipt: str | None) -> Disconnect:
        return Disconnect(receipt, receipt)

    # --- helpers --------------------------------------------------------------------

    def _destination(self, frame: Frame) -> str:
        destination = frame.get("destination")
        if destination is None:
            raise self._refusal(
                "Missing destination", f"\"{frame.command}\" must include a 'destination' header"
            )
        if not destination:
            raise self._refusal("Invalid destination", "Destination cannot be blank")
        return destination

    def _missing_header(self, command: str, header: str) -> RemoteProtocolError:
        return self._refusal("Missing header", f'"{command}" must include the "{header}" header')

    def _missing_transaction(self, command: str) -> RemoteProtocolError:
        return self._refusal(
            "Missing transaction", f"\"{command}\" must include a 'transaction' header"
        )

    def _refusal(self, message: str, detail: str, *headers: tuple[str, str]) -> RemoteProtocolError:
        if self._blame is not None:
            headers = (*headers, ("receipt-id", self._blame))
        return RemoteProtocolError(message, detail, headers)

    def _timed_out(
        self, tx: str, error: Callable[[str, str], RemoteProtocolError]
    ) -> RemoteProtocolError:
        return error(
            "Transaction timed out",
            f"transaction {tx!r} was open longer than {self.tx_timeout:g} seconds",
        )

    def _enter(self, state: State) -> None:
        self.state = state
        self._table = _RUN.get(state, {})

    def _not_reading(self) -> LocalProtocolError:
        return LocalProtocolError(
            "Not reading", f"the conversation reads no frames in state {self.state!r}"
        )


@dataclass(slots=True)
class _Transaction:
    deadline: float  # on the conversation's clock
    frames: list[Frame] = field(default_factory=list)
    size: int = 0  # bytes, as _held_size counts them


# What holding a frame costs beyond its strings and body: the Frame and its header tuple,
# and each header's (name, value) tuple.
_FRAME_COST: Final = 128
_HEADER_COST: Final = 64


def _held_size(frame: Frame) -> int:
    """The bytes holding `frame` takes: its body and header strings as Python stores them
    (a header of short ASCII strings costs far more than its bytes on the wire), and the
    objects around them."""
    size = _FRAME_COST + sys.getsizeof(frame.body)
    for name, value in frame.headers:
        size += _HEADER_COST + sys.getsizeof(name) + sys.getsizeof(value)
    return size


_Handler: TypeAlias = Callable[[Conversation, Frame, "str | None"], "ConversationEvent | None"]


def _refuser(row: Refuse) -> _Handler:
    def refuse(conv: Conversation, frame: Frame, receipt: str | None) -> None:
        raise conv._refusal(row.message, row.detail.format(command=frame.command))

    return refuse


def _compile() -> None:
    """TRANSITIONS as the reader's dispatch: for each state, command -> (the function that
    takes the frame, the state after it). Built once, so a frame costs one lookup."""
    _RUN.clear()
    for state, rows in TRANSITIONS.items():
        _RUN[state] = {
            command: (getattr(Conversation, "_" + row.handler), row.then)
            if isinstance(row, Take)
            else (_refuser(row), State.ERROR)
            for command, row in rows.items()
        }


_RUN: Final[dict[State, dict[str, tuple[_Handler, State]]]] = {}
_compile()
