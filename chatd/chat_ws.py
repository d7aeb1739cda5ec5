"""The ticket WebSocket protocol at `/chat?ticket=…[&since=ID]`.

Close codes (documented in the README):
  1000 normal close          1001 server shutting down
  1002 ticket missing, bad query or Origin refused
  1003 ticket unknown, used or expired
  1009 frame above the transport limit, the larger of [chat] and [stomp]
       max_frame_bytes (frames above [chat] max_frame_bytes alone get an error reply)
  1011 unexpected server fault (the server carries on)
  4008 slow consumer: the connection's outbox filled up
"""

from __future__ import annotations

import logging
from urllib.parse import parse_qs

import orjson
import trio

from .asgi_ws import AsgiWebSocket, Disconnected, Receive, Scope, Send, header
from .auth import User, origin_allowed
from .events import Event, chat_shape
from .outbox import Outbox
from .service import ServiceError
from .state import ServerState
from .tickets import TicketError
from .validation import InvalidMessage, chat_message, id_of_digits, parse_json_object

log = logging.getLogger("chatd.chat")

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_TICKET_MISSING = 1002
CLOSE_TICKET_INVALID = 1003
CLOSE_SERVER_ERROR = 1011
CLOSE_SLOW_CONSUMER = 4008

_RESUME_PAGE = 500


def error_reply(code: str, message: str, **extra: object) -> str:
    return orjson.dumps({"type": "error", "code": code, "message": message, **extra}).decode()


class ChatConnection:
    """One `/chat` WebSocket. The reader handles what the client sends; the writer drains
    the outbox, so a slow client never blocks whoever publishes to its rooms."""

    protocol = "chat"

    def __init__(self, state: ServerState, user: User, ws: AsgiWebSocket) -> None:
        self.state = state
        self.user = user
        self.user_id = user.id
        self.ws = ws
        self.outbox: Outbox[Event | str] = Outbox(state.cfg.chat.outbox_messages)
        self.replayed_upto = 0
        self._close: tuple[int, str] | None = None
        self._abort = trio.CancelScope()

    # --- called by the hub and the service (never block) ----------------------------

    def offer_chat(self, event: Event) -> None:
        if not self.outbox.put(event):
            self.state.metrics.slow_consumer_disconnects += 1
            log.warning("user %s: slow consumer, closing", self.user_id)
            self.close(CLOSE_SLOW_CONSUMER, "slow consumer", flush=False)

    def close(self, code: int, reason: str, flush: bool = True) -> None:
        if self._close is None:
            self._close = (code, reason)
            self.outbox.close()
        if not flush:
            self._abort.cancel()

    def room_left(self, room_id: int) -> None:
        """Delivery follows membership, so there is nothing to undo here."""

    def reply(self, text: str) -> None:
        if not self.outbox.put(text):
            self.close(CLOSE_SLOW_CONSUMER, "slow consumer", flush=False)

    # --- tasks ------------------------------------------------------------------------

    async def run(self, since: int | None) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._read_loop, nursery.cancel_scope)
            await self._write_loop(since)
            nursery.cancel_scope.cancel()

    async def _write_loop(self, since: int | None) -> None:
        ws = self.ws
        try:
            with self._abort:
                if since is not None:
                    await self._replay(since)
                while True:
                    batch = await self.outbox.get_batch()
                    if not batch:
                        break
                    for item in batch:
                        if isinstance(item, str):
                            await ws.send_text(item)
                            continue
                        if item.message_id is not None and item.message_id <= self.replayed_upto:
                            continue
                        await ws.send_text(item.chat)  # type: ignore[arg-type]
        except Disconnected:
            return
        code, reason = self._close or (CLOSE_NORMAL, "")
        with trio.move_on_after(2):
            await ws.close(code, reason)

    async def _replay(self, since: int) -> None:
        """Stored messages after `since`, then live ones; live events already queued are
        skipped when their id was replayed, so the seam has no gap and no double."""
        state = self.state
        # A `since` beyond the newest message (a client that kept an id across a database
        # reset, say) means "from now on"; taken as is, it would mute every live message
        # with an id up to it.
        self.replayed_upto = min(since, await state.store.last_message_id())
        limit = state.cfg.chat.resume_max_messages
        sent = 0
        while sent < limit:
            want = min(_RESUME_PAGE, limit - sent)
            page = await state.store.messages_since(
                state.rooms.rooms_of(self.user_id), self.replayed_upto, want
            )
            for msg in page:
                # A room the user left while we were paging is no longer theirs to read.
                if state.rooms.is_member(msg.room_id, self.user_id):
                    await self.ws.send_text(orjson.dumps(chat_shape(msg)).decode())
                self.replayed_upto = msg.id
            sent += len(page)
            if len(page) < want:
                return
        self.reply(
            error_reply(
                "resume_truncated",
                f"only the first {limit} missed messages were replayed; page the rest"
                " with GET /chat/rooms/{id}/messages",
                lastId=self.replayed_upto,
            )
        )

    async def _read_loop(self, scope: trio.CancelScope) -> None:
        try:
            while True:
                data = await self.ws.receive()
                await self._handle(data)
        except Disconnected:
            pass
        except Exception:
            log.exception("user %s: unexpected error on /chat", self.user_id)
            self.close(CLOSE_SERVER_ERROR, "server error")
            return
        scope.cancel()

    async def _handle(self, data: str | bytes) -> None:
        state = self.state
        cfg = state.cfg.chat
        size = len(data.encode() if isinstance(data, str) else data)
        if size > cfg.max_frame_bytes:
            self.reply(
                error_reply("frame_too_large", f"frames are limited to {cfg.max_frame_bytes} bytes")
            )
            return
        try:
            out = chat_message(parse_json_object(data), cfg.max_content_chars)
            msg, created = await state.service.post(self.user, out, "chat")
        except (InvalidMessage, ServiceError) as exc:
            self.reply(error_reply(exc.code, exc.message))
            return
        if not created:
            # A retried clientMessageId publishes nothing; the sender still learns the
            # stored message (and its id) on this socket.
            self.reply(orjson.dumps(chat_shape(msg)).decode())


def _query(scope: Scope) -> dict[str, list[str]]:
    try:
        return parse_qs(scope.get("query_string", b"").decode("ascii"), keep_blank_values=True)
    except UnicodeDecodeError:
        return {}


async def serve_chat(state: ServerState, scope: Scope, receive: Receive, send: Send) -> None:
    ws = AsgiWebSocket(scope, receive, send)
    try:
        await ws.wait_connect()
    except Disconnected:
        return

    async def refuse(code: int, reason: str) -> None:
        await ws.accept()
        await ws.close(code, reason)

    if state.closing.is_set():
        await refuse(CLOSE_GOING_AWAY, "server shutting down")
        return
    if not origin_allowed(header(scope, b"origin"), state.cfg.auth.allowed_origins):
        state.metrics.auth_failures["origin"] += 1
        await refuse(CLOSE_TICKET_MISSING, "origin not allowed")
        return
    query = _query(scope)
    ticket = (query.get("ticket") or [""])[0]
    if not ticket:
        state.metrics.tickets_rejected["missing"] += 1
        await refuse(CLOSE_TICKET_MISSING, "ticket missing")
        return
    since: int | None = None
    if "since" in query:
        since = id_of_digits(query["since"][0])
        if since is None:
            await refuse(CLOSE_TICKET_MISSING, "since must be a non-negative integer")
            return
    try:
        user = state.tickets.redeem(ticket)
    except TicketError as exc:
        state.metrics.tickets_rejected[exc.reason] += 1
        await refuse(CLOSE_TICKET_INVALID, f"ticket {exc.reason}")
        return

    await ws.accept()
    conn = ChatConnection(state, user, ws)
    state.service.session_opened(conn)
    try:
        await conn.run(since)
    except Exception:
        # Last line of defence: one connection's fault never reaches the server.
        log.exception("user %s: /chat connection failed", user.id)
        with trio.move_on_after(1):
            await ws.close(CLOSE_SERVER_ERROR, "server error")
    finally:
        state.service.session_closed(conn)
