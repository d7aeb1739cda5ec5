"""The bounded per-connection outbox and the in-memory room membership. No network."""

from __future__ import annotations

import trio
import trio.testing

from chatd.model import RoomRow
from chatd.net.outbox import Outbox
from chatd.rooms import Room, Rooms


async def test_outbox_is_bounded_and_never_blocks() -> None:
    box: Outbox[int] = Outbox(3)
    assert [box.put(i) for i in range(4)] == [True, True, True, False]
    assert len(box) == 3
    assert await box.get_batch() == [0, 1, 2]
    assert len(box) == 0
    assert box.put(9)
    assert await box.get_batch() == [9]


async def test_outbox_wakes_a_waiting_reader_and_ends_when_closed() -> None:
    box: Outbox[str] = Outbox(8)
    got: list[list[str]] = []

    async def reader() -> None:
        while batch := await box.get_batch():
            got.append(batch)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            box.put("a")
            box.put("b")
            await trio.testing.wait_all_tasks_blocked()
            box.put("c")
            box.close()
            # Closed: puts are accepted and dropped; what was queued is still drained.
            assert box.put("after close")
    assert got == [["a", "b"], ["c"]]


def test_rooms_membership_index() -> None:
    rooms = Rooms([RoomRow(1, "a", False, frozenset({1, 2})), RoomRow(2, "b", True, frozenset())])
    assert len(rooms) == 2
    assert rooms.rooms_of(1) == {1}
    assert rooms.is_member(1, 2) and not rooms.is_member(2, 2) and not rooms.is_member(9, 1)
    rooms.add_member(2, 1)
    assert rooms.rooms_of(1) == {1, 2}
    assert rooms.members_of(2) == {1}
    rooms.remove_member(1, 1)
    rooms.remove_member(2, 1)
    assert rooms.rooms_of(1) == set()
    rooms.remove_member(2, 1)  # not a member: harmless
    assert rooms.members_of(99) == set()
    rooms.add_room(Room(3, "c", False, {5}))
    assert rooms.get(3) is not None and rooms.get(3).describe() == {  # type: ignore[union-attr]
        "id": 3,
        "name": "c",
        "public": False,
        "members": [5],
    }


def test_invites_and_joining() -> None:
    rooms = Rooms(
        [RoomRow(1, "private", False, frozenset()), RoomRow(2, "open", True, frozenset())]
    )
    assert not rooms.may_join(1, 7)
    assert rooms.may_join(2, 7)
    assert not rooms.may_join(3, 7)
    rooms.invite(1, 7)
    assert rooms.may_join(1, 7)
    rooms.add_member(1, 7)
    assert rooms.get(1).invited == set()  # type: ignore[union-attr]


def test_outbox_counts_frames_and_bytes_not_items() -> None:
    box: Outbox[bytes] = Outbox(4, max_bytes=100)
    assert box.fits(3, 2)
    box.add(b"ab", size=2, frames=3)  # one item holding three frames (a corked block)
    assert not box.fits(2, 2)  # 5 frames > 4
    assert box.put(b"e", size=1)
    assert (len(box), box.frames, box.weight) == (2, 4, 3)
    assert not box.put(b"f", size=1)


def test_outbox_bytes_bound_takes_one_big_frame_when_empty() -> None:
    box: Outbox[bytes] = Outbox(100, max_bytes=10)
    assert box.put(b"x" * 50, size=50)  # alone: a frame bigger than the bound still goes
    assert not box.put(b"y", size=1)
    assert not box.fits(1, 1)


async def test_a_batch_taken_weighs_until_it_is_sent() -> None:
    box: Outbox[bytes] = Outbox(100, max_bytes=10)
    assert box.put(b"x" * 8, size=8)
    assert await box.get_batch() == [b"x" * 8]
    assert box.frames == 0
    assert not box.put(b"yyy", size=3)  # the 8 bytes being written still count
    box.sent(8)
    assert box.put(b"y" * 10, size=10)
    assert not box.put(b"z", size=1)


async def test_wait_space_waits_for_bytes_too() -> None:
    box: Outbox[bytes] = Outbox(100, max_bytes=100)
    box.put(b"x" * 80, size=80)
    done = trio.Event()

    async def producer() -> None:
        await box.wait_space(50, 50)
        done.set()

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(producer)
            await trio.testing.wait_all_tasks_blocked()
            assert not done.is_set()  # 1 frame is few, but 80 bytes are not under 50
            assert await box.get_batch() == [b"x" * 80]
            await trio.testing.wait_all_tasks_blocked()
            assert not done.is_set()  # taken, but not written yet
            box.sent(80)
    assert done.is_set()
