"""The seam where a multi-node backend would plug in: publishing goes through a Broker,
local delivery through the Hub. Today the only broker is in memory."""

from __future__ import annotations

from typing import Protocol

from chatd.hub import Hub
from chatd.model import Event


class Broker(Protocol):
    def publish_room(self, room_id: int, event: Event) -> None: ...
    def publish_user(self, user_id: int, event: Event) -> None: ...


class MemoryBroker:
    def __init__(self, hub: Hub) -> None:
        self._hub = hub

    def publish_room(self, room_id: int, event: Event) -> None:
        self._hub.deliver_room(room_id, event)

    def publish_user(self, user_id: int, event: Event) -> None:
        self._hub.deliver_user(user_id, event)
