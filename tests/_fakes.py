"""Small stand-ins for the hub's Session and Subscription protocols: they record what
the hub and the service give them, and nothing else."""

from __future__ import annotations

from typing import Any

import orjson

from chatd.hub import ChatSession, Subscription
from chatd.model import Event


class FakeSession:
    """A connection of `protocol` ("chat" gets room messages straight from the hub;
    any other protocol only what its subscriptions are offered)."""

    def __init__(self, user_id: int, protocol: str = "chat", name: str = "") -> None:
        self.protocol = protocol
        self.user_id = user_id
        self.name = name or f"{protocol}:{user_id}"
        self.chat: list[Event] = []
        self.closed: list[tuple[int, str]] = []
        self.left: list[int] = []

    def offer_chat(self, event: Event) -> None:
        self.chat.append(event)

    def close(self, code: int, reason: str) -> None:
        self.closed.append((code, reason))

    def room_left(self, room_id: int) -> None:
        self.left.append(room_id)

    def __repr__(self) -> str:
        return f"<FakeSession {self.name}>"


class FakeSubscription:
    def __init__(self, session: FakeSession, topic: str = "") -> None:
        self.session = session
        self.topic = topic
        self.got: list[Event] = []

    def offer(self, event: Event) -> None:
        self.got.append(event)

    def __repr__(self) -> str:
        return f"<FakeSubscription {self.session.name} {self.topic}>"


def body(event: Event) -> dict[str, Any]:
    obj = orjson.loads(event.body)
    assert isinstance(obj, dict)
    return obj


# The fakes are what the hub takes: checked here once, for mypy and for a reader.
_session: ChatSession = FakeSession(1)
_subscription: Subscription = FakeSubscription(FakeSession(1, "stomp"))
