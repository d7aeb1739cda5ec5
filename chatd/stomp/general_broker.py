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
same way for queues and topics. State lives in memory only.
"""

from __future__ import annotations

import fnmatch
import itertools
from collections import deque
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
    """The session side: how a consumer's frames leave."""

    writer: FrameWriter

    def push_frame(self, data: bytes) -> None: ...


@dataclass(eq=False, slots=True)
class BrokerMessage:
    id: str
    destination: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
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


class GeneralBroker:
    def __init__(self, patterns: list[str], max_messages: int = 10_000) -> None:
        self.patterns = list(patterns)
        self.max_messages = max_messages
        self._queues: dict[str, Queue] = {}
        self._bindings: list[tuple[str, str, Queue]] = []  # (exchange, pattern, queue)
        self._consumers: dict[Peer, list[Consumer]] = {}

    def allowed(self, dest: str) -> bool:
        return any(fnmatch.fnmatchcase(dest, p) for p in self.patterns)

    def _check(self, dest: str) -> tuple[str, str, str]:
        if not self.allowed(dest):
            raise BrokerError("Access refused", f"destination {dest!r} is not allowed here", 403)
        return parse_destination(dest)

    # --- consumers ----------------------------------------------------------------------

    def subscribe(self, peer: Peer, sub_id: str, dest: str, ack: str, prefetch: int) -> Consumer:
        kind, name, key = self._check(dest)
        if kind == "queue":
            queue = self._queues.get(name)
            if queue is None:
                queue = self._queues[name] = Queue(name, False, self.max_messages)
        else:
            queue = Queue(f"{name}/{key}#{next(_ids)}", True, self.max_messages)
            self._bindings.append((name, key or "#", queue))
        consumer = Consumer(peer, sub_id, dest, ack, prefetch, queue)
        queue.consumers.append(consumer)
        self._consumers.setdefault(peer, []).append(consumer)
        self._dispatch(queue)
        return consumer

    def unsubscribe(self, consumer: Consumer) -> None:
        queue = consumer.queue
        if consumer in queue.consumers:
            queue.consumers.remove(consumer)
        mine = self._consumers.get(consumer.peer)
        if mine is not None and consumer in mine:
            mine.remove(consumer)
            if not mine:
                del self._consumers[consumer.peer]
        if queue.private:
            self._bindings = [b for b in self._bindings if b[2] is not queue]
            return
        self._requeue(queue, list(consumer.unacked.values()))
        consumer.unacked.clear()
        self._dispatch(queue)

    def peer_gone(self, peer: Peer) -> None:
        for consumer in list(self._consumers.get(peer, ())):
            self.unsubscribe(consumer)

    # --- publishing ---------------------------------------------------------------------

    def publish(self, dest: str, headers: tuple[tuple[str, str], ...], body: bytes) -> int:
        """Route a SEND; returns how many queues took it."""
        kind, name, key = self._check(dest)
        kept = tuple((k, v) for k, v in headers if k not in RESERVED)
        msg_id = f"B-{next(_ids)}"
        if kind == "queue":
            queue = self._queues.get(name)
            if queue is None:
                queue = self._queues[name] = Queue(name, False, self.max_messages)
            targets = [queue]
        else:
            targets = [q for ex, pat, q in self._bindings if ex == name and topic_matches(pat, key)]
        for queue in targets:
            if len(queue.messages) >= queue.max_messages:
                raise BrokerError(
                    "Queue full", f"{queue.name} holds {queue.max_messages} messages", 429
                )
        for queue in targets:
            queue.messages.append(BrokerMessage(msg_id, dest, kept, body))
            self._dispatch(queue)
        return len(targets)

    def _dispatch(self, queue: Queue) -> None:
        while queue.messages and queue.consumers:
            n = len(queue.consumers)
            for step in range(n):
                consumer = queue.consumers[(queue.turn + step) % n]
                if consumer.has_room():
                    queue.turn = (queue.turn + step + 1) % n
                    self._deliver(consumer, queue.messages.popleft())
                    break
            else:
                return

    def _deliver(self, consumer: Consumer, msg: BrokerMessage) -> None:
        headers = [
            ("subscription", consumer.sub_id),
            ("destination", msg.destination),
            ("message-id", msg.id),
            ("redelivered", "true" if msg.redelivered else "false"),
        ]
        if consumer.ack != "auto":
            headers.append(("ack", msg.id))
            consumer.unacked[msg.id] = msg
        writer = consumer.peer.writer
        try:
            data = writer.send(Frame("MESSAGE", (*headers, *msg.headers), msg.body))
        except LocalProtocolError:
            # A custom header this consumer's STOMP version cannot carry (a newline under
            # 1.0): deliver the message without the custom headers rather than not at all.
            data = writer.send(Frame("MESSAGE", tuple(headers), msg.body))
        consumer.peer.push_frame(data)

    def _requeue(self, queue: Queue, msgs: list[BrokerMessage]) -> None:
        for msg in reversed(msgs):
            msg.redelivered = True
            queue.messages.appendleft(msg)

    # --- acknowledgements ---------------------------------------------------------------

    def _find(self, peer: Peer, ack_id: str, sub_id: str | None) -> Consumer | None:
        for consumer in self._consumers.get(peer, ()):
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
            self._requeue(queue, msgs)
        self._dispatch(queue)
        return True
