"""The bus's frames (chatd.cluster.wire): publications batched into frames and read back
part by part, what a frame no chatd node made looks like to a node, and when a node's
batches leave (RabbitBroker's frame task with a stand-in link; trio's MockClock, so the
waits are exact and nothing sleeps)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from chatd import events
from chatd.cluster import bus, wire
from chatd.cluster.bus import RabbitBroker
from chatd.config import BusConfig
from chatd.hub import Hub
from chatd.model import StoredMessage
from chatd.rooms import Rooms
from chatd.stomp import Frame

KEY = b"k" * 32
SENT = "mark n1 1 2 " + "0" * 32  # a header of the right shape (its signature is not checked)


def _message(msg_id: int, content: str = "héllo | there\n") -> StoredMessage:
    return StoredMessage(
        msg_id, 3, 7, "alice", None, content, "TEXT", "2026-12-01T00:00:00Z",
        prev_id=msg_id - 1,
    )  # fmt: skip


def test_a_frame_carries_every_part_in_order_as_its_node_encoded_it() -> None:
    message = events.new_message(_message(41))
    typing = events.user_typing(3, 7, True)
    parts = [
        wire.event_part("room.3", message),
        wire.control_part({"op": "hello", "users": [1, 2]}),
        wire.event_part("room.3", typing),
        wire.event_part("user.7", message),
    ]
    frame = wire.batch_frame("chatd", "n1#abc123", parts, "mark", KEY, 7, 1_764_000_000_123, 5)
    assert frame.get("destination") == "/exchange/amq.direct/chatd.5"
    sent = wire.sender(frame)
    assert (sent.origin, sent.node, sent.number, sent.sent_at) == (
        "mark", "n1#abc123", 7, 1_764_000_000_123
    )  # fmt: skip
    assert wire.authentic(frame, sent, KEY)
    got = wire.arrivals(frame, "n1#abc123")
    assert [a.topic for a in got] == ["room.3", wire.CONTROL, "room.3", "user.7"]
    back = wire.event_of(got[0])
    assert (back.kind, back.body, back.chat, back.message_id, back.prev_id) == (
        message.kind, message.body, message.chat, 41, 40,
    )  # fmt: skip
    assert wire.control_of(got[1]) == {"op": "hello", "users": [1, 2]}
    assert wire.event_of(got[2]).body == typing.body
    assert wire.event_of(got[2]).message_id is None
    assert wire.event_of(got[3]).chat == message.chat


@pytest.mark.parametrize(
    ("header", "body", "why"),
    [
        (None, b"x\n", "not from a chatd node"),
        ("mark", b"x\n", "not from a chatd node"),
        ("mark n1 extra", b"x\n", "not from a chatd node"),
        (SENT + " extra", b"x\n", "not from a chatd node"),
        ("mark n1 - 2 " + "0" * 32, b"x\n", "no frame number"),
        ("mark n1 1 - " + "0" * 32, b"x\n", "no frame number or time"),
        ("mark n1 1e3 2 " + "0" * 32, b"x\n", "frame number: not a number"),
        ("mark n1 1 2 sig", b"x\n", "signature: not 32 hex digits"),
        ("mark n1 1 2 " + "A" * 32, b"x\n", "signature: not 32 hex"),
        ("mark n1 1 2 " + "é" * 32, b"x\n", "signature: not 32 hex digits"),
        (SENT, b"room.1 k - - - - 2", "no part descriptions"),
        (SENT, b"room.1 k - - - -\nab", "wrong shape"),
        (SENT, b"room.1 k - - - - 3\nab", "past the body"),
        (SENT, b"room.1 k - - - - 1\nab", "bytes after the last part"),
        (SENT, b"room.1 k - - - - x\nab", "length: not a number"),
        (SENT, b"room.1 k 1e3 - - - 2\nab", "message id: not a number"),
        (SENT, "room.1 k - - - - ²\nab".encode(), "not ASCII"),
        (SENT, b"room.1 k - - - - 1|room.1 k - - - - 5\nab", "past the body"),
        # A message whose previous id is not before its own: the sequencer would deliver
        # it after that one, moving its newest id back (and delivering the rest twice).
        (SENT, b"room.1 k 7 7 - - 2\nab", "previous id: not before"),
        (SENT, b"room.1 k 7 9 - - 2\nab", "previous id: not before"),
    ],
)
def test_a_frame_no_chatd_node_made_is_refused_whole(
    header: str | None, body: bytes, why: str
) -> None:
    headers: tuple[tuple[str, str], ...] = (("destination", "/exchange/amq.direct/chatd.0"),)
    if header is not None:
        headers += ((wire.HEADER, header),)
    frame = Frame("MESSAGE", headers, body)
    with pytest.raises(wire.BadFrame, match=why):
        wire.arrivals(frame, wire.sender(frame).node)


def test_only_a_frame_signed_with_the_key_as_it_is_is_authentic() -> None:
    """The signature covers the node, the frame's number, its time and the body: a frame made
    without the key, or one of them changed, is not authentic."""
    part = wire.event_part("room.3", events.new_message(_message(41)))
    frame = wire.batch_frame("chatd", "n1#abc123", [part], "mark", KEY, 3, 5)
    sent = wire.sender(frame)
    assert wire.authentic(frame, sent, KEY)
    assert not wire.authentic(frame, sent, b"another key")
    other = wire.batch_frame("chatd", "n1#abc123", [part], "mark", b"another key", 3, 5)
    assert not wire.authentic(other, wire.sender(other), KEY)
    changed = Frame(frame.command, frame.headers, frame.body.replace(b"41", b"42"))
    assert not wire.authentic(changed, sent, KEY)
    signature = sent.signature.decode()
    for header in (
        f"mark n2#abc123 3 5 {signature}",
        f"mark n1#abc123 4 5 {signature}",
        f"mark n1#abc123 3 6 {signature}",
    ):
        moved = Frame(frame.command, ((wire.HEADER, header),), frame.body)
        assert not wire.authentic(moved, wire.sender(moved), KEY)


def test_a_part_whose_chat_text_is_broken_is_refused_alone() -> None:
    good = wire.event_part("room.1", events.user_typing(1, 2, True))
    fields = good.meta.split(" ")
    fields[4:6] = ["9999", "c"]  # its /chat text would start past its end
    bad = wire.Part(" ".join(fields), good.body)
    got = wire.arrivals(wire.batch_frame("chatd", "n1", [bad, good], "", KEY, 1, 5), "n1")
    with pytest.raises(wire.BadFrame, match="split"):
        wire.event_of(got[0])
    assert wire.event_of(got[1]).body == good.body


class _Link:
    """Stands in for the connection to RabbitMQ: keeps what it is given."""

    def __init__(self) -> None:
        self.frames: list[tuple[float, list[wire.Arrival]]] = []

    def send(self, frame: Frame) -> bool:
        self.frames.append((trio.current_time(), wire.arrivals(frame, wire.sender(frame).node)))
        return True


class _NoStore:
    async def last_message_id(self) -> int:
        return 0


def _broker(batch_ms: float) -> tuple[RabbitBroker, _Link]:
    cfg = BusConfig(backend="rabbitmq", url="stomp://u:p@127.0.0.1:1/", batch_ms=batch_ms)
    broker = RabbitBroker(cfg, Hub(Rooms()), _NoStore())  # type: ignore[arg-type]
    link = _Link()
    broker._link = link  # type: ignore[assignment]
    return broker, link


async def test_a_batch_leaves_at_once_after_a_quiet_spell_then_at_most_every_window(
    autojump_clock: trio.testing.MockClock,
) -> None:
    broker, link = _broker(batch_ms=5)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(broker._frames)
        start = trio.current_time()
        for i in range(3):  # one task's publications (a commit's hooks): one frame
            broker.publish_control({"op": "n", "i": i})
        await trio.testing.wait_all_tasks_blocked()
        assert [(t - start, len(p)) for t, p in link.frames] == [(0, 3)]
        await trio.sleep(0.001)
        for i in range(3, 6):  # within the window: they wait for its end, together
            broker.publish_control({"op": "n", "i": i})
            await trio.sleep(0.001)
        await trio.sleep(0.01)
        assert [(round((t - start) * 1000), len(p)) for t, p in link.frames] == [(0, 3), (5, 3)]
        await trio.sleep(1)  # a quiet spell: the next leaves at once
        at = trio.current_time()
        broker.publish_control({"op": "n", "i": 6})
        await trio.testing.wait_all_tasks_blocked()
        assert link.frames[-1][0] == at
        order = [wire.control_of(a)["i"] for _, parts in link.frames for a in parts]
        assert order == list(range(7))
        assert (broker.published, broker.frames, broker.dropped) == (7, 3, 0)
        nursery.cancel_scope.cancel()


async def test_a_full_batch_leaves_without_waiting_for_the_window(
    autojump_clock: trio.testing.MockClock,
) -> None:
    broker, link = _broker(batch_ms=1000)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(broker._frames)
        broker.publish_control({"op": "first"})
        await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
        for i in range(wire.MAX_FRAME_PARTS + 1):
            broker.publish_control({"op": "n", "i": i})
        assert [len(p) for _, p in link.frames] == [1, wire.MAX_FRAME_PARTS]
        assert link.frames[-1][0] == start
        await trio.sleep(2)
        assert [len(p) for _, p in link.frames] == [1, wire.MAX_FRAME_PARTS, 1]
        nursery.cancel_scope.cancel()


async def test_publications_without_a_link_are_counted_lost_and_control_ones_resynced(
    autojump_clock: trio.testing.MockClock,
) -> None:
    broker, link = _broker(batch_ms=2)
    broker._link = None
    broker.publish_user(7, events.user_typing(1, 7, True))
    assert (broker.dropped, broker._lost_control) == (1, False)
    broker.publish_control({"op": "x"})
    assert (broker.dropped, broker._lost_control) == (2, True)
    assert link.frames == []


def test_a_frame_of_more_parts_than_any_node_sends_is_refused_before_its_parts_are_read() -> None:
    """A 64 MiB frame of empty parts is some 3.5 million of them: read one by one they
    took 12 s of the event loop and 570 MB (measured), long enough for the other nodes
    to take this one for dead. No chatd node sends more than MAX_FRAME_PARTS a frame."""
    meta = b"room.1 k - - - - 0"
    many = wire.MAX_ARRIVAL_PARTS + 1
    frame = Frame("MESSAGE", ((wire.HEADER, SENT),), b"|".join([meta] * many) + b"\n")
    with pytest.raises(wire.BadFrame, match="too many parts"):
        wire.arrivals(frame, "n1")
    fits = Frame("MESSAGE", ((wire.HEADER, SENT),), b"|".join([meta] * (many - 1)) + b"\n")
    assert len(wire.arrivals(fits, "n1")) == many - 1
    assert wire.MAX_FRAME_PARTS <= wire.MAX_ARRIVAL_PARTS


async def test_a_frame_that_carried_what_came_during_its_wait_leaves_no_empty_turn_behind(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Publications made while the task waited out the window leave with its frame; the
    task must not then wait a window more for nothing and count that as a frame sent, or
    the next publication after a quiet window waits up to batch_ms for no reason."""
    broker, link = _broker(batch_ms=5)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(broker._frames)
        start = trio.current_time()
        broker.publish_control({"op": "n", "i": 0})  # leaves at once (0 ms)
        await trio.sleep(0.001)
        broker.publish_control({"op": "n", "i": 1})  # waits for the window (5 ms)
        await trio.sleep(0.002)
        broker.publish_control({"op": "n", "i": 2})  # during that wait: the same frame
        await trio.sleep(0.008)  # 11 ms: a window and more since the last frame
        broker.publish_control({"op": "n", "i": 3})
        await trio.sleep(0.01)
        times = [(round((t - start) * 1000), len(p)) for t, p in link.frames]
        assert times == [(0, 1), (5, 2), (11, 1)]
        nursery.cancel_scope.cancel()


class _BoundedLink(_Link):
    """A stand-in that refuses a frame past its queue's bound, as Link.send does."""

    def __init__(self, max_pending: int) -> None:
        super().__init__()
        self.max_pending = max_pending

    def send(self, frame: Frame) -> bool:
        return len(frame.body) <= self.max_pending and super().send(frame)


async def test_a_batch_never_outgrows_the_links_queue(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With [bus] max_pending_bytes below MAX_FRAME_BYTES, a batch of small publications
    made in one turn grew into one frame the link could never take: every publication
    of it dropped, though each alone fits many times over."""
    cfg = BusConfig(
        backend="rabbitmq", url="stomp://u:p@127.0.0.1:1/", batch_ms=2, max_pending_bytes=8192
    )
    broker = RabbitBroker(cfg, Hub(Rooms()), _NoStore())  # type: ignore[arg-type]
    link = _BoundedLink(cfg.max_pending_bytes)
    broker._link = link  # type: ignore[assignment]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(broker._frames)
        for i in range(40):  # one task's publications, 1 kB each
            broker.publish_control({"op": "n", "i": i, "pad": "x" * 1000})
        await trio.testing.wait_all_tasks_blocked()
        assert broker.dropped == 0
        order = [wire.control_of(a)["i"] for _, parts in link.frames for a in parts]
        assert order == list(range(40))
        nursery.cancel_scope.cancel()


async def test_nothing_leaves_after_the_bye(autojump_clock: trio.testing.MockClock) -> None:
    """Once a stopping node said bye, the others have forgotten it; a snapshot (answering
    another node's hello) or an alive after it made them take it for alive again, with
    its users, until node_timeout_seconds: and their asks waited for its answer."""
    broker, link = _broker(batch_ms=2)

    async def flushed() -> None:
        pass

    link.flushed = flushed  # type: ignore[attr-defined]
    await broker.aclose()
    sent = [wire.control_of(a)["op"] for _, parts in link.frames for a in parts]
    assert sent == ["bye"]
    broker._on_control("other#abcdef", {"op": "hello", "users": [5]})
    broker.presence.tick({"last": 0})
    broker._send_frame()
    sent = [wire.control_of(a)["op"] for _, parts in link.frames for a in parts]
    assert sent == ["bye"]


async def test_what_a_node_takes_from_the_bus_signed_recent_once_and_nothing_raises(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Only a frame signed with the cluster's key, sent within FRAME_MAX_AGE of now by
    its node's clock, and newer than the last one taken from that node, is taken. One
    signed long ago is dropped: from a node never heard, a recording, nothing more; from
    a node heard, its next frame, stalled: the node reloads what it may have carried,
    once (its number is taken: sent again, it is a replay). A signature that is not hex,
    or a frame whose handling raises, is dropped without ending the bus task."""
    now = 1_764_000_000.0
    broker, _ = _broker(batch_ms=2)
    broker.origin, broker.key = "mark", KEY
    broker._wall_clock = lambda: now  # type: ignore[method-assign]
    applied: list[object] = []
    broker.on_control = lambda message: applied.append(message["i"])

    def frame(i: int, number: int, sent_at: float, key: bytes = KEY) -> Frame:
        part = wire.control_part({"op": "n", "i": i})
        return wire.batch_frame("chatd", "n2#abc", [part], "mark", key, number, int(sent_at * 1000))

    old = now - bus.FRAME_MAX_AGE - 1
    broker._on_frames([frame(1, 1, old), frame(2, 2, now + bus.FRAME_MAX_AGE + 1)])
    assert (applied, broker.stale, broker._resync_wanted.is_set()) == ([], 2, False)
    broker._on_frames([frame(3, 3, now - 5), frame(4, 4, now), frame(4, 4, now)])
    broker._on_frames([frame(5, 3, now), frame(6, 5, now, b"another key")])
    assert applied == [3, 4]
    assert broker.forged == 3  # sent again twice, another key once

    unreadable = Frame("MESSAGE", ((wire.HEADER, "mark n2#abc 6 1 " + "é" * 32),), b"x\n")
    broker._on_frames([unreadable])  # a str comparison of these would raise TypeError

    def boom(*args: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(wire, "arrivals", boom)
    broker._on_frames([frame(7, 7, now)])
    monkeypatch.undo()
    broker._on_frames([frame(8, 8, now)])
    assert applied == [3, 4, 8]
    # n2 heard: its next frame, stalled past FRAME_MAX_AGE, makes the node reload; the
    # same frame sent again is a replay, and asks nothing.
    broker._on_frames([frame(9, 9, old)])
    assert (applied, broker.stale, broker._resync_wanted.is_set()) == ([3, 4, 8], 3, True)
    broker._resync_wanted = trio.Event()
    broker._on_frames([frame(9, 9, old)] * 3)
    assert (broker.stale, broker.forged, broker._resync_wanted.is_set()) == (3, 6, False)
    broker._on_frames([frame(10, 10, now)])
    assert applied == [3, 4, 8, 10]


async def test_a_frame_signed_before_this_node_joined_the_bus_is_a_recording() -> None:
    """RabbitMQ routes a frame only to the queues bound when it is published, so one
    signed before this node subscribed (more than CLOCK_SKEW before: the clocks'
    allowance) never reached it honestly. Such a recording, replayed within FRAME_MAX_AGE
    to a node that had not yet heard its node (it just started or reconnected: no number
    of that node's to compare with), is dropped, however often it comes, and asks for
    nothing: the node reloaded when it joined, after anything the recording says (a
    reload per replay would be anyone's on the vhost to ask for)."""
    now = 1_764_000_000.0
    broker, _ = _broker(batch_ms=2)
    broker.origin, broker.key = "mark", KEY
    broker._wall_clock = lambda: now
    broker._joined_at = now - 1
    applied: list[object] = []
    broker.on_control = lambda message: applied.append(message["i"])

    def frame(i: int, number: int, sent_at: float) -> Frame:
        part = wire.control_part({"op": "n", "i": i})
        return wire.batch_frame("chatd", "n2#abc", [part], "mark", KEY, number, int(sent_at * 1000))

    recorded = now - 1 - bus.CLOCK_SKEW - 1  # well within FRAME_MAX_AGE
    broker._on_frames([frame(1, 1, recorded)] * 5)
    assert (applied, broker.stale, broker._resync_wanted.is_set()) == ([], 5, False)
    # Sent just before we subscribed by the sender's clock, a little behind ours: taken;
    # and the ones after it.
    broker._on_frames([frame(2, 2, now - 1 - bus.CLOCK_SKEW + 1), frame(3, 3, now)])
    assert (applied, broker.stale) == ([2, 3], 5)


async def test_a_frame_of_ours_that_is_lost_makes_the_node_ask_every_node_for_its_users(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Presence travels as changes ("up", "down"): one lost with a frame that cannot be
    read, or is too old to be taken, stood until its node's next hello (a user shown
    online long after leaving). After such frames the node's reload also asks every node
    for its users (a hello, answered with their snapshots), once per reload however many
    frames; a reload for another reason (a node's "resync") asks nothing."""
    now = 1_764_000_000.0
    broker, link = _broker(batch_ms=2)
    broker.origin, broker.key = "mark", KEY
    broker._wall_clock = lambda: now

    def hellos() -> int:
        ops = [wire.control_of(a)["op"] for _, parts in link.frames for a in parts]
        return ops.count("hello")

    part = wire.control_part({"op": "down", "user": 5})
    body = wire.batch_frame("chatd", "n2#abc", [part]).body + b"!"  # a byte too many
    async with trio.open_nursery() as nursery:
        nursery.start_soon(broker._resyncs)
        nursery.start_soon(broker._frames)
        await trio.testing.wait_all_tasks_blocked()
        broker._on_frames(
            [wire.signed_frame("chatd", "n2#abc", body, "mark", KEY, n, int(now * 1000))
             for n in (1, 2, 3)]
        )  # fmt: skip
        await trio.testing.wait_all_tasks_blocked()
        assert (broker.broken, hellos()) == (3, 1)
        long_ago = int((now - bus.FRAME_MAX_AGE - 1) * 1000)
        stale = wire.batch_frame("chatd", "n2#abc", [part], "mark", KEY, 4, long_ago)
        broker._on_frames([stale])
        await trio.sleep(2)  # the reloads' pace
        assert (broker.stale, hellos()) == (1, 2)
        broker._on_control("n2#abc", {"op": "resync"})
        await trio.sleep(2)
        assert hellos() == 2
        nursery.cancel_scope.cancel()


async def test_a_commits_publications_leave_in_one_frame_at_the_end_of_its_hooks(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A commit's hooks run in `hooks_scope`: what they publish leaves at the end of the
    scope, with no task to wake, when the window is open; inside the window it waits for
    the frame task, as any publication does. Nested scopes join the outermost."""
    broker, link = _broker(batch_ms=5)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(broker._frames)
        start = trio.current_time()
        with broker.hooks_scope():
            broker.publish_control({"op": "n", "i": 0})
            with broker.hooks_scope():
                broker.publish_control({"op": "n", "i": 1})
            assert link.frames == []
            broker.publish_control({"op": "n", "i": 2})
            assert link.frames == []
        # Sent by the scope itself: no other task has run.
        assert [(t - start, len(p)) for t, p in link.frames] == [(0, 3)]
        await trio.sleep(0.001)
        with broker.hooks_scope():  # within the window: the task sends it at its end
            broker.publish_control({"op": "n", "i": 3})
        assert len(link.frames) == 1
        await trio.sleep(0.01)
        assert [(round((t - start) * 1000), len(p)) for t, p in link.frames] == [(0, 3), (5, 1)]
        await trio.sleep(1)
        with broker.hooks_scope():
            pass  # nothing published: nothing sent, the window untouched
        assert len(link.frames) == 2
        at = trio.current_time()
        broker.publish_control({"op": "n", "i": 4})  # outside a scope: the task, at once
        await trio.testing.wait_all_tasks_blocked()
        assert link.frames[-1][0] == at
        order = [wire.control_of(a)["i"] for _, parts in link.frames for a in parts]
        assert order == list(range(5))
        assert (broker.published, broker.frames, broker.dropped) == (5, 3, 0)
        nursery.cancel_scope.cancel()


async def test_frames_of_a_node_that_never_came_make_this_node_reload() -> None:
    """A node's frames are numbered one after the other. Since this node joined, a number
    skipped is frames lost on the way (this node's queue at RabbitMQ, bounded, dropped its
    oldest): the messages in them show as gaps in the chain, but control messages and
    presence changes would be lost for good, so the node reloads (and says hello) as for
    any frame lost. Numbers from before a join are not compared: the join reloads."""
    now = 1_764_000_000.0
    broker, _ = _broker(batch_ms=2)
    broker.origin, broker.key = "mark", KEY
    broker._wall_clock = lambda: now
    applied: list[object] = []
    broker.on_control = lambda message: applied.append(message["i"])

    def frame(number: int) -> Frame:
        part = wire.control_part({"op": "n", "i": number})
        return wire.batch_frame("chatd", "n2#abc", [part], "mark", KEY, number, int(now * 1000))

    broker._on_frames([frame(7), frame(8), frame(9)])
    assert (applied, broker.missed, broker._resync_wanted.is_set()) == ([7, 8, 9], 0, False)
    broker._on_frames([frame(12)])
    assert (applied, broker.missed, broker._resync_wanted.is_set()) == ([7, 8, 9, 12], 2, True)
    assert broker._presence_wanted  # and every node is asked for its users
    broker._resync_wanted = trio.Event()
    broker._heard_since_join.clear()  # as a (re)join does
    broker._on_frames([frame(20), frame(21)])
    assert (broker.missed, broker._resync_wanted.is_set()) == (2, False)


async def test_a_frame_the_link_refused_gives_its_number_to_the_next(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The sender knows what it dropped (and makes control messages good itself); its
    next frame must not look to the others as if frames were lost on the way."""
    cfg = BusConfig(backend="rabbitmq", url="stomp://u:p@127.0.0.1:1/", batch_ms=2)
    broker = RabbitBroker(cfg, Hub(Rooms()), _NoStore())  # type: ignore[arg-type]
    link = _BoundedLink(1000)
    broker._link = link  # type: ignore[assignment]
    sent: list[int] = []
    original = link.send

    def numbered(frame: Frame) -> bool:
        ok = original(frame)
        if ok:
            sent.append(wire.sender(frame).number)
        return ok

    link.send = numbered  # type: ignore[method-assign]
    broker.publish_control({"op": "n"})
    broker._send_frame()
    broker.publish_control({"op": "n", "pad": "x" * 2000})  # past the link's bound: dropped
    broker._send_frame()
    broker.publish_control({"op": "n"})
    broker._send_frame()
    assert sent == [1, 2] and broker.dropped == 1


def test_the_nodes_compared_for_skipped_numbers_are_those_whose_numbers_are_kept() -> None:
    """Past _MAX_SENDERS node runs (restarts) heard without this node rejoining, the
    oldest number goes, and with it the comparison; a node heard later is still
    compared (the set stopped taking new nodes once full, and the check with them)."""
    now = 1_764_000_000.0
    broker, _ = _broker(batch_ms=2)
    broker.origin, broker.key = "mark", KEY
    broker._wall_clock = lambda: now

    def frame(node: str, number: int) -> Frame:
        part = wire.control_part({"op": "n"})
        return wire.batch_frame("chatd", node, [part], "mark", KEY, number, int(now * 1000))

    broker._on_frames([frame(f"n{i}#abc", 1) for i in range(bus._MAX_SENDERS + 10)])
    assert broker._heard_since_join == set(broker._numbers)
    assert len(broker._numbers) == bus._MAX_SENDERS
    late = f"n{bus._MAX_SENDERS + 9}#abc"
    broker._on_frames([frame(late, 3)])
    assert (broker.missed, broker._resync_wanted.is_set()) == (1, True)
