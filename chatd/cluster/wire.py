"""What travels between nodes on the bus, as STOMP frames to RabbitMQ's amq.direct.

A node's publications (events and control messages) go out in batches: one frame carries
every publication made since the node's last frame, in order. RabbitMQ's work is per
frame (it turns each STOMP frame into an AMQP message and back for every node's queue:
some 200 µs of its CPU), so at 1,000 messages a second the batching is what keeps the
broker from needing a core of its own.

A frame: the header `chatd` is "MARK NODE NUMBER TIME SIGNATURE": the cluster's own mark,
kept in its database, so frames of another cluster sharing the vhost and [bus] name are
told apart (and reported: a configuration to fix); the sending node; the frame's number in
that node's run, which only grows; when it was sent (ms since the epoch); and HMAC-SHA256
of node, number, time and body with the cluster's bus key, also in its database and never
on the bus. Anyone allowed on the vhost can read the mark, and publish; without the key a
frame is not taken, nor is a genuine one sent again (its number is not newer than the
node's last, or, for a node that never heard that node, it is older than
`chatd.cluster.bus.FRAME_MAX_AGE` or than the receiver's subscription). The body is one
line of part descriptions, separated by "|", then the parts' bodies back to back. A part
description is seven space-separated fields, "-" when absent: the topic (`room.N`,
`user.N`, `control`), the event's kind, a chat message's id and the id committed before
it, where the part's `/chat` text starts, what that text is ("c": `Event.chat`, "o":
`chat_opt_in`), and the part's length. An event keeps the encodings its node made
(`Event.body`, the STOMP/JSON bytes, then its `/chat` text), so a receiving node rebuilds
it without touching JSON; a control message is JSON.

Every node holds one of `SLOTS` slots while it is on the bus: its queue, `NAME.slot.K` (NAME
being `[bus] name`), exclusive to its connection, so RabbitMQ itself refuses the slot to any
other node (`resource_locked`) until that connection ends. A node sends its frames to
amq.direct with the routing key `NAME.K` and binds its queue to every other slot's key: a
frame reaches every node but its sender (see `chatd.cluster.bus`).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from chatd.model import Event
from chatd.stomp import Frame

HEADER = "chatd"
_PART_FIELDS = 7

CONTROL = "control"

# A frame is sent once its parts reach either bound (or the batch window ends): RabbitMQ
# handles a frame as one message, and a node's queue is bounded in bytes.
MAX_FRAME_PARTS = 256
MAX_FRAME_BYTES = 256 * 1024
# The most parts a node reads in one frame, with room for a newer node's larger batches:
# a frame is up to 64 MiB (chatd.cluster.link), millions of empty parts, which read one by
# one would hold the event loop for seconds and take hundreds of megabytes.
MAX_ARRIVAL_PARTS = 16 * MAX_FRAME_PARTS


class BadFrame(ValueError):
    """A frame on the bus that no chatd node sent (or a newer one's): dropped, logged."""


# The most nodes a cluster has on the bus at once: each node's queue is bound to every
# other slot's key, one subscription each.
SLOTS = 32
# RabbitMQ's ERROR for a slot's queue held by another node's connection.
SLOT_TAKEN = "resource_locked"


def destination(cluster: str, slot: int) -> str:
    """Where the node in `slot` sends its frames."""
    return f"/exchange/amq.direct/{cluster}.{slot}"


def subscriptions(cluster: str, slot: int | None = None) -> list[str]:
    """What the node in `slot` hears: every other slot's frames (every slot's without)."""
    return [destination(cluster, k) for k in range(SLOTS) if k != slot]


def queue(cluster: str, slot: int) -> str:
    """The queue of the node in `slot`: holding it (exclusively) is holding the slot."""
    return f"{cluster}.slot.{slot}"


def _opt(value: int | None) -> str:
    return "-" if value is None else str(value)


@dataclass(frozen=True, slots=True)
class Part:
    """One publication, encoded: its description and its body."""

    meta: str
    body: bytes
    control: bool = False

    @property
    def size(self) -> int:
        return len(self.meta) + len(self.body) + 1


def event_part(topic: str, event: Event) -> Part:
    body = event.body
    text = event.chat if event.chat is not None else event.chat_opt_in
    split = kind = "-"
    if text is not None:
        split = str(len(body))
        kind = "c" if event.chat is not None else "o"
        body = body + text.encode()
    prev = event.prev_id if event.message_id is not None else None
    meta = f"{topic} {event.kind} {_opt(event.message_id)} {_opt(prev)} {split} {kind} {len(body)}"
    return Part(meta, body)


def control_part(message: dict[str, Any]) -> Part:
    body = orjson.dumps(message)
    return Part(f"{CONTROL} control - - - - {len(body)}", body, True)


def batch_frame(
    cluster: str, node: str, parts: Sequence[Part], origin: str = "", key: bytes = b"",
    number: int = 0, sent_at: int = 0, slot: int = 0,
) -> Frame:  # fmt: skip
    """The frame carrying `parts`, from the node in `slot`."""
    body = b"".join(["|".join(p.meta for p in parts).encode(), b"\n", *(p.body for p in parts)])
    return signed_frame(cluster, node, body, origin, key, number, sent_at, slot)


def signed_frame(
    cluster: str, node: str, body: bytes, origin: str, key: bytes, number: int, sent_at: int,
    slot: int = 0,
) -> Frame:  # fmt: skip
    """A frame of `body` from the node in `slot`: its header says the cluster's mark, the
    node, the frame's number in the node's run, when it was sent (ms since the epoch, the
    node's clock), and its signature with the cluster's `key`."""
    signature = _signature(key, node, number, sent_at, body)
    sent = f"{origin or '-'} {node} {number} {sent_at} {signature}"
    return Frame("SEND", (("destination", destination(cluster, slot)), (HEADER, sent)), body)


@dataclass(frozen=True, slots=True)
class Arrival:
    """A part of a frame from the bus, its description read, its body not yet decoded."""

    node: str
    topic: str
    kind: str
    message_id: int | None
    prev_id: int | None
    split: int | None
    text: str
    body: bytes


@dataclass(frozen=True, slots=True)
class Sender:
    """Who says they sent a frame (its header), read before anything else of it."""

    origin: str  # the cluster's mark
    node: str
    number: int  # the frame's, in the node's run: only ever grows
    sent_at: int  # ms since the epoch, by the sending node's clock
    signature: bytes  # 32 hex digits


def sender(frame: Frame) -> Sender:
    fields = (frame.get(HEADER) or "").split(" ")
    if len(fields) != 5 or not fields[1]:
        raise BadFrame("not from a chatd node (or from another version)")
    origin, node, number, sent_at, signature = fields
    seq, at = _number(number, "frame number"), _number(sent_at, "time sent")
    if seq is None or at is None:
        raise BadFrame("no frame number or time sent")
    # Anything but what a node writes is refused here, before it is compared (a string of
    # other characters would make the comparison raise).
    if not (len(signature) == 32 and signature.isascii() and _HEX.issuperset(signature)):
        raise BadFrame("signature: not 32 hex digits")
    return Sender("" if origin == "-" else origin, node, seq, at, signature.encode())


def authentic(frame: Frame, sent: Sender, key: bytes) -> bool:
    """Whether the frame was signed with `key` as it is: body, node, number and time."""
    expected = _signature(key, sent.node, sent.number, sent.sent_at, frame.body)
    return hmac.compare_digest(expected.encode(), sent.signature)


_HEX = frozenset("0123456789abcdef")


def _signature(key: bytes, node: str, number: int, sent_at: int, body: bytes) -> str:
    # HMAC-SHA256, its first 128 bits in hex: a few microseconds for a frame of a few KB.
    mac = hmac.new(key, f"{node} {number} {sent_at}\n".encode(), hashlib.sha256)
    mac.update(body)
    return mac.hexdigest()[:32]


def _number(value: str, name: str) -> int | None:
    if value == "-":
        return None
    if not (value.isascii() and value.isdigit() and len(value) <= 19):
        raise BadFrame(f"{name}: not a number")
    return int(value)


def arrivals(frame: Frame, node: str) -> list[Arrival]:
    """The parts of a frame from `node`, in the order it published them."""
    body = frame.body
    end = body.find(b"\n")
    if end < 0:
        raise BadFrame("no part descriptions")
    if body.count(b"|", 0, end) >= MAX_ARRIVAL_PARTS:
        raise BadFrame("too many parts")
    try:
        metas = body[:end].decode("ascii").split("|")
    except UnicodeDecodeError:
        raise BadFrame("part descriptions: not ASCII") from None
    got = []
    at = end + 1
    for meta in metas:
        fields = meta.split(" ")
        if len(fields) != _PART_FIELDS:
            raise BadFrame("a part description of the wrong shape")
        topic, kind, message_id, prev_id, split, text, length = fields
        size = _number(length, "length")
        if size is None or at + size > len(body):
            raise BadFrame("a part past the body's end")
        msg_id, prev = _number(message_id, "message id"), _number(prev_id, "previous id")
        if msg_id is not None and prev is not None and prev >= msg_id:
            # The store commits ids in order: taken as is, the sequencer would deliver the
            # message after its "previous" one and move its newest id back.
            raise BadFrame("previous id: not before the message's")
        got.append(
            Arrival(
                node,
                topic,
                kind,
                msg_id,
                prev,
                _number(split, "split"),
                text,
                body[at : at + size],
            )
        )
        at += size
    if at != len(body):
        raise BadFrame("bytes after the last part")
    return got


def event_of(got: Arrival) -> Event:
    """The Event an arrival carries (its encodings as its node made them)."""
    body = got.body
    chat = opt_in = None
    if got.split is not None:
        if got.split > len(body):
            raise BadFrame("split: past the part")
        try:
            text = body[got.split :].decode()
        except UnicodeDecodeError:
            raise BadFrame("the /chat text is not UTF-8") from None
        body = body[: got.split]
        if got.text == "o":
            opt_in = text
        else:
            chat = text
    return Event(got.kind, body, chat, got.message_id, opt_in, got.prev_id)


def control_of(got: Arrival) -> dict[str, Any]:
    try:
        message = orjson.loads(got.body)
    except orjson.JSONDecodeError:
        raise BadFrame("control: not JSON") from None
    if not isinstance(message, dict) or not isinstance(message.get("op"), str):
        raise BadFrame("control: no op")
    return message
