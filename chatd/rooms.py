"""Room membership held in memory for the checks on every message; SQLite is the truth."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from chatd.model import RoomRow


@dataclass(slots=True)
class Room:
    id: int
    name: str
    public: bool
    members: set[int] = field(default_factory=set)
    invited: set[int] = field(default_factory=set)

    def describe(self) -> dict[str, object]:
        return {
            "id": self.id,
            "name": self.name,
            "public": self.public,
            "members": sorted(self.members),
        }


class Rooms:
    def __init__(self, rows: Iterable[RoomRow] = ()) -> None:
        self._rooms: dict[int, Room] = {}
        self._by_user: dict[int, set[int]] = {}
        for row in rows:
            self.add_room(Room(row.id, row.name, row.public, set(row.members), set(row.invited)))

    def __len__(self) -> int:
        return len(self._rooms)

    def all(self) -> list[Room]:
        """Every room, by id."""
        return [self._rooms[rid] for rid in sorted(self._rooms)]

    def get(self, room_id: int) -> Room | None:
        return self._rooms.get(room_id)

    def add_room(self, room: Room) -> None:
        self._rooms[room.id] = room
        for uid in room.members:
            self._by_user.setdefault(uid, set()).add(room.id)

    def remove_room(self, room_id: int) -> Room | None:
        room = self._rooms.pop(room_id, None)
        if room is not None:
            for uid in room.members:
                mine = self._by_user.get(uid)
                if mine is not None:
                    mine.discard(room_id)
                    if not mine:
                        del self._by_user[uid]
        return room

    def is_member(self, room_id: int, user_id: int) -> bool:
        room = self._rooms.get(room_id)
        return room is not None and user_id in room.members

    def rooms_of(self, user_id: int) -> set[int]:
        return self._by_user.get(user_id, set())

    def members_of(self, room_id: int) -> set[int]:
        room = self._rooms.get(room_id)
        return room.members if room is not None else set()

    def add_member(self, room_id: int, user_id: int) -> None:
        room = self._rooms[room_id]
        room.members.add(user_id)
        room.invited.discard(user_id)
        self._by_user.setdefault(user_id, set()).add(room_id)

    def remove_member(self, room_id: int, user_id: int) -> None:
        room = self._rooms[room_id]
        room.members.discard(user_id)
        mine = self._by_user.get(user_id)
        if mine is not None:
            mine.discard(room_id)
            if not mine:
                del self._by_user[user_id]

    def invite(self, room_id: int, user_id: int) -> None:
        self._rooms[room_id].invited.add(user_id)

    def may_join(self, room_id: int, user_id: int) -> bool:
        room = self._rooms.get(room_id)
        return room is not None and (room.public or user_id in room.invited)
