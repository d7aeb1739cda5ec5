"""The contract every Broker keeps, run against each implementation.

A broker carries publications to the sessions of a node (`chatd.hub.Hub`); the hub
decides who, here, hears what. Each test builds nodes through a `Backend` and checks
what the fake sessions and subscriptions were offered. The backends are the in-memory
one and the cluster's (RabbitMQ); each is a `Backend` class below and one entry in
BACKENDS:

- `node(rooms)` makes a node: its own Rooms, Hub, and a Broker connected to the backend.
- `settle()` returns once everything published before it has reached every node, so
  "nobody else got it" can be checked without waiting for a timeout.
- `aclose()` releases whatever the backend holds (connections, queues).

The RabbitMQ backend (chatd.cluster.bus) runs the same tests with the listeners on
another node than the publisher, over a private RabbitMQ.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

import pytest
import trio

from chatd.broker import Broker, MemoryBroker
from chatd.cluster.bus import RabbitBroker
from chatd.config import BusConfig
from chatd.hub import Hub
from chatd.model import Event
from chatd.rooms import Room, Rooms

from ._fakes import FakeSession, FakeSubscription
from .rabbitmq_instance import rabbit_instance, rabbit_url  # noqa: F401 (fixtures)

# --- backends ---------------------------------------------------------------------------


@dataclass
class Node:
    rooms: Rooms
    hub: Hub
    broker: Broker


class Backend(Protocol):
    async def node(self, rooms: Rooms) -> Node: ...
    async def settle(self) -> None: ...
    async def aclose(self) -> None: ...


class MemoryBackend:
    """One process: publishing is local delivery, done before publish returns."""

    async def node(self, rooms: Rooms) -> Node:
        hub = Hub(rooms)
        return Node(rooms, hub, MemoryBroker(hub))

    async def settle(self) -> None:
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        pass


class _NoStore:
    """What a RabbitBroker reads from the store, for events that carry no message chain
    (no prev_id): nothing."""

    async def last_message_id(self) -> int:
        return 0

    async def messages_since(self, room_ids: object, since: int, limit: int) -> list[object]:
        return []


class RabbitBackend:
    """RabbitMQ (a fresh vhost on a private node): each `node` is two chatd nodes, one
    that publishes and one whose hub the test listens on, so every publication crosses
    the bus. `settle` sends a control message after everything else and waits for it."""

    def __init__(self, nursery: trio.Nursery, url: str) -> None:
        self._nursery = nursery
        self._url = url
        self._pairs: list[tuple[RabbitBroker, RabbitBroker]] = []
        self._settled: dict[str, trio.Event] = {}

    def _broker(self, name: str, hub: Hub) -> RabbitBroker:
        cfg = BusConfig(backend="rabbitmq", url=self._url, node_name=name)
        broker = RabbitBroker(cfg, hub, _NoStore())  # type: ignore[arg-type]
        broker.on_control = self._control
        return broker

    def _control(self, message: dict[str, object]) -> None:
        if message.get("op") == "settle":
            self._settled[str(message["token"])].set()

    async def node(self, rooms: Rooms) -> Node:
        n = len(self._pairs)
        publisher = self._broker(f"pub{n}", Hub(Rooms()))
        hub = Hub(rooms)
        receiver = self._broker(f"sub{n}", hub)
        for broker in (publisher, receiver):
            await self._nursery.start(broker.run)
            with trio.fail_after(30):
                await broker.wait_joined()
        self._pairs.append((publisher, receiver))
        return Node(rooms, hub, publisher)

    async def settle(self) -> None:
        for publisher, _ in self._pairs:
            token = f"t{len(self._settled)}"
            done = self._settled[token] = trio.Event()
            publisher.publish_control({"op": "settle", "token": token})
            with trio.fail_after(30):
                await done.wait()

    async def aclose(self) -> None:
        self._nursery.cancel_scope.cancel()


BACKENDS = ["memory", "rabbitmq"]


@pytest.fixture(params=BACKENDS)
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    if request.param == "memory":
        yield MemoryBackend()
        return
    url = request.getfixturevalue("rabbit_url")
    async with trio.open_nursery() as nursery:
        made = RabbitBackend(nursery, url)
        try:
            yield made
        finally:
            await made.aclose()


# --- helpers ----------------------------------------------------------------------------

Seen = tuple[str, bytes, str | None, int | None]


def seen(events: list[Event]) -> list[Seen]:
    """What a recipient got, compared by content: a broker that crosses processes hands
    over equal events, not the same objects."""
    return [(e.kind, e.body, e.chat, e.message_id) for e in events]


def chat_message(room_id: int, n: int) -> Event:
    return Event("new_message", b'{"room":%d,"n":%d}' % (room_id, n), f"{room_id}/{n}", n)


def presence(user_id: int, n: int) -> Event:
    return Event("user_status_changed", b'{"user":%d,"n":%d}' % (user_id, n))


def rooms_of(*rooms: tuple[int, set[int]]) -> Rooms:
    r = Rooms()
    for room_id, members in rooms:
        r.add_room(Room(room_id, f"room {room_id}", False, set(members)))
    return r


class Listeners:
    """The sessions and subscriptions of one node, by name."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.chat: dict[str, FakeSession] = {}
        self.subs: dict[str, FakeSubscription] = {}

    def chat_session(self, name: str, user_id: int) -> FakeSession:
        session = self.chat[name] = FakeSession(user_id, "chat", name)
        self.node.hub.register(session)
        return session

    def subscription(self, name: str, topic: str, user_id: int) -> FakeSubscription:
        session = FakeSession(user_id, "stomp", name)
        self.node.hub.register(session)
        sub = self.subs[name] = FakeSubscription(session, topic)
        self.node.hub.subscribe(topic, sub)
        return sub

    def got(self) -> dict[str, list[Seen]]:
        """Everything each listener got; those that got nothing are left out."""
        out = {name: seen(s.chat) for name, s in self.chat.items()}
        out |= {name: seen(s.got) for name, s in self.subs.items()}
        return {name: events for name, events in out.items() if events}


async def crowd(backend: Backend) -> tuple[Node, Listeners]:
    """Room 1 (users 1 and 2), room 2 (users 2 and 3), and listeners of every kind that
    must not hear what is not theirs."""
    node = await backend.node(rooms_of((1, {1, 2}), (2, {2, 3})))
    ls = Listeners(node)
    ls.chat_session("u1 phone", 1)
    ls.chat_session("u1 laptop", 1)
    ls.chat_session("u2", 2)
    ls.chat_session("u3", 3)
    ls.chat_session("u4 in no room", 4)
    ls.subscription("room1 by u1", "room.1", 1)
    ls.subscription("room1 by u2", "room.1", 2)
    ls.subscription("room2 by u3", "room.2", 3)
    ls.subscription("user1 queue a", "user.1", 1)
    ls.subscription("user1 queue b", "user.1", 1)
    ls.subscription("user2 queue", "user.2", 2)
    return node, ls


# --- the contract -----------------------------------------------------------------------


async def test_a_room_publication_reaches_exactly_that_rooms_listeners_in_order(
    backend: Backend,
) -> None:
    node, ls = await crowd(backend)
    events = [chat_message(1, n) for n in range(20)]
    for e in events:
        node.broker.publish_room(1, e)
    await backend.settle()
    expected = seen(events)
    assert ls.got() == {
        "u1 phone": expected,
        "u1 laptop": expected,
        "u2": expected,
        "room1 by u1": expected,
        "room1 by u2": expected,
    }


async def test_a_room_event_without_a_chat_form_reaches_room_subscriptions_only(
    backend: Backend,
) -> None:
    """/chat carries chat messages; presence, typing and receipts go to subscribers."""
    node, ls = await crowd(backend)
    events = [presence(1, n) for n in range(3)]
    for e in events:
        node.broker.publish_room(1, e)
    await backend.settle()
    assert ls.got() == {"room1 by u1": seen(events), "room1 by u2": seen(events)}


async def test_a_user_publication_reaches_exactly_that_users_sessions(backend: Backend) -> None:
    node, ls = await crowd(backend)
    events = [presence(1, n) for n in range(5)]
    for e in events:
        node.broker.publish_user(1, e)
    await backend.settle()
    assert ls.got() == {"user1 queue a": seen(events), "user1 queue b": seen(events)}


async def test_nothing_is_delivered_for_a_room_or_user_nobody_here_listens_to(
    backend: Backend,
) -> None:
    node, ls = await crowd(backend)
    node.rooms.add_room(Room(3, "empty", True, set()))
    node.broker.publish_room(3, chat_message(3, 1))
    node.broker.publish_room(404, chat_message(404, 2))  # a room this node does not know
    node.broker.publish_user(5, presence(5, 3))
    await backend.settle()
    assert ls.got() == {}


async def test_a_removed_member_stops_receiving_and_an_added_one_starts(
    backend: Backend,
) -> None:
    node, ls = await crowd(backend)
    before, after = chat_message(1, 1), chat_message(1, 2)
    node.broker.publish_room(1, before)
    await backend.settle()
    node.rooms.remove_member(1, 2)
    node.rooms.add_member(1, 3)
    node.broker.publish_room(1, after)
    await backend.settle()
    got = ls.got()
    assert got["u2"] == seen([before])
    assert got["u3"] == seen([after])
    assert got["u1 phone"] == got["u1 laptop"] == seen([before, after])


async def test_a_session_that_connects_later_hears_only_what_comes_after(
    backend: Backend,
) -> None:
    node, ls = await crowd(backend)
    early, late = chat_message(2, 1), chat_message(2, 2)
    node.broker.publish_room(2, early)
    await backend.settle()
    ls.chat_session("u3 second device", 3)
    ls.subscription("room2 late", "room.2", 2)
    node.broker.publish_room(2, late)
    await backend.settle()
    got = ls.got()
    assert got["u3 second device"] == got["room2 late"] == seen([late])
    assert got["u3"] == got["u2"] == got["room2 by u3"] == seen([early, late])


async def test_a_closed_session_or_a_cancelled_subscription_hears_nothing_more(
    backend: Backend,
) -> None:
    node, ls = await crowd(backend)
    first, second, third = chat_message(1, 1), chat_message(1, 2), presence(1, 3)
    node.broker.publish_room(1, first)
    node.broker.publish_user(1, third)
    await backend.settle()
    node.hub.unregister(ls.chat["u1 phone"])
    node.hub.unsubscribe("room.1", ls.subs["room1 by u2"])
    node.hub.unsubscribe("user.1", ls.subs["user1 queue a"])
    node.broker.publish_room(1, second)
    node.broker.publish_user(1, third)
    await backend.settle()
    got = ls.got()
    assert got["u1 phone"] == got["room1 by u2"] == seen([first])
    assert got["user1 queue a"] == seen([third])
    assert got["u1 laptop"] == got["u2"] == got["room1 by u1"] == seen([first, second])
    assert got["user1 queue b"] == seen([third, third])


async def test_interleaved_rooms_keep_each_rooms_order(backend: Backend) -> None:
    rooms = 12
    # User r is in room r; user 100 is in every room.
    node = await backend.node(rooms_of(*((r, {r, 100}) for r in range(rooms))))
    ls = Listeners(node)
    for r in range(rooms):
        ls.chat_session(f"member {r}", r)
        ls.subscription(f"sub {r}", f"room.{r}", r)
    everywhere = ls.chat_session("in every room", 100)
    rng = random.Random(11)
    published: dict[int, list[Event]] = {r: [] for r in range(rooms)}
    order: list[Event] = []
    for n in range(600):
        r = rng.randrange(rooms)
        event = chat_message(r, n) if rng.random() < 0.8 else presence(r, n)
        published[r].append(event)
        order.append(event)
        node.broker.publish_room(r, event)
    await backend.settle()
    for r in range(rooms):
        assert seen(ls.subs[f"sub {r}"].got) == seen(published[r])
        assert seen(ls.chat[f"member {r}"].chat) == seen(
            [e for e in published[r] if e.chat is not None]
        )
    # One listener in every room: each room's events in its order, none missing or extra.
    got = seen(everywhere.chat)
    assert sorted(got) == sorted(seen([e for e in order if e.chat is not None]))
    for r in range(rooms):
        mine = [x for x in got if x[1].startswith(b'{"room":%d,' % r)]
        assert mine == seen([e for e in published[r] if e.chat is not None])
