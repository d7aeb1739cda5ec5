"""A small general STOMP broker beside the chat destinations, for apps built on chatd.

Off by default; `[stomp] broker_enabled` turns it on and `broker_destinations` lists the
destination patterns (shell globs) it serves. Semantics follow RabbitMQ's STOMP plugin:

- `/queue/NAME` (or `/amq/queue/NAME`): one shared queue; messages wait until a consumer
  takes them and go round-robin to competing consumers.
- `/topic/KEY`: the `amq.topic` exchange; each subscription gets a private queue bound
  with KEY as an AMQP topic pattern (`*` one word, `#` any number of words).
- `/exchange/NAME/KEY`: the same for a named exchange.

Every subscription is a consumer of one queue, so ack modes, `prefetch-count`, NACK with
requeue, and redelivery of unacknowledged messages when a consumer goes away all work the
same way for queues and topics. State lives in memory only: a restart loses every queue.

A queue hands a consumer only what its connection can take (credit, as RabbitMQ's own
flow control): a consumer whose connection has no room is passed over, and the session
calls `resume` when room frees. So a consumer draining a backlog as fast as it can is
never a slow consumer. A message stays the queue's until the socket took it (auto) or it
is acknowledged (client modes): a connection that ends with deliveries still unwritten
gives them back, marked redelivered. Only a topic subscriber whose private queue fills
(it stopped reading while the topic kept publishing) is cut as a slow consumer.

Bounded: named queues in number (`max_queues`), every queue in messages
(`max_messages`), all of them together in bytes (`max_bytes`, what waits, what is in
flight and what is unacknowledged); a named queue left empty with no consumer for
`idle_seconds` is dropped.
"""

from __future__ import annotations

import fnmatch
import itertools
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from chatd.model import ClientError
from chatd.stomp import (
    AMQ_QUEUE_PREFIX,
    EXCHANGE_PREFIX,
    QUEUE_PREFIX,
    TOPIC_PREFIX,
    Frame,
    FrameWriter,
    LocalProtocolError,
)

RESERVED = frozenset(
    {
        "destination",
        "transaction",
        "receipt",
        "content-length",
        "message-id",
        "subscription",
        "ack",
        "redelivered",
        "persistent",
        "id",
    }
)
_ids = itertools.count(1)


class BrokerError(ClientError):
    """`message` is the STOMP ERROR frame's message header, `detail` its body."""

    def __init__(self, message: str, detail: str, status: int = 400) -> None:
        super().__init__(message.lower().replace(" ", "_"), message, status)
        self.detail = detail


class Peer(Protocol):
    """The session side: how a consumer's frames leave, and how fast they may."""

    writer: FrameWriter

    def can_take(self) -> bool:
        """Whether the connection has room for another message now. When it has not,
        the peer calls `GeneralBroker.resume` once it has (unless it is closing)."""
        ...

    def deliver(self, frame: bytes) -> int | None:
        """Queue an encoded MESSAGE: the count of `bytes_written` at which it has left,
        or None when it does not fit now (the peer calls `resume` once it does)."""
        ...

    def bytes_written(self) -> int:
        """Bytes the connection's socket has taken, ever."""
        ...

    def cut(self) -> None:
        """End a connection that stopped reading: a private queue of its overflowed."""
        ...


@dataclass(eq=False, slots=True)
class BrokerMessage:
    id: str
    destination: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    size: int  # what it holds in memory, as the byte bound counts it
    redelivered: bool = False


@dataclass(eq=False, slots=True)
class Consumer:
    peer: Peer
    sub_id: str
    destination: str
    ack: str
    prefetch: int
    queue: Queue
    unacked: dict[str, BrokerMessage] = field(default_factory=dict)

    def has_room(self) -> bool:
        return self.ack == "auto" or not self.prefetch or len(self.unacked) < self.prefetch


@dataclass(eq=False, slots=True)
class Queue:
    name: str
    private: bool
    max_messages: int
    messages: deque[BrokerMessage] = field(default_factory=deque)
    consumers: list[Consumer] = field(default_factory=list)
    turn: int = 0
    held: int = 0  # messages delivered and not yet settled (unwritten or unacknowledged)
    dropped: bool = False


@dataclass(eq=False, slots=True)
class _PeerState:
    consumers: list[Consumer] = field(default_factory=list)
    # Auto-ack deliveries the socket may not have taken yet, oldest first: (the count of
    # bytes written at which it has left, the message, its queue).
    flight: deque[tuple[int, BrokerMessage, Queue]] = field(default_factory=deque)


def topic_matches(pattern: str, key: str) -> bool:
    """AMQP topic matching: words split on '.', '*' is one word, '#' is zero or more."""
    return _match(pattern.split("."), key.split("."))


def _match(pat: list[str], words: list[str]) -> bool:
    if not pat:
        return not words
    head, rest = pat[0], pat[1:]
    if head == "#":
        return any(_match(rest, words[i:]) for i in range(len(words) + 1))
    if not words:
        return False
    return (head == "*" or head == words[0]) and _match(rest, words[1:])


def parse_destination(dest: str) -> tuple[str, str, str]:
    """('queue', name, '') or ('exchange', exchange, routing key); BrokerError otherwise."""
    for prefix in (QUEUE_PREFIX, AMQ_QUEUE_PREFIX):
        if dest.startswith(prefix) and len(dest) > len(prefix):
            return "queue", dest[len(prefix) :], ""
    if dest.startswith(TOPIC_PREFIX) and len(dest) > len(TOPIC_PREFIX):
        return "exchange", "amq.topic", dest[len(TOPIC_PREFIX) :]
    if dest.startswith(EXCHANGE_PREFIX):
        name, _, key = dest[len(EXCHANGE_PREFIX) :].partition("/")
        if name:
            return "exchange", name, key
    raise BrokerError("Bad destination", f"destination {dest!r} is not a broker destination")


def _size(dest: str, headers: tuple[tuple[str, str], ...], body: bytes) -> int:
    # The bytes a client chose (body, headers, destination), plus the objects holding them.
    return len(body) + len(dest) + sum(len(k) + len(v) for k, v in headers) + 200


class GeneralBroker:
    def __init__(
        self,
        patterns: list[str],
        max_messages: int = 10_000,
        *,
        max_queues: int = 1000,
        max_bytes: int = 64 * 1024 * 1024,
        idle_seconds: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.patterns = list(patterns)
        self.max_messages = max_messages
        self.max_queues = max_queues
        self.max_bytes = max_bytes
        self.idle_seconds = idle_seconds
        self._clock = clock
        self.bytes = 0  # held by every queue: waiting, in flight, unacknowledged
        self._queues: dict[str, Queue] = {}
        # Named queues empty with no consumer, by name, oldest first, with when they
        # became so (the clock only goes forward, so insertion order is time order).
        self._idle: dict[str, float] = {}
        self._bindings: list[tuple[str, str, Queue]] = []  # (exchange, pattern, queue)
        self._peers: dict[Peer, _PeerState] = {}

    def allowed(self, dest: str) -> bool:
        return any(fnmatch.fnmatchcase(dest, p) for p in self.patterns)

    def _check(self, dest: str) -> tuple[str, str, str]:
        if not self.allowed(dest):
            raise BrokerError("Access refused", f"destination {dest!r} is not allowed here", 403)
        return parse_destination(dest)

    @property
    def queue_count(self) -> int:
        """Named queues held (subscriptions' private queues are bounded by subscriptions)."""
        return len(self._queues)

    # --- named queues -------------------------------------------------------------------

    def _named(self, name: str) -> Queue:
        queue = self._queues.get(name)
        if queue is not None:
            self._idle.pop(name, None)
            return queue
        self.expire()
        if len(self._queues) >= self.max_queues:
            raise BrokerError(
                "Too many queues", f"the broker holds its limit of {self.max_queues} queues", 429
            )
        queue = self._queues[name] = Queue(name, False, self.max_messages)
        return queue

    def _maybe_idle(self, queue: Queue) -> None:
        if queue.private or queue.dropped or queue.consumers or queue.messages or queue.held:
            return
        self._idle.pop(queue.name, None)
        self._idle[queue.name] = self._clock()

    def expire(self) -> None:
        """Drop the named queues empty with no consumer for `idle_seconds`. Run whenever a
        queue is made, so the count bound never counts an expired one."""
        idle = self._idle
        cutoff = self._clock() - self.idle_seconds
        while idle:
            name, since = next(iter(idle.items()))
            if since > cutoff:
                return
            del idle[name]
            queue = self._queues.pop(name)
            queue.dropped = True

    # --- consumers ----------------------------------------------------------------------

    def subscribe(self, peer: Peer, sub_id: str, dest: str, ack: str, prefetch: int) -> Consumer:
        kind, name, key = self._check(dest)
        if kind == "queue":
            queue = self._named(name)
        else:
            queue = Queue(f"{name}/{key}#{next(_ids)}", True, self.max_messages)
            self._bindings.append((name, key or "#", queue))
        consumer = Consumer(peer, sub_id, dest, ack, prefetch, queue)
        queue.consumers.append(consumer)
        state = self._peers.get(peer)
        if state is None:
            state = self._peers[peer] = _PeerState()
        state.consumers.append(consumer)
        self._dispatch(queue)
        return consumer

    def unsubscribe(self, consumer: Consumer) -> None:
        """The consumer stops; what it left unacknowledged goes back to the queue. Its
        deliveries already offered to a live connection go out with it."""
        queue = consumer.queue
        if consumer in queue.consumers:
            queue.consumers.remove(consumer)
        state = self._peers.get(consumer.peer)
        if state is not None and consumer in state.consumers:
            state.consumers.remove(consumer)
        msgs = list(consumer.unacked.values())
        consumer.unacked.clear()
        queue.held -= len(msgs)
        if queue.private:
            queue.dropped = True
            self._bindings = [b for b in self._bindings if b[2] is not queue]
            for msg in (*queue.messages, *msgs):
                self.bytes -= msg.size
            queue.messages.clear()
            return
        self._requeue(queue, msgs)
        self._dispatch(queue)
        self._maybe_idle(queue)

    def peer_gone(self, peer: Peer) -> None:
        """The connection ended: its deliveries the socket never took and its
        unacknowledged ones go back to their queues, in order, marked redelivered."""
        state = self._peers.pop(peer, None)
        if state is None:
            return
        requeued = self._settle_flight(state, peer.bytes_written(), requeue=True)
        for consumer in list(state.consumers):
            self.unsubscribe(consumer)
        for queue in requeued:
            self._dispatch(queue)

    def resume(self, peer: Peer) -> None:
        """The peer's connection has room again: its consumers take what waits."""
        state = self._peers.get(peer)
        if state is None:
            return
        self._settle_flight(state, peer.bytes_written())
        for consumer in list(state.consumers):
            self._dispatch(consumer.queue)

    # --- publishing ---------------------------------------------------------------------

    def publish(self, dest: str, headers: tuple[tuple[str, str], ...], body: bytes) -> int:
        """Route a SEND; returns how many queues took it."""
        kind, name, key = self._check(dest)
        kept = tuple((k, v) for k, v in headers if k not in RESERVED)
        size = _size(dest, kept, body)
        if kind == "queue":
            # Checked before the queue is made: a refused SEND leaves no queue behind.
            self._check_bytes(size)
            targets = [self._named(name)]
        else:
            targets = []
            for ex, pat, q in self._bindings:
                if ex == name and topic_matches(pat, key):
                    if len(q.messages) < q.max_messages:
                        targets.append(q)
                    elif q.consumers:
                        # A subscriber that stopped reading: it alone is cut, the
                        # publisher and the other subscribers carry on.
                        q.consumers[0].peer.cut()
        for queue in targets:
            if len(queue.messages) >= queue.max_messages:
                raise BrokerError(
                    "Queue full", f"{queue.name} holds {queue.max_messages} messages", 429
                )
        self._check_bytes(size * len(targets))
        msg_id = f"B-{next(_ids)}"
        for queue in targets:
            self._idle.pop(queue.name, None)
            queue.messages.append(BrokerMessage(msg_id, dest, kept, body, size))
            self.bytes += size
            self._dispatch(queue)
        return len(targets)

    def _check_bytes(self, size: int) -> None:
        if size and self.bytes + size > self.max_bytes:
            raise BrokerError(
                "Queue full", f"the broker's queues hold their limit of {self.max_bytes} bytes", 429
            )

    def _dispatch(self, queue: Queue) -> None:
        messages = queue.messages
        consumers = queue.consumers
        while messages and consumers:
            n = len(consumers)
            for step in range(n):
                consumer = consumers[(queue.turn + step) % n]
                if consumer.has_room() and consumer.peer.can_take():
                    msg = messages.popleft()
                    if self._deliver(consumer, msg):
                        queue.turn = (queue.turn + step + 1) % n
                        break
                    messages.appendleft(msg)
            else:
                return

    def _deliver(self, consumer: Consumer, msg: BrokerMessage) -> bool:
        headers = [
            ("subscription", consumer.sub_id),
            ("destination", msg.destination),
            ("message-id", msg.id),
            ("redelivered", "true" if msg.redelivered else "false"),
        ]
        if consumer.ack != "auto":
            headers.append(("ack", msg.id))
        peer = consumer.peer
        writer = peer.writer
        try:
            data = writer.send(Frame("MESSAGE", (*headers, *msg.headers), msg.body))
        except LocalProtocolError:
            # A custom header this consumer's STOMP version cannot carry (a newline under
            # 1.0): deliver the message without the custom headers rather than not at all.
            data = writer.send(Frame("MESSAGE", tuple(headers), msg.body))
        leaves_at = peer.deliver(data)
        if leaves_at is None:
            return False
        queue = consumer.queue
        queue.held += 1
        if consumer.ack != "auto":
            consumer.unacked[msg.id] = msg
            return True
        state = self._peers[peer]
        state.flight.append((leaves_at, msg, queue))
        self._settle_flight(state, peer.bytes_written())
        return True

    def _settle_flight(self, state: _PeerState, written: int, requeue: bool = False) -> list[Queue]:
        """Auto-ack deliveries the socket took are done; with `requeue`, the rest go back
        (returns the queues they went back to)."""
        flight = state.flight
        while flight and flight[0][0] <= written:
            _, msg, queue = flight.popleft()
            self._release(queue, msg)
        if not requeue or not flight:
            return []
        back: dict[int, tuple[Queue, list[BrokerMessage]]] = {}
        for _, msg, queue in flight:
            queue.held -= 1
            back.setdefault(id(queue), (queue, []))[1].append(msg)
        flight.clear()
        for queue, msgs in back.values():
            self._requeue(queue, msgs)
        return [queue for queue, _ in back.values()]

    def _release(self, queue: Queue, msg: BrokerMessage) -> None:
        queue.held -= 1
        self.bytes -= msg.size
        if not queue.held:
            self._maybe_idle(queue)

    def _requeue(self, queue: Queue, msgs: list[BrokerMessage]) -> None:
        if queue.dropped:
            for msg in msgs:
                self.bytes -= msg.size
            return
        for msg in reversed(msgs):
            msg.redelivered = True
            queue.messages.appendleft(msg)

    # --- acknowledgements ---------------------------------------------------------------

    def _find(self, peer: Peer, ack_id: str, sub_id: str | None) -> Consumer | None:
        state = self._peers.get(peer)
        for consumer in state.consumers if state is not None else ():
            if (sub_id is None or consumer.sub_id == sub_id) and ack_id in consumer.unacked:
                return consumer
        return None

    def settle(self, peer: Peer, ack_id: str, sub_id: str | None, ack: bool, requeue: bool) -> bool:
        """ACK or NACK one delivery (and, in `client` mode, every earlier one).
        Returns False when no consumer of this peer holds `ack_id`."""
        consumer = self._find(peer, ack_id, sub_id)
        if consumer is None:
            return False
        if consumer.ack == "client":
            ids = list(consumer.unacked)
            settled = ids[: ids.index(ack_id) + 1]
        else:
            settled = [ack_id]
        msgs = [consumer.unacked.pop(i) for i in settled]
        queue = consumer.queue
        if not ack and requeue:
            queue.held -= len(msgs)
            self._requeue(queue, msgs)
        else:
            for msg in msgs:
                self._release(queue, msg)
        self._dispatch(queue)
        return True
