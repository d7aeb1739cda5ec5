"""What travels between nodes on the bus, as STOMP frames to RabbitMQ's amq.topic.

An event keeps the encodings its node made (`Event.body`, the STOMP/JSON bytes, and its
`/chat` text), so a receiving node rebuilds it without touching JSON: the frame's body is
the two back to back, and a header says where the first ends. Headers carry what a node
reads before deciding to decode anything (the topic, the kind, a chat message's id and
the id committed before it). A control message (rooms, sessions, presence) is JSON.

Routing keys are `NAME.room.N`, `NAME.user.N` and `NAME.control`, NAME being
`[bus] name`; each node subscribes to `NAME.#` (see `chatd.cluster.bus`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from chatd.model import Event
from chatd.stomp import Frame

NODE = "chatd-node"
# The cluster's own mark, kept in its database: frames of another cluster that shares the
# vhost and the [bus] name (a copied config, both left at "chatd") are told apart.
ORIGIN = "chatd-cluster"
TOPIC = "chatd-topic"
KIND = "chatd-kind"
MESSAGE_ID = "chatd-id"
PREV_ID = "chatd-prev"
SPLIT = "chatd-split"
TEXT = "chatd-text"  # "c": the rest of the body is `Event.chat`; "o": `chat_opt_in`

CONTROL = "control"


class BadFrame(ValueError):
    """A frame on the bus that no chatd node sent (or a newer one's): dropped, logged."""


def destination(cluster: str, topic: str) -> str:
    return f"/topic/{cluster}.{topic}"


def subscription(cluster: str) -> str:
    return f"/topic/{cluster}.#"


def event_frame(cluster: str, node: str, topic: str, event: Event, origin: str = "") -> Frame:
    headers = [
        ("destination", destination(cluster, topic)),
        (NODE, node),
        (ORIGIN, origin),
        (TOPIC, topic),
        (KIND, event.kind),
    ]
    if event.message_id is not None:
        headers.append((MESSAGE_ID, str(event.message_id)))
        if event.prev_id is not None:
            headers.append((PREV_ID, str(event.prev_id)))
    body = event.body
    text = event.chat if event.chat is not None else event.chat_opt_in
    if text is not None:
        headers.append((SPLIT, str(len(body))))
        headers.append((TEXT, "c" if event.chat is not None else "o"))
        body = body + text.encode()
    return Frame("SEND", tuple(headers), body)


def control_frame(cluster: str, node: str, message: dict[str, Any], origin: str = "") -> Frame:
    headers = (
        ("destination", destination(cluster, CONTROL)),
        (NODE, node),
        (ORIGIN, origin),
        (TOPIC, CONTROL),
        ("content-type", "application/json"),
    )
    return Frame("SEND", headers, orjson.dumps(message))


@dataclass(frozen=True, slots=True)
class Arrival:
    """A frame from the bus, its headers read, its body not yet decoded."""

    node: str
    origin: str
    topic: str
    kind: str
    message_id: int | None
    prev_id: int | None
    frame: Frame


def _number(frame: Frame, name: str) -> int | None:
    value = frame.get(name)
    if value is None:
        return None
    if not (value.isascii() and value.isdigit() and len(value) <= 19):
        raise BadFrame(f"{name}: not a number")
    return int(value)


def arrival(frame: Frame) -> Arrival:
    node = frame.get(NODE)
    topic = frame.get(TOPIC)
    if not node or not topic:
        raise BadFrame("not from a chatd node")
    return Arrival(
        node,
        frame.get(ORIGIN) or "",
        topic,
        frame.get(KIND) or "",
        _number(frame, MESSAGE_ID),
        _number(frame, PREV_ID),
        frame,
    )


def event_of(got: Arrival) -> Event:
    """The Event an arrival carries (its encodings as its node made them)."""
    body = got.frame.body
    split = _number(got.frame, SPLIT)
    chat = opt_in = None
    if split is not None:
        if split > len(body):
            raise BadFrame(f"{SPLIT}: past the body")
        try:
            text = body[split:].decode()
        except UnicodeDecodeError:
            raise BadFrame("the /chat text is not UTF-8") from None
        body = body[:split]
        if got.frame.get(TEXT) == "o":
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
