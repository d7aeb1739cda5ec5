"""The seam between this node and the others, two-way as in centrifuge: the service
publishes through a `Broker`, and what arrives (from this node or, in a cluster, from
the bus) is delivered through the `Hub`. Beside publications travel control messages
(rooms, memberships, sessions and revocations changed on some node, which every other
node applies to what it holds in memory), and presence has its own interface.

`MemoryBroker` is the default, one process: publishing is local delivery, control
messages have nobody to reach, and a user is online while they have a session here.
The cluster's broker is `chatd.cluster.bus.RabbitBroker`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from chatd.hub import Hub
from chatd.model import Event

# A control message: a JSON object with an "op"; see ChatService.apply_control.
Control = dict[str, Any]


class Presence(Protocol):
    # Set by the service: announces a user's coming online (True) or going offline.
    on_change: Callable[[int, bool], None]

    def local_up(self, user_id: int) -> None:
        """The user's first session on this node opened."""

    def local_down(self, user_id: int) -> None:
        """The user's last session on this node closed."""


class Broker(Protocol):
    # Read-only, so each broker may name its own kind of Presence.
    @property
    def presence(self) -> Presence: ...

    # Set by the service: applies a control message another node published; what it
    # returns is the answer to one sent with `ask`.
    on_control: Callable[[Control], Any]

    def publish_room(self, room_id: int, event: Event) -> None: ...
    def publish_user(self, user_id: int, event: Event) -> None: ...

    def publish_control(self, message: Control) -> None:
        """To every other node (the publishing node has applied it already)."""

    async def ask(self, message: Control) -> list[Any]:
        """`publish_control`, then the other nodes' answers: those of every node known
        alive, or what came within a short wait (a node may have died unseen)."""

    def unavailable(self) -> str | None:
        """None while this node hears the others, else why not (for /readyz)."""


class LocalPresence:
    """One node: a user is online while they have a session here."""

    def __init__(self) -> None:
        self.on_change: Callable[[int, bool], None] = lambda user_id, online: None

    def local_up(self, user_id: int) -> None:
        self.on_change(user_id, True)

    def local_down(self, user_id: int) -> None:
        self.on_change(user_id, False)


class MemoryBroker:
    def __init__(self, hub: Hub) -> None:
        self._hub = hub
        self.presence = LocalPresence()
        self.on_control: Callable[[Control], Any] = lambda message: None

    def publish_room(self, room_id: int, event: Event) -> None:
        self._hub.deliver_room(room_id, event)

    def publish_user(self, user_id: int, event: Event) -> None:
        self._hub.deliver_user(user_id, event)

    def publish_control(self, message: Control) -> None:
        pass  # no other node

    async def ask(self, message: Control) -> list[Any]:
        return []

    def unavailable(self) -> str | None:
        return None
