"""What the service and the protocols ask of a store, whichever database is behind it:
SQLite (`chatd.store.engine.Store`, the default) or PostgreSQL
(`chatd.store.postgres.PgStore`, cluster mode). The store contract tests
(tests/test_store_contract.py) hold both to the same behaviour.

Every async method may raise `StoreUnavailable` (the database cannot take the operation
now, for a reason of the machine's: answered 503 `store_unavailable`) or `StoreClosed`
(after `aclose`). A write's commit hooks run in the trio thread right after its commit,
in commit order, before the waiting task resumes: whatever they publish is durable, and
goes out in the order it was stored.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from chatd.model import Outgoing, RoomRow, StoredMessage


class StoreAPI(Protocol):
    def set_commit_observer(self, fn: Callable[[float, int], None]) -> None:
        """`fn(seconds, operations)` after each commit (from any thread)."""

    def set_hooks_scope(
        self, scope: Callable[[], contextlib.AbstractContextManager[None]]
    ) -> None:
        """A context the commit hooks of one batch run in together."""

    async def aclose(self) -> None:
        """Finish every queued write, then close."""

    async def writable(self) -> str | None:
        """None when a write can be committed now, else why not (for /readyz)."""

    # --- rooms, members, invites ------------------------------------------------------

    def load_rooms_sync(self) -> list[RoomRow]: ...

    async def rooms(self) -> list[RoomRow]:
        """Every room as `load_rooms_sync` loads them, read while the server runs."""

    async def create_room(self, name: str, public: bool, members: Iterable[int]) -> int:
        """The new room's id."""

    async def add_member(self, room_id: int, user_id: int) -> bool:
        """False when the user was a member already."""

    async def remove_member(self, room_id: int, user_id: int) -> bool:
        """False when the user was not a member."""

    async def update_room(self, room_id: int, name: str | None, public: bool | None) -> None:
        ...

    async def delete_room(self, room_id: int) -> int:
        """The room, its members, invites, read marks and messages; the messages deleted.
        Message ids are never reused."""

    async def add_invite(self, room_id: int, user_id: int) -> None: ...

    # --- revocations ------------------------------------------------------------------

    def load_revocations_sync(self) -> dict[int, tuple[float | None, float | None]]:
        """By user: (issued STOMP logins revoked before, every token revoked before)."""

    async def revoke_logins(self, user_id: int, at: float) -> None: ...

    async def revoke_tokens(self, user_id: int, at: float) -> None: ...

    # --- messages ---------------------------------------------------------------------

    async def append_messages(
        self,
        user_id: int,
        username: str,
        profile_image: str | None,
        messages: Sequence[Outgoing],
        idempotency_window: float,
        on_commit: Callable[[Outgoing, tuple[StoredMessage, bool]], None] | None = None,
    ) -> list[tuple[StoredMessage, bool] | BaseException]:
        """Store one sender's messages in order, each its own operation; per message,
        (message, created) or its error. A client message id this user used in the room
        within `idempotency_window` seconds returns the earlier message, created False.
        `on_commit(new, result)` runs after the commit, in commit order."""

    async def history(self, room_id: int, before: int | None, limit: int) -> list[StoredMessage]:
        """A room's messages with ids below `before` (all when None), newest first."""

    async def messages_since(
        self, room_ids: Iterable[int], since: int, limit: int
    ) -> list[StoredMessage]:
        """Messages after id `since` in any of the rooms, oldest first."""

    async def last_message_id(self) -> int:
        """The newest message id, 0 when there is none."""

    async def get_message(self, message_id: int) -> StoredMessage | None: ...

    async def change_message(
        self, room_id: int, message_id: int, user_id: int | None, content: str | None
    ) -> tuple[str, StoredMessage | None]:
        """Edit (`content`) or delete (None); a `chatd.store.queries.Change` outcome."""

    async def room_summaries(
        self, user_id: int, room_ids: Sequence[int]
    ) -> dict[int, tuple[int, StoredMessage | None]]:
        """Per room: messages by others after the user's read mark, and the newest."""

    async def mark_read(self, room_id: int, user_id: int, message_id: int) -> str:
        """Move the read mark forward (never back); the time it was set."""
