"""Who is connected to this process, and local fan-out to them.

`/chat` connections receive every room their user belongs to, so membership changes
apply to them with no bookkeeping here. STOMP subscriptions are explicit, keyed by topic
("room.7", "user.3", or a general broker destination).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, TypeGuard

import trio

from chatd.model import Event
from chatd.rooms import Rooms


class Session(Protocol):
    protocol: str
    user_id: int

    def close(self, code: int, reason: str) -> None: ...

    def room_left(self, room_id: int) -> None: ...


class ChatSession(Session, Protocol):
    # Asked for the events the ticket guide does not know (edits, deletions).
    edits: bool

    def offer_chat(self, event: Event) -> None: ...


class Subscription(Protocol):
    # Read-only: a property is covariant, so a protocol's subscription may name its own
    # kind of session (a plain attribute would be invariant and refuse StompSession).
    @property
    def session(self) -> Session: ...

    def offer(self, event: Event) -> None: ...


def _is_chat(session: Session) -> TypeGuard[ChatSession]:
    # A session says its protocol; only /chat sessions take every room of their user.
    return session.protocol == "chat"


class Hub:
    def __init__(self, rooms: Rooms) -> None:
        self.rooms = rooms
        self._sessions: dict[int, set[Session]] = {}
        self._chat: dict[int, set[ChatSession]] = {}
        self._topics: dict[str, set[Subscription]] = {}
        self.deliveries = 0
        self._empty = trio.Event()
        self._empty.set()

    # --- sessions -----------------------------------------------------------------

    def register(self, session: Session) -> bool:
        """Returns True when this is the user's first live session (they came online)."""
        if self._empty.is_set():
            self._empty = trio.Event()
        mine = self._sessions.setdefault(session.user_id, set())
        first = not mine
        mine.add(session)
        if _is_chat(session):
            self._chat.setdefault(session.user_id, set()).add(session)
        return first

    def unregister(self, session: Session) -> bool:
        """Returns True when the user has no live session left (they went offline)."""
        mine = self._sessions.get(session.user_id)
        if mine is None or session not in mine:
            return False
        mine.discard(session)
        chat = self._chat.get(session.user_id)
        if chat is not None:
            chat.discard(session)
            if not chat:
                del self._chat[session.user_id]
        if mine:
            return False
        del self._sessions[session.user_id]
        if not self._sessions:
            self._empty.set()
        return True

    async def wait_empty(self) -> None:
        await self._empty.wait()

    def sessions_of(self, user_id: int) -> list[Session]:
        return list(self._sessions.get(user_id, ()))

    def all_sessions(self) -> Iterator[Session]:
        for mine in list(self._sessions.values()):
            yield from list(mine)

    def count(self, protocol: str | None = None) -> int:
        return sum(1 for s in self.all_sessions() if protocol is None or s.protocol == protocol)

    # --- topics -------------------------------------------------------------------

    def subscribe(self, topic: str, sub: Subscription) -> None:
        self._topics.setdefault(topic, set()).add(sub)

    def unsubscribe(self, topic: str, sub: Subscription) -> None:
        subs = self._topics.get(topic)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._topics[topic]

    def wants_room(self, room_id: int) -> bool:
        """Whether anyone here hears of the room: a subscription to it, or a /chat
        connection of a member (a cluster node decodes only what someone here wants)."""
        if f"room.{room_id}" in self._topics:
            return True
        chat = self._chat
        return bool(chat) and not chat.keys().isdisjoint(self.rooms.members_of(room_id))

    def wants_topic(self, topic: str) -> bool:
        return topic in self._topics

    # --- delivery -----------------------------------------------------------------

    def deliver_room(self, room_id: int, event: Event) -> None:
        n = 0
        chat = self._chat
        if event.chat is not None and chat:
            # Members with a /chat connection here: the intersection runs in C and walks
            # the smaller side, so a big room with few /chat users (or none) costs little.
            for uid in chat.keys() & self.rooms.members_of(room_id):
                for conn in list(chat[uid]):
                    conn.offer_chat(event)
                    n += 1
        elif event.chat_opt_in is not None and chat:
            for uid in chat.keys() & self.rooms.members_of(room_id):
                for conn in list(chat[uid]):
                    if conn.edits:
                        conn.offer_chat(event)
                        n += 1
        n += self.deliver_topic(f"room.{room_id}", event)
        self.deliveries += n

    def deliver_user(self, user_id: int, event: Event) -> None:
        self.deliveries += self.deliver_topic(f"user.{user_id}", event)

    def deliver_topic(self, topic: str, event: Event) -> int:
        subs = self._topics.get(topic)
        if not subs:
            return 0
        for sub in list(subs):
            sub.offer(event)
        return len(subs)

    def close_all(self, code: int, reason: str) -> None:
        for s in self.all_sessions():
            s.close(code, reason)
