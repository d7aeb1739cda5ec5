"""chatd.hub: who is connected here, who is subscribed where, and local fan-out. No
network: the sessions and subscriptions are fakes that record what they are offered."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from chatd.hub import Hub
from chatd.model import Event, RoomRow
from chatd.rooms import Room, Rooms

from ._fakes import FakeSession, FakeSubscription


def make_hub(*rooms: tuple[int, set[int]]) -> Hub:
    return Hub(Rooms(RoomRow(rid, f"r{rid}", False, frozenset(m)) for rid, m in rooms))


def message(n: int) -> Event:
    """A chat message event: it has a /chat form."""
    return Event("new_message", b'{"n":%d}' % n, chat=f'{{"n":{n}}}', message_id=n)


def status(n: int) -> Event:
    """An event /chat does not carry (presence, typing, reads)."""
    return Event("user_status_changed", b'{"s":%d}' % n)


def subscribed(hub: Hub, topic: str, user_id: int, protocol: str = "stomp") -> FakeSubscription:
    sub = FakeSubscription(FakeSession(user_id, protocol), topic)
    hub.subscribe(topic, sub)
    return sub


# --- who is connected -----------------------------------------------------------------


def test_register_says_when_a_user_comes_online_and_unregister_when_they_go() -> None:
    hub = make_hub()
    phone, laptop, other = FakeSession(1), FakeSession(1, "stomp"), FakeSession(2)
    assert hub.register(phone) is True
    assert hub.register(laptop) is False
    assert hub.register(other) is True
    assert hub.unregister(phone) is False
    assert hub.unregister(laptop) is True
    assert hub.unregister(other) is True


def test_unregister_of_a_session_not_registered_changes_nothing() -> None:
    hub = make_hub()
    a, stranger = FakeSession(1), FakeSession(1)
    hub.register(a)
    assert hub.unregister(stranger) is False
    assert hub.unregister(FakeSession(7)) is False
    assert hub.sessions_of(1) == [a]
    assert hub.unregister(a) is True
    assert hub.unregister(a) is False
    assert hub.sessions_of(1) == []


def test_sessions_and_counts() -> None:
    hub = make_hub()
    chat1, stomp1, chat2 = FakeSession(1), FakeSession(1, "stomp"), FakeSession(2)
    for s in (chat1, stomp1, chat2):
        hub.register(s)
    assert set(hub.sessions_of(1)) == {chat1, stomp1}
    assert hub.sessions_of(3) == []
    assert set(hub.all_sessions()) == {chat1, stomp1, chat2}
    assert (hub.count(), hub.count("chat"), hub.count("stomp"), hub.count("mqtt")) == (3, 2, 1, 0)
    hub.unregister(stomp1)
    assert (hub.count(), hub.count("chat"), hub.count("stomp")) == (2, 2, 0)


def test_close_all_tells_every_session_once() -> None:
    hub = make_hub()
    sessions = [FakeSession(1), FakeSession(1, "stomp"), FakeSession(2), FakeSession(3, "stomp")]
    for s in sessions:
        hub.register(s)
    hub.close_all(1001, "server shutting down")
    assert [s.closed for s in sessions] == [[(1001, "server shutting down")]] * 4


def test_close_all_copes_with_sessions_that_unregister_while_being_closed() -> None:
    hub = make_hub()

    class Leaving(FakeSession):
        def close(self, code: int, reason: str) -> None:
            super().close(code, reason)
            hub.unregister(self)

    sessions = [Leaving(1), Leaving(1), Leaving(2)]
    for s in sessions:
        hub.register(s)
    hub.close_all(1001, "bye")
    assert all(s.closed == [(1001, "bye")] for s in sessions)
    assert hub.count() == 0


async def test_wait_empty_returns_at_once_when_nobody_is_connected() -> None:
    hub = make_hub()
    with trio.fail_after(1):
        await hub.wait_empty()


async def test_wait_empty_waits_for_the_last_session_to_go() -> None:
    hub = make_hub()
    a, b = FakeSession(1), FakeSession(2)
    hub.register(a)
    hub.register(b)
    emptied = trio.Event()

    async def waiter() -> None:
        await hub.wait_empty()
        emptied.set()

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            hub.unregister(a)
            await trio.testing.wait_all_tasks_blocked()
            assert not emptied.is_set()
            hub.unregister(b)
    assert emptied.is_set()


async def test_wait_empty_waits_again_once_someone_connects() -> None:
    hub = make_hub()
    a = FakeSession(1)
    hub.register(a)
    hub.unregister(a)
    b = FakeSession(2)
    hub.register(b)
    emptied = trio.Event()

    async def waiter() -> None:
        await hub.wait_empty()
        emptied.set()

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            assert not emptied.is_set()
            hub.unregister(b)
    assert emptied.is_set()


# --- fan-out to rooms -----------------------------------------------------------------


def test_room_message_reaches_every_chat_device_of_every_member_and_nobody_else() -> None:
    hub = make_hub((1, {1, 2}), (2, {3}))
    phone, laptop, peer = FakeSession(1), FakeSession(1), FakeSession(2)
    outsider, stomp_member = FakeSession(3), FakeSession(2, "stomp")
    for s in (phone, laptop, peer, outsider, stomp_member):
        hub.register(s)
    event = message(1)
    hub.deliver_room(1, event)
    assert phone.chat == laptop.chat == peer.chat == [event]
    assert outsider.chat == []
    # A STOMP session hears a room only through a subscription to it.
    assert stomp_member.chat == []
    assert hub.deliveries == 3


def test_room_topic_subscribers_get_every_room_event_and_other_topics_do_not() -> None:
    hub = make_hub((1, {1, 2}), (2, {1}))
    room1 = subscribed(hub, "room.1", 1)
    room1_again = subscribed(hub, "room.1", 2)
    room2 = subscribed(hub, "room.2", 1)
    user1 = subscribed(hub, "user.1", 1)
    chat = FakeSession(1)
    hub.register(chat)
    events = [message(1), status(2), message(3)]
    for e in events:
        hub.deliver_room(1, e)
    assert room1.got == room1_again.got == events
    assert room2.got == user1.got == []
    # /chat carries chat messages only, not presence.
    assert chat.chat == [events[0], events[2]]
    assert hub.deliveries == 3 * 2 + 2


def test_room_events_arrive_in_delivery_order() -> None:
    hub = make_hub((1, {1}))
    chat = FakeSession(1)
    hub.register(chat)
    sub = subscribed(hub, "room.1", 1)
    events = [message(i) for i in range(50)]
    for e in events:
        hub.deliver_room(1, e)
    assert chat.chat == events
    assert sub.got == events


def test_a_room_nobody_listens_to_costs_no_delivery() -> None:
    hub = make_hub((1, {1}), (2, set()))
    hub.deliver_room(2, message(1))
    hub.deliver_room(99, message(2))  # no such room
    hub.deliver_user(5, status(3))
    assert hub.deliveries == 0


def test_membership_changes_reach_live_chat_sessions() -> None:
    rooms = Rooms()
    rooms.add_room(Room(1, "r", False, {1}))
    hub = Hub(rooms)
    newcomer, leaver = FakeSession(2), FakeSession(1)
    hub.register(newcomer)
    hub.register(leaver)
    before = message(1)
    hub.deliver_room(1, before)
    rooms.add_member(1, 2)
    rooms.remove_member(1, 1)
    after = message(2)
    hub.deliver_room(1, after)
    assert newcomer.chat == [after]
    assert leaver.chat == [before]


def test_a_new_room_reaches_its_members_sessions_already_connected() -> None:
    rooms = Rooms()
    hub = Hub(rooms)
    chat = FakeSession(4)
    hub.register(chat)
    rooms.add_room(Room(9, "new", True, {4}))
    event = message(1)
    hub.deliver_room(9, event)
    assert chat.chat == [event]


def test_unregistered_and_unsubscribed_get_nothing_more() -> None:
    hub = make_hub((1, {1}))
    chat = FakeSession(1)
    hub.register(chat)
    sub = subscribed(hub, "room.1", 1)
    first = message(1)
    hub.deliver_room(1, first)
    hub.unregister(chat)
    hub.unsubscribe("room.1", sub)
    hub.unsubscribe("room.1", sub)  # twice, and a topic nobody has: harmless
    hub.unsubscribe("room.404", sub)
    hub.deliver_room(1, message(2))
    assert chat.chat == sub.got == [first]


def test_a_session_that_leaves_while_being_offered_does_not_disturb_the_rest() -> None:
    """A slow consumer is closed, and so unregistered, from inside offer_chat."""
    hub = make_hub((1, {1, 2}))

    class Quitter(FakeSession):
        def offer_chat(self, event: Event) -> None:
            super().offer_chat(event)
            hub.unregister(self)

    class QuittingSub(FakeSubscription):
        def offer(self, event: Event) -> None:
            super().offer(event)
            hub.unsubscribe("room.1", self)

    quitters = [Quitter(1), Quitter(1)]
    stayer = FakeSession(2)
    for s in (*quitters, stayer):
        hub.register(s)
    quitting_sub = QuittingSub(FakeSession(1, "stomp"), "room.1")
    hub.subscribe("room.1", quitting_sub)
    staying_sub = subscribed(hub, "room.1", 2)
    first, second = message(1), message(2)
    hub.deliver_room(1, first)
    hub.deliver_room(1, second)
    assert [q.chat for q in quitters] == [[first], [first]]
    assert quitting_sub.got == [first]
    assert stayer.chat == staying_sub.got == [first, second]


# --- fan-out to users ------------------------------------------------------------------


def test_user_events_reach_exactly_that_users_queue_subscriptions() -> None:
    hub = make_hub((1, {1, 2}))
    mine = [subscribed(hub, "user.1", 1), subscribed(hub, "user.1", 1)]
    theirs = subscribed(hub, "user.2", 2)
    room = subscribed(hub, "room.1", 1)
    chat = FakeSession(1)
    hub.register(chat)
    event = status(1)
    hub.deliver_user(1, event)
    assert [s.got for s in mine] == [[event], [event]]
    assert theirs.got == room.got == chat.chat == []
    assert hub.deliveries == 2


@pytest.mark.parametrize("topic", ["/topic/news", "/queue/work", "room.1"])
def test_deliver_topic_counts_what_it_offered(topic: str) -> None:
    hub = make_hub()
    subs = [subscribed(hub, topic, 1), subscribed(hub, topic, 2)]
    event = status(1)
    assert hub.deliver_topic(topic, event) == 2
    assert hub.deliver_topic(topic + ".other", event) == 0
    assert [s.got for s in subs] == [[event], [event]]
