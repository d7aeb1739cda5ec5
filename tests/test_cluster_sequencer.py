"""The sequencer: chat messages from the bus and from this node delivered in commit order,
once each, gaps closed by the bus within `gap_wait` or else from the store. Time is
trio's MockClock: the waits are exact and nothing sleeps."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing

from chatd.cluster import sequencer
from chatd.cluster.sequencer import Sequencer


class Store:
    """The committed messages, as the store would return them; can be made to fail."""

    def __init__(self, ids: list[int]) -> None:
        self.ids = ids
        self.reads: list[tuple[int, int]] = []
        self.newest_reads = 0
        self.fail = 0

    async def newest(self) -> int:
        """message_clock: the newest committed id."""
        self.newest_reads += 1
        await trio.sleep(0.001)
        return max(self.ids, default=0)

    async def fill(self, after: int, upto: int) -> list[tuple[int, str]]:
        self.reads.append((after, upto))
        await trio.sleep(0.001)
        if self.fail:
            self.fail -= 1
            raise OSError("store away")
        return [(i, f"m{i}") for i in self.ids if after < i <= upto]


def sequencer_on(store: Store, deliver: Callable[[str], None], **kw: Any) -> Sequencer[str]:
    return Sequencer(deliver, store.fill, store.newest, **kw)


async def test_in_order_messages_pass_at_once_and_duplicates_are_dropped() -> None:
    got: list[str] = []
    seq = sequencer_on(Store([]), got.append)
    seq.start_at(10)
    seq.offer(9, 8, "old")  # committed before this node started
    seq.offer(11, 10, "a")
    seq.offer(12, 11, "b")
    seq.offer(12, 11, "b again")
    seq.offer(15, 12, "c")  # ids 13 and 14 were rolled back: the chain has no gap
    assert got == ["a", "b", "c"]
    assert seq.last == 15 and seq.held == 0


async def test_a_message_waits_for_the_one_before_it_and_the_bus_brings_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    got: list[str] = []
    store = Store([11, 12, 13])
    seq = sequencer_on(store, got.append, gap_wait=0.05)
    seq.start_at(10)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(seq.run)
        seq.offer(13, 12, "c")
        seq.offer(12, 11, "b")
        assert got == [] and seq.held == 2
        await trio.sleep(0.01)
        seq.offer(11, 10, "a")
        assert got == ["a", "b", "c"] and seq.held == 0
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert store.reads == []  # closed by the bus: no store read


async def test_a_gap_the_bus_does_not_close_is_read_from_the_store_after_gap_wait(
    autojump_clock: trio.testing.MockClock,
) -> None:
    got: list[str] = []
    store = Store([11, 12, 14, 15])  # 13 rolled back; 11, 12 published by a node that died
    seq = sequencer_on(store, got.append, gap_wait=0.05)
    seq.start_at(10)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(seq.run)
        seq.offer(14, 12, "bus 14")
        seq.offer(15, 14, "bus 15")
        await trio.sleep(0.049)
        assert got == []
        await trio.sleep(0.01)
        assert got == ["m11", "m12", "bus 14", "bus 15"]
        assert store.reads == [(10, 12)]
        # Late copies of what the store gave are dropped.
        seq.offer(12, 11, "late 12")
        assert got[-1] == "bus 15"
        nursery.cancel_scope.cancel()
    assert seq.filled == 2 and seq.gaps == 1


async def test_catch_up_reads_what_was_committed_while_the_bus_was_away(
    autojump_clock: trio.testing.MockClock,
) -> None:
    got: list[str] = []
    store = Store([11, 12, 13])
    seq = sequencer_on(store, got.append, gap_wait=0.05)
    seq.start_at(10)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(seq.run)
        seq.catch_up(13)
        await trio.sleep(0.1)
        assert got == ["m11", "m12", "m13"]
        # A heartbeat saying what we have: nothing to read.
        seq.catch_up(13)
        await trio.sleep(0.1)
        assert store.reads == [(10, 13)]
        nursery.cancel_scope.cancel()


async def test_catch_up_needs_no_read_when_the_bus_brings_them_in_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    got: list[str] = []
    store = Store([11])
    seq = sequencer_on(store, got.append, gap_wait=0.05)
    seq.start_at(10)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(seq.run)
        seq.catch_up(11)  # another node's heartbeat, ahead of its publication
        await trio.sleep(0.01)
        seq.offer(11, 10, "bus 11")
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert got == ["bus 11"] and store.reads == []


async def test_a_store_that_fails_is_read_again_and_nothing_passes_the_gap_meanwhile(
    autojump_clock: trio.testing.MockClock,
) -> None:
    got: list[str] = []
    store = Store([11, 12])
    store.fail = 2
    seq = sequencer_on(store, got.append, gap_wait=0.05, retry_wait=1.0)
    seq.start_at(10)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(seq.run)
        seq.offer(12, 11, "bus 12")
        await trio.sleep(1.5)
        assert got == []  # 11 unknown yet: 12 must not pass it
        await trio.sleep(2)
        assert got == ["m11", "bus 12"]
        nursery.cancel_scope.cancel()
    assert len(store.reads) == 3


async def test_a_failing_delivery_does_not_stop_the_order() -> None:
    got: list[str] = []

    def deliver(item: str) -> None:
        if item == "bad":
            raise RuntimeError("a session's bug")
        got.append(item)

    seq = sequencer_on(Store([]), deliver)
    seq.offer(1, 0, "bad")
    seq.offer(2, 1, "good")
    assert got == ["good"] and seq.last == 2


async def test_held_messages_stay_bounded_while_the_store_is_away(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bus goes on bringing messages past a gap the store cannot close yet: beyond
    MAX_HELD they are not kept (each is still committed: read later, in order)."""
    monkeypatch.setattr(sequencer, "MAX_HELD", 50)
    got: list[str] = []
    store = Store(list(range(11, 411)))
    store.fail = 3
    seq = sequencer_on(store, got.append, gap_wait=0.05, retry_wait=1.0)
    seq.start_at(10)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(seq.run)
        for i in range(12, 411):  # 11 never comes on the bus
            seq.offer(i, i - 1, f"bus {i}")
            assert seq.held <= 50
        await trio.sleep(0.5)
        assert got == [] and seq.held <= 50  # the store is still away
        await trio.sleep(5)
        nursery.cancel_scope.cancel()
    assert [int(x.split()[-1].lstrip("m")) for x in got] == list(range(11, 411))
    assert seq.held == 0


async def test_events_outside_the_chain_wait_behind_held_messages(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An edit of message 12 that comes while 12 is held (its predecessor not yet here)
    reaches no one before 12 does; with nothing held, such events go at once."""
    got: list[str] = []
    store = Store([11, 12, 14])  # 13 rolled back
    seq = sequencer_on(store, got.append, gap_wait=0.05)
    seq.start_at(10)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(seq.run)
        seq.after("typing")
        assert got == ["typing"]
        seq.offer(12, 11, "m12")
        seq.after("edit of 12")
        seq.after("read mark")
        assert got == ["typing"] and seq.held == 1
        seq.offer(11, 10, "m11")
        assert got == ["typing", "m11", "m12", "edit of 12", "read mark"]
        # The same when the gap is closed from the store.
        seq.offer(14, 13, "m14")
        seq.after("edit of 14")
        await trio.sleep(0.1)
        assert got[-2:] == ["m14", "edit of 14"]
        nursery.cancel_scope.cancel()


# --- frames that lie: the cluster's mark, but ids the store never committed ----------------

HUGE = 10**15


async def test_a_huge_id_that_does_not_chain_is_checked_against_the_store_not_delivered(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Taken as delivered, id 10**15 would make every real message look old: this node
    would deliver no chat again."""
    got: list[str] = []
    store = Store([11])
    seq = sequencer_on(store, got.append, gap_wait=0.05, source=lambda item: "node liar#1")
    seq.start_at(10)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(seq.run)
        seq.offer(HUGE, 5, "forged")
        assert got == [] and seq.last == 10
        seq.offer(11, 10, "bus 11")  # the chain goes on at once
        assert got == ["bus 11"]
        await trio.sleep(1)  # the claim checked, once, and dropped
        assert seq.last == 11 and seq.refuted == 1
        assert store.newest_reads == 1 and store.reads == []  # nothing else to read
        store.ids.append(12)
        seq.offer(12, 11, "bus 12")
        nursery.cancel_scope.cancel()
    assert got == ["bus 11", "bus 12"] and seq.held == 0
    assert "node liar#1 claims message 1000000000000000" in caplog.text


async def test_a_heartbeat_claiming_a_huge_last_reads_no_further_than_the_store(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    got: list[str] = []
    store = Store([11])
    seq = sequencer_on(store, got.append, gap_wait=0.05)
    seq.start_at(10)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(seq.run)
        seq.catch_up(HUGE, "node liar#1")
        await trio.sleep(1)
        assert got == ["m11"] and seq.last == 11  # what was committed, and no further
        assert store.reads == [(10, 11)] and store.newest_reads == 1  # not retried
        store.ids.append(12)
        seq.offer(12, 11, "bus 12")
        nursery.cancel_scope.cancel()
    assert got == ["m11", "bus 12"]
    assert "node liar#1 claims message 1000000000000000" in caplog.text


async def test_a_held_message_whose_predecessor_the_store_never_had_is_dropped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    got: list[str] = []
    store = Store([11])
    seq = sequencer_on(store, got.append, gap_wait=0.05)
    seq.start_at(10)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(seq.run)
        seq.offer(HUGE + 1, HUGE, "forged")
        await trio.sleep(1)
        assert got == ["m11"] and seq.last == 11 and seq.held == 0
        assert store.reads == [(10, 11)] and store.newest_reads == 1
        store.ids.append(12)
        seq.offer(12, 11, "bus 12")
        nursery.cancel_scope.cancel()
    assert got == ["m11", "bus 12"]


async def test_a_held_message_beyond_the_store_does_not_pass_once_the_gap_before_it_closes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """It names a real predecessor (11, which the bus lost): the store gives 11, and the
    forged one, next in its chain, must not pass with it."""
    got: list[str] = []
    store = Store([11])
    seq = sequencer_on(store, got.append, gap_wait=0.05)
    seq.start_at(10)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(seq.run)
        seq.offer(HUGE, 11, "forged")
        await trio.sleep(1)
        assert got == ["m11"] and seq.last == 11 and seq.held == 0
        store.ids.append(12)
        seq.offer(12, 11, "bus 12")
        nursery.cancel_scope.cancel()
    assert got == ["m11", "bus 12"]


async def test_a_message_that_chains_behind_last_is_read_from_the_store(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """No committed message names a predecessor before `last` (the one committed after
    `last` names it); such a claim is a lie or `last` is not a committed id (12 here,
    rolled back, which a lie made `last`): either way the store says what was."""
    got: list[str] = []
    store = Store([11, 13])
    seq = sequencer_on(store, got.append, gap_wait=0.05)
    seq.start_at(12)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(seq.run)
        seq.offer(13, 11, "bus 13")
        assert got == []
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert got == ["m13"] and store.reads == [(12, 13)] and seq.last == 13


async def test_an_exact_chain_to_an_id_never_committed_is_undone_when_idle(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The one path that believes the bus without asking (`prev_id == last`, every
    message's) lets a forged id through; the idle check brings `last` back to the store's
    newest within `check_wait`, and real messages pass again."""
    caplog.set_level(logging.WARNING, "chatd.cluster")
    got: list[str] = []
    store = Store([10])
    seq = sequencer_on(store, got.append, gap_wait=0.05, check_wait=2.0)
    seq.start_at(10)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(seq.run)
        seq.offer(HUGE, 10, "forged")
        assert seq.last == HUGE
        await trio.sleep(2.5)
        assert seq.last == 10 and seq.refuted == 1
        store.ids.append(11)
        seq.offer(11, 10, "bus 11")
        await trio.sleep(10)  # checks again: all is well
        nursery.cancel_scope.cancel()
    assert got == ["forged", "bus 11"] and seq.last == 11 and seq.refuted == 1
    assert "past the store's newest 10" in caplog.text


async def test_a_real_message_dropped_as_delivered_after_a_forged_chain_makes_the_check_early(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Only what the store gave comes twice; a message above what the store confirmed
    that looks delivered already says `last` may be a lie: checked within gap_wait, not
    check_wait. That one is lost (see `_check`); the next passes."""
    got: list[str] = []
    store = Store([10])
    seq = sequencer_on(store, got.append, gap_wait=0.05, check_wait=60.0)
    seq.start_at(10)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(seq.run)
        seq.offer(HUGE, 10, "forged")
        store.ids.append(11)
        seq.offer(11, 10, "bus 11")
        await trio.sleep(0.1)
        assert seq.last == 11 and seq.refuted == 1 and store.newest_reads == 1
        store.ids.append(12)
        seq.offer(12, 11, "bus 12")
        seq.offer(12, 11, "bus 12 again")  # a duplicate of one not confirmed: one check
        seq.offer(12, 11, "bus 12 again")
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert got == ["forged", "bus 12"] and seq.last == 12 and store.newest_reads == 2


async def test_a_message_committed_but_never_published_is_read_within_two_checks(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Its node died between commit and hooks (or its commit was answered as failed, yet
    applied): nothing chains behind it until the room's next message, so no gap shows.
    The store's newest at one idle check, still not delivered at the next, is read."""
    got: list[str] = []
    store = Store([10])
    seq = sequencer_on(store, got.append, gap_wait=0.05, check_wait=2.0)
    seq.start_at(10)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(seq.run)
        await trio.sleep(2.5)  # one check: nothing behind
        store.ids.append(11)  # committed; never on the bus
        await trio.sleep(2.0)  # the check that sees it
        assert got == [] and store.reads == []
        await trio.sleep(2.0)  # the next one reads it
        assert got == ["m11"] and seq.last == 11 and seq.filled == 1
        await trio.sleep(10)
        nursery.cancel_scope.cancel()
    assert got == ["m11"] and len(store.reads) == 1


async def test_a_message_the_bus_brings_between_two_checks_is_not_read_from_the_store(
    autojump_clock: trio.testing.MockClock,
) -> None:
    got: list[str] = []
    store = Store([10])
    seq = sequencer_on(store, got.append, gap_wait=0.05, check_wait=2.0)
    seq.start_at(10)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(seq.run)
        await trio.sleep(2.5)
        store.ids.append(11)  # committed, its frame still on the way at the next check
        await trio.sleep(2.0)
        seq.offer(11, 10, "bus 11")
        await trio.sleep(10)
        nursery.cancel_scope.cancel()
    assert got == ["bus 11"] and store.reads == []


async def test_a_long_catch_up_is_read_a_slice_at_a_time_without_waiting_between(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """After a long time off the bus, what was committed meanwhile is read FILL_IDS ids
    at a time (never all into memory, or to the clients, at once; the event loop free
    between slices), one slice straight after the other, and all of it in order."""
    got: list[str] = []
    n = 3 * sequencer.FILL_IDS + 500
    store = Store(list(range(1, n + 1)))
    seq = sequencer_on(store, got.append, gap_wait=0.05)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(seq.run)
        start = trio.current_time()
        seq.catch_up(n + 10, "a node's heartbeat, past the store's newest")
        while seq.last < n:
            await trio.sleep(0.001)
        took = trio.current_time() - start
        nursery.cancel_scope.cancel()
    assert got == [f"m{i}" for i in range(1, n + 1)]
    assert [upto - after for after, upto in store.reads] == [sequencer.FILL_IDS] * 3 + [500]
    assert took < 2 * seq.gap_wait  # the one before the first read, none between slices
    assert seq.refuted == 1  # the claim past the store's newest, once


async def test_a_bus_running_seconds_behind_is_not_overtaken_by_store_reads(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A backlog in this node's queue at RabbitMQ: every message comes 3 s after its
    commit, more than check_wait. The idle check sees the store ahead at every check,
    but `last` moves between checks: the bus is bringing them, and the store is not read
    (it was, for half the messages, when only the store's newest was compared)."""
    got: list[str] = []
    store = Store([10])
    seq = sequencer_on(store, got.append, gap_wait=0.05, check_wait=2.0)
    seq.start_at(10)

    async def late(i: int) -> None:
        await trio.sleep(3.0)
        seq.offer(i, i - 1, f"bus {i}")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(seq.run)
        for i in range(11, 311):  # 10 a second for 30 s
            store.ids.append(i)
            nursery.start_soon(late, i)
            await trio.sleep(0.1)
        await trio.sleep(10)
        nursery.cancel_scope.cancel()
    assert got == [f"bus {i}" for i in range(11, 311)]
    assert store.reads == [] and seq.filled == 0
