"""chatd.service: the chat domain every protocol shares, with a real SQLite store in
tmp_path, the real hub, and fake sessions; no network. Time is a fake clock (the rate
limiter) or trio's MockClock (typing expiry)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from chatd.broker import MemoryBroker
from chatd.config import from_mapping
from chatd.hub import Hub
from chatd.model import ClientError, Event, Outgoing, User
from chatd.ops.metrics import Metrics
from chatd.rooms import Rooms
from chatd.service import ChatService, NotFound, RateLimited, ServiceError
from chatd.store import Store
from chatd.validation import InvalidMessage, chat_message, parse_json_object

from ._fakes import FakeSession, FakeSubscription, body

ALICE, BOB, CAROL = User(1, "alice"), User(2, "bob"), User(3, "carol")


class FakeTime:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


class RecordingBroker:
    """Delivers through the in-memory broker, and remembers each publication with the
    time it was made."""

    def __init__(self, hub: Hub, clock: Callable[[], float]) -> None:
        self._inner = MemoryBroker(hub)
        self._clock = clock
        self.published: list[tuple[str, int, Event]] = []
        self.times: list[float] = []
        self.controls: list[dict[str, Any]] = []
        self.presence = self._inner.presence
        self.on_control: Callable[[dict[str, Any]], None] = lambda message: None
        # Presence is announced by each node to its own sessions (never published):
        # recorded from the hub, in the order it happens among the publications.
        deliver = hub.deliver_room

        def deliver_room(room_id: int, event: Event) -> None:
            if event.kind == "user_status_changed":
                self._record("room", room_id, event)
            deliver(room_id, event)

        hub.deliver_room = deliver_room  # type: ignore[method-assign]

    def publish_control(self, message: dict[str, Any]) -> None:
        self.controls.append(message)

    async def ask(self, message: dict[str, Any]) -> list[Any]:
        self.controls.append(message)
        return []

    def unavailable(self) -> str | None:
        return None

    def publish_room(self, room_id: int, event: Event) -> None:
        self._record("room", room_id, event)
        self._inner.publish_room(room_id, event)

    def publish_user(self, user_id: int, event: Event) -> None:
        self._record("user", user_id, event)
        self._inner.publish_user(user_id, event)

    def _record(self, target: str, target_id: int, event: Event) -> None:
        self.published.append((target, target_id, event))
        self.times.append(self._clock())

    def summary(self) -> list[tuple[str, int, str]]:
        return [(target, tid, e.kind) for target, tid, e in self.published]

    def clear(self) -> None:
        self.published.clear()
        self.times.clear()


@dataclass
class World:
    service: ChatService
    store: Store
    rooms: Rooms
    hub: Hub
    broker: RecordingBroker
    metrics: Metrics
    room: int  # private, alice and bob
    public: int  # public, alice only
    private: int  # private, carol only

    def chat_session(self, user: User) -> FakeSession:
        session = FakeSession(user.id)
        self.service.session_opened(session)
        return session

    def subscribe(self, topic: str, user: User) -> FakeSubscription:
        sub = FakeSubscription(FakeSession(user.id, "stomp"), topic)
        self.hub.subscribe(topic, sub)
        return sub

    async def post(self, user: User, room_id: int, content: str, **kw: Any) -> Any:
        return await self.service.post(user, Outgoing(room_id, content, **kw), "http")

    async def stored(self, room_id: int) -> list[str]:
        return [m.content for m in reversed(await self.store.history(room_id, None, 100))]


@asynccontextmanager
async def world(
    tmp_path: Path, clock: Callable[[], float] | None = None, **chat: Any
) -> AsyncIterator[World]:
    cfg = from_mapping({"chat": chat}, env={})
    store = Store(tmp_path / "service.db")
    try:
        rooms = Rooms(store.load_rooms_sync())
        hub = Hub(rooms)
        metrics = Metrics()
        when = clock or trio.current_time
        broker = RecordingBroker(hub, when)
        service = ChatService(cfg, store, rooms, hub, broker, metrics, clock=when)
        room = (await service.create_room("team", False, [ALICE.id, BOB.id])).id
        public = (await service.create_room("lobby", True, [ALICE.id])).id
        private = (await service.create_room("secret", False, [CAROL.id])).id
        broker.clear()
        yield World(service, store, rooms, hub, broker, metrics, room, public, private)
    finally:
        await store.aclose()


@pytest.fixture
async def w(tmp_path: Path) -> AsyncIterator[World]:
    async with world(tmp_path, FakeTime()) as it:
        yield it


def refused(exc_info: pytest.ExceptionInfo[ServiceError]) -> tuple[type, str, int]:
    e = exc_info.value
    return type(e), e.code, e.status


# --- posting ------------------------------------------------------------------------------


async def test_post_stores_then_publishes_to_the_room(w: World) -> None:
    bob = w.chat_session(BOB)
    carol = w.chat_session(CAROL)
    w.broker.clear()  # the presence of the sessions above
    msg, created = await w.post(ALICE, w.room, "hello")
    assert created and msg.content == "hello" and msg.user_id == ALICE.id
    assert msg.room_id == w.room and msg.username == "alice"
    assert await w.stored(w.room) == ["hello"]
    assert w.broker.summary() == [("room", w.room, "new_message")]
    (event,) = bob.chat
    assert event.message_id == msg.id
    assert body(event)["message"]["content"] == "hello"
    assert carol.chat == []
    assert (w.metrics.messages_received, w.metrics.messages_stored) == (1, 1)


async def test_a_retried_client_message_id_returns_the_stored_message_and_publishes_nothing(
    w: World,
) -> None:
    first, created = await w.post(ALICE, w.room, "once", client_message_id="c-1")
    again, created_again = await w.post(ALICE, w.room, "once", client_message_id="c-1")
    assert created and not created_again
    assert again.id == first.id
    assert await w.stored(w.room) == ["once"]
    assert w.broker.summary() == [("room", w.room, "new_message")]
    assert w.metrics.duplicates_suppressed == 1
    # The same id from someone else is a message of its own.
    _, created_by_bob = await w.post(BOB, w.room, "once", client_message_id="c-1")
    assert created_by_bob


async def test_a_batch_is_stored_and_published_in_order_and_a_retry_is_answered_in_place(
    w: World,
) -> None:
    await w.post(ALICE, w.room, "earlier", client_message_id="dup")
    w.broker.clear()
    retried: list[str] = []
    outs = [
        Outgoing(w.room, "a"),
        Outgoing(w.room, "earlier", client_message_id="dup"),
        Outgoing(w.public, "b"),
    ]
    results = await w.service.store_admitted(ALICE, outs, lambda m: retried.append(m.content))
    assert [r[1] for r in results if not isinstance(r, BaseException)] == [True, False, True]
    assert retried == ["earlier"]
    assert [(t, i) for t, i, _ in w.broker.published] == [("room", w.room), ("room", w.public)]
    assert await w.stored(w.room) == ["earlier", "a"]


@pytest.mark.parametrize(
    ("who", "where", "expected"),
    [
        # A room one is not in answers as one that does not exist (ids are not probed).
        (CAROL, "room", (NotFound, "unknown_room", 404)),
        (BOB, "public", (NotFound, "unknown_room", 404)),
        (ALICE, 999, (NotFound, "unknown_room", 404)),
    ],
)
async def test_post_where_one_may_not_is_refused_and_nothing_is_stored(
    w: World, who: User, where: str | int, expected: tuple[type, str, int]
) -> None:
    room_id = getattr(w, where) if isinstance(where, str) else where
    with pytest.raises(ServiceError) as exc_info:
        await w.post(who, room_id, "no")
    assert refused(exc_info) == expected
    assert isinstance(exc_info.value, ClientError)
    assert w.broker.published == []
    assert w.metrics.messages_stored == 0
    if isinstance(where, str):
        assert await w.stored(room_id) == []


async def test_validation_then_post_the_way_the_protocols_do(w: World) -> None:
    async def submit(raw: bytes) -> str:
        try:
            out = chat_message(parse_json_object(raw), w.service.cfg.chat.max_content_chars)
            await w.service.post(ALICE, out, "chat")
        except (InvalidMessage, ServiceError) as exc:
            return exc.code
        return "ok"

    assert await submit(b'{"roomId": %d, "content": "fine"}' % w.room) == "ok"
    assert await submit(b'{"roomId": %d, "content": ""}' % w.room) != "ok"
    assert await submit(b'{"roomId": "x", "content": "hi"}') != "ok"
    assert await submit(b"[1, 2]") != "ok"
    assert await submit(b'{"roomId": 999, "content": "hi"}') == "unknown_room"
    assert await submit(b'{"roomId": %d, "content": "hi"}' % w.private) == "unknown_room"
    assert await w.stored(w.room) == ["fine"]


# --- the rate limit -----------------------------------------------------------------------


async def test_rate_limit_refuses_past_the_burst_until_tokens_come_back(tmp_path: Path) -> None:
    clock = FakeTime()
    async with world(tmp_path, clock, rate_per_second=1.0, rate_burst=3) as w:
        for i in range(3):
            await w.post(ALICE, w.room, f"m{i}")
        with pytest.raises(RateLimited) as exc_info:
            await w.post(ALICE, w.room, "too fast")
        assert refused(exc_info) == (RateLimited, "rate_limited", 429)
        assert w.metrics.rate_limited["http"] == 1
        # Bob has a bucket of his own.
        await w.post(BOB, w.room, "bob's")
        clock.now += 1.0
        await w.post(ALICE, w.room, "m3")
        with pytest.raises(RateLimited):
            await w.post(ALICE, w.room, "too fast again")
        assert await w.stored(w.room) == ["m0", "m1", "m2", "bob's", "m3"]
        assert w.metrics.rate_limited["http"] == 2


async def test_a_refused_post_for_membership_costs_no_token(tmp_path: Path) -> None:
    async with world(tmp_path, FakeTime(), rate_per_second=1.0, rate_burst=1) as w:
        for _ in range(5):
            with pytest.raises(NotFound):
                await w.post(ALICE, w.private, "not mine")
        await w.post(ALICE, w.room, "still has its token")
        assert w.metrics.rate_limited["http"] == 0


async def test_reconfigure_changes_the_live_limit(tmp_path: Path) -> None:
    clock = FakeTime()
    async with world(tmp_path, clock, rate_per_second=1.0, rate_burst=1) as w:
        await w.post(ALICE, w.room, "one")
        with pytest.raises(RateLimited):
            await w.post(ALICE, w.room, "two")
        w.service.reconfigure(from_mapping({"chat": {"rate_burst": 3}}, env={}))
        with pytest.raises(RateLimited):
            await w.post(ALICE, w.room, "a bigger burst is no token yet")
        w.service.reconfigure(
            from_mapping({"chat": {"rate_per_second": 1000.0, "rate_burst": 3}}, env={})
        )
        clock.now += 0.01  # ten tokens at the new rate, three kept
        for i in range(3):
            await w.post(ALICE, w.room, f"refilled {i}")
        with pytest.raises(RateLimited):
            await w.post(ALICE, w.room, "past the new burst")


# --- reads and history --------------------------------------------------------------------


async def test_mark_read_publishes_a_receipt_to_the_room(w: World) -> None:
    msg, _ = await w.post(ALICE, w.room, "read me")
    w.broker.clear()
    read_at = await w.service.mark_read(BOB, w.room, msg.id)
    assert isinstance(read_at, str) and read_at
    ((target, room_id, event),) = w.broker.published
    assert (target, room_id, event.kind) == ("room", w.room, "message_read")
    assert body(event) | {"readAt": None} == {
        "type": "message_read",
        "roomId": w.room,
        "messageId": msg.id,
        "readerId": BOB.id,
        "readAt": None,
    }
    assert body(event)["readAt"] == read_at


async def test_mark_read_refusals(w: World) -> None:
    msg, _ = await w.post(ALICE, w.room, "here")
    elsewhere, _ = await w.post(ALICE, w.public, "there")
    w.broker.clear()
    cases = [
        (BOB, w.room, elsewhere.id, (NotFound, "unknown_message", 404)),
        (BOB, w.room, 10**9, (NotFound, "unknown_message", 404)),
        (CAROL, w.room, msg.id, (NotFound, "unknown_room", 404)),
        (BOB, 999, msg.id, (NotFound, "unknown_room", 404)),
    ]
    for user, room_id, message_id, expected in cases:
        with pytest.raises(ServiceError) as exc_info:
            await w.service.mark_read(user, room_id, message_id)
        assert refused(exc_info) == expected
    assert w.broker.published == []


async def test_history_is_for_members_newest_first(w: World) -> None:
    for i in range(5):
        await w.post(ALICE, w.room, f"m{i}")
    page = await w.service.history(BOB, w.room, None, 3)
    assert [m.content for m in page] == ["m4", "m3", "m2"]
    older = await w.service.history(BOB, w.room, page[-1].id, 10)
    assert [m.content for m in older] == ["m1", "m0"]
    with pytest.raises(NotFound):
        await w.service.history(CAROL, w.room, None, 10)


# --- rooms and membership ----------------------------------------------------------------


async def test_create_room_tells_each_member_on_their_user_queue(w: World) -> None:
    room = await w.service.create_room("new", False, [ALICE.id, CAROL.id])
    assert sorted(w.broker.summary()) == [
        ("user", ALICE.id, "room_joined"),
        ("user", CAROL.id, "room_joined"),
    ]
    assert w.rooms.members_of(room.id) == {ALICE.id, CAROL.id}
    assert {r.id for r in w.store.load_rooms_sync()} >= {room.id}


async def test_membership_changes_reach_live_sessions(w: World) -> None:
    carol = w.chat_session(CAROL)
    bob = w.chat_session(BOB)
    carol_queue = w.subscribe(f"user.{CAROL.id}", CAROL)
    bob_queue = w.subscribe(f"user.{BOB.id}", BOB)
    await w.service.add_member(w.room, CAROL.id)
    await w.service.remove_member(w.room, BOB.id)
    msg, _ = await w.post(ALICE, w.room, "after the change")
    assert [e.message_id for e in carol.chat] == [msg.id]
    assert bob.chat == []
    assert bob.left == [w.room]
    assert [body(e)["type"] for e in carol_queue.got] == ["room_joined"]
    assert [body(e)["type"] for e in bob_queue.got] == ["room_removed"]
    assert body(bob_queue.got[0])["roomId"] == w.room


async def test_adding_a_member_twice_or_removing_a_stranger_says_nothing(w: World) -> None:
    await w.service.add_member(w.room, BOB.id)
    stranger = w.chat_session(CAROL)
    w.broker.clear()
    await w.service.remove_member(w.room, CAROL.id)
    assert w.broker.published == []
    # Told anyway: a STOMP session drops a subscription it may hold from an earlier join.
    assert stranger.left == [w.room]


async def test_join_and_leave(w: World) -> None:
    await w.service.join(BOB, w.public)
    assert w.broker.summary() == [("user", BOB.id, "room_joined")]
    w.broker.clear()
    await w.service.join(BOB, w.public)  # already in: nothing to say
    assert w.broker.published == []
    with pytest.raises(NotFound) as exc_info:
        await w.service.join(BOB, w.private)
    assert refused(exc_info) == (NotFound, "unknown_room", 404)
    await w.service.invite(w.private, BOB.id)
    assert w.broker.summary() == [("user", BOB.id, "room_invited")]
    await w.service.join(BOB, w.private)
    assert w.rooms.is_member(w.private, BOB.id)
    with pytest.raises(NotFound):
        await w.service.join(BOB, 999)
    await w.service.leave(BOB, w.private)
    assert not w.rooms.is_member(w.private, BOB.id)
    with pytest.raises(NotFound):
        await w.service.leave(BOB, w.private)


# --- presence -----------------------------------------------------------------------------


def statuses(w: World) -> list[tuple[int, int, str]]:
    return [
        (room_id, body(e)["userId"], body(e)["status"])
        for _, room_id, e in w.broker.published
        if e.kind == "user_status_changed"
    ]


async def test_online_at_the_first_session_offline_at_the_last(w: World) -> None:
    phone = FakeSession(ALICE.id)
    laptop = FakeSession(ALICE.id, "stomp")
    w.service.session_opened(phone)
    assert sorted(statuses(w)) == [(w.room, 1, "online"), (w.public, 1, "online")]
    w.broker.clear()
    w.service.session_opened(laptop)
    w.service.session_closed(phone)
    w.service.session_closed(phone)  # twice: no second offline
    assert w.broker.published == []
    w.service.session_closed(laptop)
    assert sorted(statuses(w)) == [(w.room, 1, "offline"), (w.public, 1, "offline")]


async def test_presence_reaches_room_subscribers_not_chat_sessions(w: World) -> None:
    bob_chat = w.chat_session(BOB)
    watcher = w.subscribe(f"room.{w.room}", BOB)
    w.chat_session(ALICE)
    assert [body(e)["status"] for e in watcher.got] == ["online"]
    assert bob_chat.chat == []


async def test_disconnect_user_closes_only_that_protocol(w: World) -> None:
    sessions = [FakeSession(1), FakeSession(1, "stomp"), FakeSession(1), FakeSession(2)]
    for s in sessions:
        w.service.session_opened(s)
    assert await w.service.disconnect_user(1, "chat", 4000, "revoked") == 2
    assert [s.closed for s in sessions] == [[(4000, "revoked")], [], [(4000, "revoked")], []]
    assert await w.service.disconnect_user(3, "chat", 4000, "revoked") == 0


# --- typing -------------------------------------------------------------------------------


def typing_events(w: World) -> list[tuple[int, int, bool]]:
    return [
        (room_id, body(e)["userId"], body(e)["isTyping"])
        for _, room_id, e in w.broker.published
        if e.kind == "user_typing"
    ]


async def test_typing_start_is_said_once_and_stop_once(w: World) -> None:
    w.service.typing(ALICE, w.room, True)
    w.service.typing(ALICE, w.room, True)
    w.service.typing(BOB, w.room, True)
    w.service.typing(ALICE, w.room, False)
    w.service.typing(ALICE, w.room, False)
    w.service.typing(CAROL, w.private, False)  # was not typing
    assert typing_events(w) == [(w.room, 1, True), (w.room, 2, True), (w.room, 1, False)]
    with pytest.raises(NotFound):
        w.service.typing(CAROL, w.room, True)
    with pytest.raises(NotFound):
        w.service.typing(ALICE, 999, True)


async def test_sending_a_message_ends_typing(w: World) -> None:
    w.service.typing(ALICE, w.room, True)
    w.service.typing(BOB, w.room, True)
    await w.post(ALICE, w.room, "done typing")
    await w.post(ALICE, w.room, "no second stop")
    kinds = [e.kind for _, _, e in w.broker.published]
    assert kinds == ["user_typing", "user_typing", "new_message", "user_typing", "new_message"]
    assert typing_events(w)[-1] == (w.room, 1, False)


async def test_the_last_session_closing_ends_typing_then_goes_offline(w: World) -> None:
    session = w.chat_session(ALICE)
    w.service.typing(ALICE, w.room, True)
    w.broker.clear()
    w.service.session_closed(session)
    assert typing_events(w) == [(w.room, 1, False)]
    assert [e.kind for _, _, e in w.broker.published] == [
        "user_typing",
        "user_status_changed",
        "user_status_changed",
    ]


async def test_typing_nobody_ends_expires_at_the_timeout(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with world(tmp_path, typing_timeout_seconds=5.0) as w, trio.open_nursery() as nursery:
        nursery.start_soon(w.service.expire_typing)
        start = trio.current_time()
        w.service.typing(ALICE, w.room, True)
        await trio.sleep(3)
        w.service.typing(ALICE, w.room, True)  # still typing: the deadline moves to 8
        w.service.typing(BOB, w.room, True)  # ends at 8 too
        await trio.sleep(4.999)
        assert typing_events(w) == [(w.room, 1, True), (w.room, 2, True)]
        await trio.sleep(0.002)
        assert sorted(typing_events(w)[2:]) == [(w.room, 1, False), (w.room, 2, False)]
        assert w.broker.times[2:] == [start + 8, start + 8]
        # Idle again, the task waits for the next start without a deadline.
        await trio.sleep(100)
        again = trio.current_time()
        w.service.typing(ALICE, w.room, True)
        await trio.sleep(5.001)
        assert typing_events(w)[-1] == (w.room, 1, False)
        assert w.broker.times[-1] == again + 5
        nursery.cancel_scope.cancel()


async def test_typing_ended_by_hand_is_not_ended_again_at_expiry(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with world(tmp_path, typing_timeout_seconds=5.0) as w, trio.open_nursery() as nursery:
        nursery.start_soon(w.service.expire_typing)
        w.service.typing(ALICE, w.room, True)
        await trio.sleep(1)
        w.service.typing(ALICE, w.room, False)
        await trio.sleep(10)
        assert typing_events(w) == [(w.room, 1, True), (w.room, 1, False)]
        nursery.cancel_scope.cancel()
