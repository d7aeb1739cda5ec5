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
