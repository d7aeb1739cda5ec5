"""The chat domain shared by every protocol: post, rooms, presence, typing, reads.

Protocols call these methods and translate `ServiceError` into their own error shape
(an HTTP status, a `{"type": "error"}` reply, a STOMP ERROR frame).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable

import trio

from chatd import events
from chatd.auth import Revocations
from chatd.broker import Broker, Control
from chatd.config import Config
from chatd.expiry import Expiry
from chatd.hub import Hub, Session
from chatd.model import ClientError, Outgoing, RoomRow, StoredMessage, User
from chatd.net.websocket import CLOSE_DISCONNECTED_BY_ADMIN, CLOSE_NORMAL, CLOSE_TOKEN_EXPIRED
from chatd.ops.metrics import Metrics
from chatd.ratelimit import RateLimiter
from chatd.rooms import Room, Rooms
from chatd.store.api import StoreAPI
from chatd.store.queries import Change

log = logging.getLogger("chatd.service")


class ServiceError(ClientError):
    status = 400


class Forbidden(ServiceError):
    status = 403


class NotFound(ServiceError):
    status = 404


class RateLimited(ServiceError):
    status = 429


def hidden_room(room_id: int) -> NotFound:
    """The one answer to a room that does not exist and to one the caller may not see, so
    that room ids cannot be enumerated (admin routes still tell the two apart)."""
    return NotFound("unknown_room", f"room {room_id} does not exist or you are not a member")


class ChatService:
    def __init__(
        self,
        cfg: Config,
        store: StoreAPI,
        rooms: Rooms,
        hub: Hub,
        broker: Broker,
        metrics: Metrics,
        clock: Callable[[], float] = trio.current_time,
        *,
        revocations: Revocations | None = None,
        wall_clock: Callable[[], float] = time.time,
        resyncs: bool = False,
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.rooms = rooms
        self.hub = hub
        self.broker = broker
        self.metrics = metrics
        self.limiter = RateLimiter(cfg.chat.rate_per_second, cfg.chat.rate_burst, clock)
        self._clock = clock
        self._typing: dict[tuple[int, int], float] = {}
        self._typing_wakeup = trio.Event()
        self.revocations = revocations if revocations is not None else Revocations()
        # Every session that has a deadline (its token's), on the wall clock: `run` it
        # for the server's life.
        self.expiry: Expiry[Session] = Expiry(self._expired, wall_clock)
        # A cluster node (`resyncs`) may miss a user's logout at another node while it is
        # off the bus: when each session opened (wall clock), to close on `resync` those
        # the logout would have. One node alone never misses one: nothing kept.
        self._wall_clock = wall_clock
        self._opened_at: dict[Session, float] | None = {} if resyncs else None
        broker.presence.on_change = self._presence_changed
        # While `resync` reads the store: the rooms changed meanwhile (see `_touched`).
        self._resync_touched: set[int] | None = None
        broker.on_control = self.apply_control

    def reconfigure(self, cfg: Config) -> None:
        self.cfg = cfg
        self.limiter.rate = cfg.chat.rate_per_second
        self.limiter.burst = float(cfg.chat.rate_burst)

    # --- access ---------------------------------------------------------------------

    def room_for_member(self, user: User, room_id: int) -> Room:
        room = self.rooms.get(room_id)
        if room is None or user.id not in room.members:
            raise hidden_room(room_id)
        return room

    def check_rate(self, user: User, route: str) -> None:
        if not self.limiter.allow(user.id):
            self.metrics.rate_limited[route] += 1
            raise RateLimited("rate_limited", "too many messages; slow down")

    # --- messages -------------------------------------------------------------------

    def admit(self, user: User, out: Outgoing, route: str) -> None:
        """The checks a message passes before it is stored: membership and rate."""
        self.metrics.messages_received += 1
        self.room_for_member(user, out.room_id)
        self.check_rate(user, route)

    async def post(self, user: User, out: Outgoing, route: str) -> tuple[StoredMessage, bool]:
        """Admit, store, then publish. Returns (message, created); a retried
        clientMessageId returns the stored message with created False and publishes
        nothing."""
        self.admit(user, out, route)
        (result,) = await self.store_admitted(user, [out])
        if isinstance(result, BaseException):
            raise result
        return result

    async def store_admitted(
        self,
        user: User,
        outs: list[Outgoing],
        on_retry: Callable[[StoredMessage], None] | None = None,
    ) -> list[tuple[StoredMessage, bool] | BaseException]:
        """Store messages `admit` passed, in order, waiting once for all; each is
        published from its commit. A retried clientMessageId publishes nothing; `on_retry`
        gets the stored message instead, at the same point of the commit, so a reply to
        the sender keeps its place among the batch's other messages."""
        return await self.store.append_messages(
            user.id,
            user.username,
            user.profile_image,
            outs,
            self.cfg.chat.idempotency_window_seconds,
            functools.partial(self._published, user.id, on_retry),
        )

    def _published(
        self,
        user_id: int,
        on_retry: Callable[[StoredMessage], None] | None,
        out: Outgoing,
        result: tuple[StoredMessage, bool],
    ) -> None:
        msg, created = result
        if not created:
            self.metrics.duplicates_suppressed += 1
            if on_retry is not None:
                on_retry(msg)
            return
        self.metrics.messages_stored += 1
        self.broker.publish_room(out.room_id, events.new_message(msg))
        # Sending ends typing, as every chat client shows it.
        if self._typing.pop((out.room_id, user_id), None) is not None:
            self.broker.publish_room(out.room_id, events.user_typing(out.room_id, user_id, False))

    async def history(
        self, user: User, room_id: int, before: int | None, limit: int
    ) -> list[StoredMessage]:
        self.room_for_member(user, room_id)
        return await self.store.history(room_id, before, limit)

    async def change_message(
        self, user: User, room_id: int, message_id: int, content: str | None
    ) -> StoredMessage:
        """Edit (`content`) or delete (None) a message: one's own, or anyone's for an admin
        (who need not be a member). Rate-limited like sending. The room hears
        `message_updated` or `message_deleted` from the commit."""
        if user.is_admin:
            if self.rooms.get(room_id) is None:
                raise hidden_room(room_id)
        else:
            self.room_for_member(user, room_id)
        self.check_rate(user, "edit")
        author = None if user.is_admin else user.id
        outcome, msg = await self.store.change_message(room_id, message_id, author, content)
        if outcome == Change.NOT_YOURS:
            raise Forbidden("not_your_message", "only its author or an admin can change a message")
        if msg is None:
            raise NotFound("unknown_message", f"message {message_id} is not in room {room_id}")
        event = events.message_updated(msg) if content is not None else events.message_deleted(msg)
        self.broker.publish_room(room_id, event)
        return msg

    async def room_summaries(
        self, user: User, room_ids: list[int]
    ) -> dict[int, tuple[int, StoredMessage | None]]:
        """Per room of the user's: unread (others' messages after their read mark) and
        the newest message."""
        return await self.store.room_summaries(user.id, room_ids)

    async def mark_read(self, user: User, room_id: int, message_id: int) -> str:
        self.room_for_member(user, room_id)
        msg = await self.store.get_message(message_id)
        if msg is None or msg.room_id != room_id:
            raise NotFound("unknown_message", f"message {message_id} is not in room {room_id}")
        read_at = await self.store.mark_read(room_id, user.id, message_id)
        self.broker.publish_room(
            room_id, events.message_read(room_id, message_id, user.id, read_at)
        )
        return read_at

    # --- rooms ----------------------------------------------------------------------

    async def create_room(self, name: str, public: bool, members: list[int]) -> Room:
        room_id = await self.store.create_room(name, public, members)
        room = Room(room_id, name, public, set(members))
        self.rooms.add_room(room)
        self._touched(room_id)
        await self.broker.ask({"op": "room_created", "room": _room_state(room)})
        for uid in room.members:
            self.broker.publish_user(
                uid, events.room_membership("room_joined", room.describe(), uid)
            )
        return room

    def _room(self, room_id: int) -> Room:
        room = self.rooms.get(room_id)
        if room is None:
            raise NotFound("unknown_room", f"room {room_id} does not exist")
        return room

    async def add_member(self, room_id: int, user_id: int) -> Room:
        room = self._room(room_id)
        if await self.store.add_member(room_id, user_id) or user_id not in room.members:
            self.rooms.add_member(room_id, user_id)
            self._touched(room_id)
            await self.broker.ask({"op": "member_added", "room": room_id, "user": user_id})
            self.broker.publish_user(
                user_id, events.room_membership("room_joined", room.describe(), user_id)
            )
        return room

    async def remove_member(self, room_id: int, user_id: int) -> Room:
        room = self._room(room_id)
        await self.store.remove_member(room_id, user_id)
        was_member = user_id in room.members
        self._member_removed(room_id, user_id)
        await self.broker.ask({"op": "member_removed", "room": room_id, "user": user_id})
        if was_member:
            self.broker.publish_user(
                user_id, events.room_membership("room_removed", room.describe(), user_id)
            )
        return room

    async def update_room(self, room_id: int, name: str | None, public: bool | None) -> Room:
        """An admin's rename or change of visibility; every member is told on their user
        destination (`room_updated`)."""
        room = self._room(room_id)
        await self.store.update_room(room_id, name, public)
        _update(room, name, public)
        self._touched(room_id)
        await self.broker.ask(
            {"op": "room_updated", "room": room_id, "name": name, "public": public}
        )
        for uid in sorted(room.members):
            self.broker.publish_user(
                uid, events.room_membership("room_updated", room.describe(), uid)
            )
        return room

    async def delete_room(self, room_id: int) -> Room:
        """An admin's: the room, its members, invites, read marks and messages go. Live
        members see it go exactly as on their removal (`room_removed`, and the room's
        subscriptions end). The room leaves memory before the store is written, so no
        message is admitted to it meanwhile; one admitted before is committed first (the
        writer keeps order) and deleted with the rest."""
        room = self._room(room_id)
        self.rooms.remove_room(room_id)
        self._touched(room_id)
        try:
            await self.store.delete_room(room_id)
        except BaseException:
            self.rooms.add_room(room)
            raise
        self._room_gone(room)
        await self.broker.ask({"op": "room_deleted", "room": room_id})
        described = room.describe()
        for uid in sorted(room.members):
            self.broker.publish_user(uid, events.room_membership("room_removed", described, uid))
        return room

    def _room_gone(self, room: Room) -> None:
        """A deleted room, out of memory already: its typing and its sessions end."""
        for key in [k for k in self._typing if k[0] == room.id]:
            del self._typing[key]
        for uid in sorted(room.members):
            for session in self.hub.sessions_of(uid):
                session.room_left(room.id)

    def _member_removed(self, room_id: int, user_id: int) -> None:
        self.rooms.remove_member(room_id, user_id)
        self._touched(room_id)
        for session in self.hub.sessions_of(user_id):
            session.room_left(room_id)

    async def invite(self, room_id: int, user_id: int) -> Room:
        room = self._room(room_id)
        await self.store.add_invite(room_id, user_id)
        self.rooms.invite(room_id, user_id)
        self._touched(room_id)
        await self.broker.ask({"op": "invited", "room": room_id, "user": user_id})
        self.broker.publish_user(
            user_id, events.room_membership("room_invited", room.describe(), user_id)
        )
        return room

    async def join(self, user: User, room_id: int) -> Room:
        room = self.rooms.get(room_id)
        if room is not None and user.id in room.members:
            return room
        # A public room is anyone's to see and join; a private one is as unknown to those
        # not invited as a room that does not exist.
        if room is None or not self.rooms.may_join(room_id, user.id):
            raise hidden_room(room_id)
        return await self.add_member(room_id, user.id)

    async def leave(self, user: User, room_id: int) -> Room:
        room = self.room_for_member(user, room_id)
        await self.remove_member(room_id, user.id)
        return room

    # --- presence -------------------------------------------------------------------

    def session_opened(self, session: Session, valid_until: float | None = None) -> None:
        """`valid_until`: when the credential that opened the session stops counting (wall
        clock); the session is closed then. None: never (an anonymous session)."""
        if valid_until is not None:
            self.expiry.add(session, valid_until)
        if self._opened_at is not None:
            self._opened_at[session] = self._wall_clock()
        if self.hub.register(session):
            self.broker.presence.local_up(session.user_id)

    def session_closed(self, session: Session) -> None:
        self.expiry.discard(session)
        if self._opened_at is not None:
            self._opened_at.pop(session, None)
        if self.hub.unregister(session):
            for room_id in list(self.rooms.rooms_of(session.user_id)):
                if self._typing.pop((room_id, session.user_id), None) is not None:
                    self.broker.publish_room(
                        room_id, events.user_typing(room_id, session.user_id, False)
                    )
            self.broker.presence.local_down(session.user_id)

    def _presence_changed(self, user_id: int, online: bool) -> None:
        """From the broker's presence: the user came online or went offline, anywhere.
        Every node works that out itself, so the news is delivered here only."""
        event = events.user_status_changed(user_id, "online" if online else "offline")
        for room_id in list(self.rooms.rooms_of(user_id)):
            self.hub.deliver_room(room_id, event)

    async def disconnect_user(
        self, user_id: int, protocol: str | None, code: int, reason: str
    ) -> int:
        """Close the user's sessions of `protocol` (None: of every protocol), on every
        node; how many were closed (in a cluster, as the other nodes answer)."""
        here = self._close_sessions(user_id, protocol, code, reason)
        answers = await self.broker.ask(
            {"op": "disconnect", "user": user_id, "protocol": protocol, "code": code,
             "reason": reason}
        )  # fmt: skip
        return here + sum(n for n in answers if isinstance(n, int))

    def _close_sessions(self, user_id: int, protocol: str | None, code: int, reason: str) -> int:
        n = 0
        for session in self.hub.sessions_of(user_id):
            if protocol is None or session.protocol == protocol:
                session.close(code, reason)
                n += 1
        return n

    async def throw_out(self, user_id: int, revoke_tokens: bool) -> int:
        """An admin's: close every session of the user, on every protocol; with
        `revoke_tokens`, refuse from now on every credential issued to them before now
        (JWTs, JWT passcodes, issued STOMP logins, the tickets bought with them). The
        revocation counts in memory before the sessions close, so no reconnect slips in
        while the store writes it; a failed write is the caller's error to answer."""
        if revoke_tokens:
            at = self.expiry.clock()
            self.revocations.revoke_tokens(user_id, at)
            self.broker.publish_control({"op": "revoke_tokens", "user": user_id, "at": at})
        n = await self.disconnect_user(
            user_id, None, CLOSE_DISCONNECTED_BY_ADMIN, "disconnected by an administrator"
        )
        if revoke_tokens:
            await self.store.revoke_tokens(user_id, at)
        return n

    async def revoke_logins(self, user_id: int, at: float) -> None:
        """`/chat-ws/disconnect`: the STOMP logins issued to the user before `at` are
        refused from now on, on every node (the caller has counted it here)."""
        self.broker.publish_control({"op": "revoke_logins", "user": user_id, "at": at})
        await self.store.revoke_logins(user_id, at)

    # --- other nodes ----------------------------------------------------------------

    def apply_control(self, message: Control) -> int | None:
        """What another node changed, applied to what this node holds in memory (the
        store has it already). Its users hear of it from the publications that follow."""
        op = message["op"]
        room = self.rooms.get(message.get("room", 0)) if op != "room_created" else None
        if room is not None:
            self._touched(room.id)
        user = int(message.get("user") or 0)
        if op == "room_created":
            state = message["room"]
            if self.rooms.get(state["id"]) is None:
                self._touched(state["id"])
                self.rooms.add_room(
                    Room(state["id"], state["name"], state["public"], set(state["members"]),
                         set(state["invited"]))
                )  # fmt: skip
        elif op == "member_added" and room is not None:
            self.rooms.add_member(room.id, user)
        elif op == "member_removed" and room is not None:
            self._member_removed(room.id, user)
        elif op == "invited" and room is not None:
            self.rooms.invite(room.id, user)
        elif op == "room_updated" and room is not None:
            _update(room, message.get("name"), message.get("public"))
        elif op == "room_deleted" and room is not None:
            self.rooms.remove_room(room.id)
            self._room_gone(room)
        elif op == "disconnect":
            return self._close_sessions(
                user, message.get("protocol"), message["code"], message["reason"]
            )
        elif op == "revoke_tokens":
            self.revocations.revoke_tokens(user, float(message["at"]))
        elif op == "revoke_logins":
            self.revocations.revoke_logins(user, float(message["at"]))
        return None

    async def resync(self) -> None:
        """After this node missed control messages (the bus was away): rooms, members,
        invites and revocations as the store has them; sessions leave the rooms their
        user left, and the users here get the room events they missed on their user
        destination. A room changed here or by a control message while the store was
        read is as memory has it: newer than what was read."""
        touched: set[int] = set()
        self._resync_touched = touched
        try:
            rows: list[RoomRow] = await self.store.rooms()
        finally:
            self._resync_touched = None
        rows = [row for row in rows if row.id not in touched]
        known = {row.id for row in rows}
        # The user events the missed control messages came with were lost with them: what
        # the users here would have been told, worked out from the difference.
        missed: list[tuple[int, str, Room]] = []
        for room in self.rooms.all():
            if room.id not in known and room.id not in touched:
                self.rooms.remove_room(room.id)
                self._room_gone(room)
                missed += [(uid, "room_removed", room) for uid in sorted(room.members)]
        for row in rows:
            held = self.rooms.get(row.id)
            if held is None:
                room = Room(row.id, row.name, row.public, set(row.members), set(row.invited))
                self.rooms.add_room(room)
                missed += [(uid, "room_joined", room) for uid in sorted(room.members)]
                missed += [(uid, "room_invited", room) for uid in sorted(room.invited)]
                continue
            changed = (held.name, held.public) != (row.name, row.public)
            _update(held, row.name, row.public)
            for uid in sorted(held.members - row.members):
                self._member_removed(held.id, uid)
                missed.append((uid, "room_removed", held))
            for uid in sorted(row.members - held.members):
                self.rooms.add_member(held.id, uid)
                missed.append((uid, "room_joined", held))
            missed += [(uid, "room_invited", held) for uid in sorted(row.invited - held.invited)]
            held.invited = set(row.invited)
            if changed:
                missed += [(uid, "room_updated", held) for uid in sorted(held.members)]
        for uid, kind, room in missed:
            self.hub.deliver_user(uid, events.room_membership(kind, room.describe(), uid))
        # Revocations made meanwhile (an admin's at another node, a user's logout): a
        # token or login refused there is refused here too. (Only at start does the
        # store have a loader; it opens its own connection, so off the loop.)
        revoked = await trio.to_thread.run_sync(self.store.load_revocations_sync)
        for user_id, (logins, tokens) in revoked.items():
            thrown_out = False
            if tokens is not None:
                # Not known here yet: an admin's throw-out whose disconnect this node
                # missed too; the user's sessions here end as they would have.
                thrown_out = not self.revocations.token_revoked(user_id, tokens - 0.001)
                self.revocations.revoke_tokens(user_id, tokens)
                if thrown_out:
                    self._close_sessions(
                        user_id, None, CLOSE_DISCONNECTED_BY_ADMIN,
                        "disconnected by an administrator",
                    )  # fmt: skip
            if logins is not None:
                known_at = self.revocations.logins_revoked_at(user_id)
                self.revocations.revoke_logins(user_id, logins)
                if not thrown_out and (known_at is None or logins > known_at):
                    # The user's own logout at another node, whose disconnect this node
                    # missed: the sessions it would have closed here end now.
                    self._close_opened_before(user_id, logins)

    def _close_opened_before(self, user_id: int, at: float) -> None:
        opened = self._opened_at or {}
        for session in self.hub.sessions_of(user_id):
            if opened.get(session, at) < at:
                session.close(CLOSE_NORMAL, "disconnected by request")

    def _touched(self, room_id: int) -> None:
        """A room changed in memory; a resync reading the store meanwhile leaves it so."""
        if self._resync_touched is not None:
            self._resync_touched.add(room_id)

    def _expired(self, session: Session) -> None:
        log.info(
            "user %s: the token of a %s session expired, closing", session.user_id, session.protocol
        )
        session.close(CLOSE_TOKEN_EXPIRED, "token expired")

    # --- typing ---------------------------------------------------------------------

    def typing(self, user: User, room_id: int, is_typing: bool) -> None:
        self.room_for_member(user, room_id)
        key = (room_id, user.id)
        if is_typing:
            was = key in self._typing
            self._typing[key] = self._clock() + self.cfg.chat.typing_timeout_seconds
            self._typing_wakeup.set()
            if was:
                return
        elif self._typing.pop(key, None) is None:
            return
        self.broker.publish_room(room_id, events.user_typing(room_id, user.id, is_typing))

    async def expire_typing(self) -> None:
        """Runs for the server's life: ends typing that nobody ended."""
        while True:
            if not self._typing:
                self._typing_wakeup = trio.Event()
                await self._typing_wakeup.wait()
                continue
            deadline = min(self._typing.values())
            with trio.move_on_at(deadline):
                self._typing_wakeup = trio.Event()
                await self._typing_wakeup.wait()
            now = self._clock()
            for key, until in list(self._typing.items()):
                if until <= now:
                    del self._typing[key]
                    room_id, user_id = key
                    self.broker.publish_room(room_id, events.user_typing(room_id, user_id, False))


def _room_state(room: Room) -> dict[str, object]:
    return {
        "id": room.id,
        "name": room.name,
        "public": room.public,
        "members": sorted(room.members),
        "invited": sorted(room.invited),
    }


def _update(room: Room, name: str | None, public: bool | None) -> None:
    if name is not None:
        room.name = name
    if public is not None:
        room.public = public
