"""What travels between nodes on the bus, as STOMP frames to RabbitMQ's amq.topic.

An event keeps the encodings its node made (`Event.body`, the STOMP/JSON bytes, and its
`/chat` text), so a receiving node rebuilds it without touching JSON: the frame's body is
the two back to back, and a header says where the first ends. One header carries what a
node reads before deciding to decode anything (the topic, the kind, a chat message's id
and the id committed before it). A control message (rooms, sessions, presence) is JSON.

Routing keys are `NAME.room.N`, `NAME.user.N` and `NAME.control`, NAME being
`[bus] name`; each node subscribes to `NAME.#` (see `chatd.cluster.bus`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from chatd.model import Event
from chatd.stomp import Frame

# Everything a node reads before deciding to decode a frame, in one header: RabbitMQ turns
# each STOMP header into an AMQP table entry and back for every queue, so one header
# instead of eight is CPU it spends per message. Its fields, space-separated, "-" when
# absent: the cluster's own mark (kept in its database: frames of another cluster that
# shares the vhost and the [bus] name are told apart), the sending node, the topic, the
# event's kind, a chat message's id and the id committed before it, where the body's
# `/chat` text starts, and what that text is ("c": `Event.chat`, "o": `chat_opt_in`).
HEADER = "chatd"
_FIELDS = 8

CONTROL = "control"


class BadFrame(ValueError):
    """A frame on the bus that no chatd node sent (or a newer one's): dropped, logged."""


def destination(cluster: str, topic: str) -> str:
    return f"/topic/{cluster}.{topic}"


def subscription(cluster: str) -> str:
    return f"/topic/{cluster}.#"


def _opt(value: int | None) -> str:
    return "-" if value is None else str(value)


def event_frame(cluster: str, node: str, topic: str, event: Event, origin: str = "") -> Frame:
    body = event.body
    text = event.chat if event.chat is not None else event.chat_opt_in
    split = kind = "-"
    if text is not None:
        split = str(len(body))
        kind = "c" if event.chat is not None else "o"
        body = body + text.encode()
    prev = event.prev_id if event.message_id is not None else None
    meta = " ".join(
        (origin or "-", node, topic, event.kind, _opt(event.message_id), _opt(prev), split, kind)
    )
    return Frame("SEND", (("destination", destination(cluster, topic)), (HEADER, meta)), body)


def control_frame(cluster: str, node: str, message: dict[str, Any], origin: str = "") -> Frame:
    meta = " ".join((origin or "-", node, CONTROL, "control", "-", "-", "-", "-"))
    headers = (("destination", destination(cluster, CONTROL)), (HEADER, meta))
    return Frame("SEND", headers, orjson.dumps(message))


@dataclass(frozen=True, slots=True)
class Arrival:
    """A frame from the bus, its header read, its body not yet decoded."""

    node: str
    origin: str
    topic: str
    kind: str
    message_id: int | None
    prev_id: int | None
    split: int | None
    text: str
    frame: Frame


def _number(value: str, name: str) -> int | None:
    if value == "-":
        return None
    if not (value.isascii() and value.isdigit() and len(value) <= 19):
        raise BadFrame(f"{name}: not a number")
    return int(value)


def arrival(frame: Frame) -> Arrival:
    meta = frame.get(HEADER)
    fields = meta.split(" ") if meta else []
    if len(fields) != _FIELDS:
        raise BadFrame("not from a chatd node (or from another version)")
    origin, node, topic, kind, message_id, prev_id, split, text = fields
    return Arrival(
        node,
        "" if origin == "-" else origin,
        topic,
        kind,
        _number(message_id, "message id"),
        _number(prev_id, "previous id"),
        _number(split, "split"),
        text,
        frame,
    )


def event_of(got: Arrival) -> Event:
    """The Event an arrival carries (its encodings as its node made them)."""
    body = got.frame.body
    chat = opt_in = None
    if got.split is not None:
        if got.split > len(body):
            raise BadFrame("split: past the body")
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
        message = orjson.loads(got.frame.body)
    except orjson.JSONDecodeError:
        raise BadFrame("control: not JSON") from None
    if not isinstance(message, dict) or not isinstance(message.get("op"), str):
        raise BadFrame("control: no op")
    return message
