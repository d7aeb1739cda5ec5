"""The ticket WebSocket protocol at `/chat?ticket=…[&since=ID][&edits=1]`.

`edits=1` asks for edits and deletions of messages (`{"type": "message_updated",
"message": …}`, `{"type": "message_deleted", "roomId", "messageId", "deletedAt"}`) and for
`editedAt` on replayed messages; without it a connection gets exactly the ticket guide's
shapes. A message deleted before it is replayed is not replayed to anyone.

Close codes (documented in the README):
  1000 normal close          1001 server shutting down
  1002 ticket missing, bad query or Origin refused
  1003 ticket unknown, used or expired
  1009 frame over twice [chat] max_frame_bytes (frames over the limit but within
       twice it get an error reply and the connection stays open)
  1011 unexpected server fault (the server carries on)
  1013 the store cannot answer (PostgreSQL away): the ticket is still good, try again
  4001 the token the ticket was bought with expired (plus [auth] leeway_seconds)
  4003 an admin ended the user's sessions (POST /admin/users/{id}/disconnect)
  4008 slow consumer: the connection's outbox filled up
"""

from __future__ import annotations

import logging
from urllib.parse import parse_qs

import orjson
import trio

from chatd.auth import origin_allowed
from chatd.events import chat_shape
from chatd.model import Event, Outgoing, StoredMessage, User
from chatd.net import connections
from chatd.net import websocket as wsl
from chatd.net.connections import peer_address
from chatd.net.websocket import (
    CLOSE_GOING_AWAY,
    CLOSE_NORMAL,
    CLOSE_SERVER_ERROR,
    CLOSE_SLOW_CONSUMER,
    CLOSE_TOKEN_EXPIRED,
    CLOSE_TRY_AGAIN_LATER,
)
from chatd.net.ws_transport import Upgrade, WebSocketTransport, ws_end
from chatd.ops import logs
from chatd.service import ServiceError
from chatd.state import ServerState
from chatd.store import StoreUnavailable
from chatd.ticketws.tickets import TicketError
from chatd.validation import (
    InvalidMessage,
    chat_message,
    id_of_digits,
    parse_json_object,
)

log = logging.getLogger("chatd.chat")

# What two of the shared codes mean on /chat (the module docstring lists them all).
CLOSE_TICKET_MISSING = wsl.CLOSE_PROTOCOL_ERROR
CLOSE_TICKET_INVALID = wsl.CLOSE_UNSUPPORTED_DATA

_RESUME_PAGE = 500


def error_reply(code: str, message: str, **extra: object) -> str:
    return orjson.dumps({"type": "error", "code": code, "message": message, **extra}).decode()


def _chat_frame(event: Event) -> bytes:
    """The ticket protocol's frame for an event: built once, the same bytes for all."""
    data = event.cache.get("chat_ws")
    if data is None:
        text = event.chat if event.chat is not None else event.chat_opt_in
        data = event.cache["chat_ws"] = WebSocketTransport.text_frame(text.encode())  # type: ignore[union-attr]
    return data


class ChatConnection:
    """One `/chat` WebSocket. Its reader handles what the client sends; what the server
    sends goes through the transport's WireWriter, so a slow client never blocks whoever
    publishes to its rooms."""

    protocol = "chat"

    def __init__(
        self, state: ServerState, user: User, ws: WebSocketTransport, edits: bool = False
    ) -> None:
        self.state = state
        self.user = user
        self.user_id = user.id
        self.ws = ws
        self.edits = edits
        self.replayed_upto = 0
        # While replaying stored messages, live ones wait here (bounded like the outbox).
        self._held: list[Event] | None = None

    # --- called by the hub and the service (never block) ----------------------------

    def offer_chat(self, event: Event) -> None:
        held = self._held
        if held is not None:
            if len(held) < self.state.cfg.chat.outbox_messages:
                held.append(event)
                return
        elif event.message_id is not None and event.message_id <= self.replayed_upto:
            # The replay sent it already. The writer thread's commit is visible to the
            # reader before the loop runs its hooks, so a message the replay read can
            # be published after the replay has ended.
            return
        elif self.ws.out.offer(_chat_frame(event)):
            return
        self.state.metrics.slow_consumer_disconnects += 1
        log.warning("user %s: slow consumer, closing", self.user_id)
        self.close(CLOSE_SLOW_CONSUMER, "slow consumer", flush=False)

    def close(self, code: int, reason: str, flush: bool = True) -> None:
        if flush:
            self.ws.close(code, reason)
        else:
            self.ws.abort(code, reason)

    def room_left(self, room_id: int) -> None:
        """Delivery follows membership, so there is nothing to undo here."""

    def reply(self, text: str) -> None:
        if not self.ws.out.offer(WebSocketTransport.text_frame(text.encode())):
            self.close(CLOSE_SLOW_CONSUMER, "slow consumer", flush=False)

    # --- tasks ------------------------------------------------------------------------

    async def run(self, since: int | None) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._read_loop, nursery.cancel_scope)
            if since is not None:
                self._held = []
                nursery.start_soon(self._replay_then_live, since)
            # The writer stops through the nursery's scope: the connection ends with it.
            await self.ws.out.run(nursery.cancel_scope)
            nursery.cancel_scope.cancel()

    async def _replay_then_live(self, since: int) -> None:
        await self._replay(since)
        held, self._held = self._held or [], None
        for event in held:
            if event.message_id is None or event.message_id > self.replayed_upto:
                self.offer_chat(event)

    async def _replay(self, since: int) -> None:
        """Stored messages after `since`, then live ones; live events already queued are
        skipped when their id was replayed, so the seam has no gap and no double."""
        state = self.state
        self.replayed_upto = since
        limit = state.cfg.chat.resume_max_messages
        sent = 0
        while sent < limit:
            want = min(_RESUME_PAGE, limit - sent)
            page = await state.store.messages_since(
                state.rooms.rooms_of(self.user_id), self.replayed_upto, want
            )
            for msg in page:
                # A room the user left while we were paging is no longer theirs to read;
                # a message deleted since it was sent is no one's.
                if msg.deleted_at is None and state.rooms.is_member(msg.room_id, self.user_id):
                    shape = chat_shape(msg, edits=self.edits)
                    frame = WebSocketTransport.text_frame(orjson.dumps(shape))
                    await self.ws.out.wait_space()
                    if not self.ws.out.offer(frame):
                        self.close(CLOSE_SLOW_CONSUMER, "slow consumer", flush=False)
                        return
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
                if data is None:
                    break
                await self._handle([data, *self.ws.take_ready_messages()])
        except Exception:
            log.exception("user %s: unexpected error on /chat", self.user_id)
            self.close(CLOSE_SERVER_ERROR, "server error")
            return
        # The peer closed or went away: let the writer send our close frame, but do not
        # wait long for a peer that is gone.
        self.ws.close(CLOSE_NORMAL)
        await trio.sleep(2)
        scope.cancel()

    async def _handle(self, batch: list[bytes]) -> None:
        """The messages of one read, in order. Those admitted are stored together, with one
        wait and one commit; a refused one first finishes those before it, so every
        reply keeps the order of the messages. Handled one by one, a client sending
        faster than one commit's round trip was held to one message per commit."""
        admitted: list[Outgoing] = []
        for data in batch:
            try:
                out = self._admit(data)
            except (InvalidMessage, ServiceError) as exc:
                await self._store(admitted)
                admitted = []
                self.reply(error_reply(exc.code, exc.message))
                continue
            admitted.append(out)
        await self._store(admitted)

    def _admit(self, data: bytes) -> Outgoing:
        cfg = self.state.cfg.chat
        if len(data) > cfg.max_frame_bytes:
            raise InvalidMessage(
                "frame_too_large", f"frames are limited to {cfg.max_frame_bytes} bytes"
            )
        out = chat_message(parse_json_object(data), cfg.max_content_chars)
        self.state.service.admit(self.user, out, "chat")
        return out

    async def _store(self, admitted: list[Outgoing]) -> None:
        if not admitted:
            return
        # A retried clientMessageId publishes nothing; the sender still learns the stored
        # message (and its id), in its place among the echoes of the batch.
        results = await self.state.service.store_admitted(self.user, admitted, self._retried)
        for result in results:
            if isinstance(result, StoreUnavailable):
                # The disk, not the message: nothing of it was stored, and the same
                # message may be sent again later. The store logged why.
                self.reply(error_reply(result.code, result.message))
            elif isinstance(result, BaseException):
                # The others of the batch are stored and published; this connection
                # ends with 1011, as any other store failure on /chat does.
                raise result

    def _retried(self, msg: StoredMessage) -> None:
        self.reply(orjson.dumps(chat_shape(msg)).decode())


def _query(path: str) -> dict[str, list[str]]:
    return parse_qs(path.partition("?")[2], keep_blank_values=True)


_Refusal = tuple[int, str, "str | None"]  # close code, reason, what the log says


async def _admit(
    state: ServerState,
    ws: WebSocketTransport,
    request: wsl.Request,
    query: dict[str, list[str]],
    newest: int,
) -> tuple[_Refusal | None, tuple[ChatConnection, int | None] | None]:
    """The upgrade's checks, in the guide's order. Either why it is refused, or its
    connection, already opened in the service (it hears the rooms from now on), and the
    `since` it resumes from."""
    cfg = state.cfg
    if state.closing.is_set():
        return (CLOSE_GOING_AWAY, "server shutting down", None), None
    headers = request.headers
    if not origin_allowed(headers.get("origin"), cfg.auth.allowed_origins, headers.get("host")):
        state.metrics.auth_failures["origin"] += 1
        origin = headers.get("origin")
        return (CLOSE_TICKET_MISSING, "origin not allowed", f"origin {origin!r} not allowed"), None
    ticket = (query.get("ticket") or [""])[0]
    if not ticket:
        state.metrics.tickets_rejected["missing"] += 1
        return (CLOSE_TICKET_MISSING, "ticket missing", None), None
    edits_flag = (query.get("edits") or ["0"])[0]
    if edits_flag not in ("0", "1"):
        return (CLOSE_TICKET_MISSING, "edits must be 0 or 1", None), None
    since: int | None = None
    if "since" in query:
        since = id_of_digits(query["since"][0])
        if since is None:
            return (CLOSE_TICKET_MISSING, "since must be a non-negative integer", None), None
    try:
        identity = await state.tickets.claim_async(ticket)
    except TicketError as exc:
        state.metrics.tickets_rejected[exc.reason] += 1
        return (CLOSE_TICKET_INVALID, f"ticket {exc.reason}", None), None
    user = identity.user
    # The token the ticket was bought with: revoked by an admin since (1003, as a ticket
    # that is no longer good), or expired since (4001, as the session would have been).
    if state.revocations.token_revoked(user.id, identity.issued_at):
        state.metrics.tickets_rejected["revoked"] += 1
        return (CLOSE_TICKET_INVALID, "ticket revoked", None), None
    if identity.valid_until <= state.service.expiry.clock():
        return (CLOSE_TOKEN_EXPIRED, "token expired", None), None
    if state.closing.is_set():  # while the ticket was being claimed
        return (CLOSE_GOING_AWAY, "server shutting down", None), None
    if since is not None:
        # A `since` beyond the newest message (a client that kept an id across a database
        # reset, say) means "from now on"; taken as is, it would mute every live message
        # with an id up to it. The newest id was read before the connection starts hearing
        # live messages, so any message after it is replayed or heard live.
        since = min(since, newest)
    conn = ChatConnection(state, user, ws, edits=edits_flag == "1")
    state.service.session_opened(conn, identity.valid_until)
    return None, (conn, since)


async def serve_chat(state: ServerState, stream: trio.SocketStream, upgrade: Upgrade) -> None:
    """A `/chat` upgrade from the front door: check, accept, then run the connection.
    Refusals are a completed handshake and a close code, as the guide's clients expect."""
    cfg = state.cfg
    request, leftover = upgrade.take()
    parser = wsl.FrameParser(2 * cfg.chat.max_frame_bytes)
    parser.receive_data(leftover)
    del leftover
    ws = WebSocketTransport(stream, parser, cfg.chat.outbox_messages, cfg.chat.outbox_bytes)
    query = _query(request.path)
    key = request.key
    # Who it is for the logs: behind a trusted proxy, the client the proxy forwarded.
    client = state.connections.client_address(
        peer_address(stream), request.headers.get("x-forwarded-for", "").split(",")
    )
    # `since` beyond the newest message means "from now on", and now is before the client
    # sees the socket open: a message it (or anyone) sends after that has a newer id.
    resuming = "since" in query and not state.closing.is_set()
    # Everything is checked, and the session heard by the hub, before the handshake is
    # answered: a message committed once the client sees the socket open reaches it (the
    # ticket's claim is a store round trip in a cluster; a session opened after the answer
    # missed what was sent meanwhile). A refusal is still a completed handshake and a close
    # code, as the guide's clients expect.
    try:
        newest = await state.store.last_message_id() if resuming else 0
        refusal, ready = await _admit(state, ws, request, query, newest)
    except StoreUnavailable:
        # PostgreSQL away (the claim and the newest id are round trips to it): a refusal
        # like the others, to try again; the ticket was not used. The store logged why.
        refusal, ready = (CLOSE_TRY_AGAIN_LATER, "store unavailable, try again later", None), None
    except Exception:
        # Any other fault of the checks is the server's (1011), still a completed
        # handshake: the client is told, and the connection's task ends here.
        log.exception("/chat: the upgrade's checks failed")
        refusal, ready = (CLOSE_SERVER_ERROR, "server error", None), None
    del request
    try:
        await stream.send_all(wsl.accept_response(key, None))
    except BaseException as exc:
        if ready is not None:
            state.service.session_closed(ready[0])
        if not isinstance(exc, (trio.BrokenResourceError, trio.ClosedResourceError)):
            raise
        await stream.aclose()
        return
    if refusal is not None:
        code, reason, logged = refusal
        if code != CLOSE_GOING_AWAY:  # shutting down refuses no one in particular
            logs.refused("/chat", logged or reason, client)
        ws.close(code, reason)
        with trio.move_on_after(2):
            await ws.out.run()
        await ws.aclose(drain=not state.closing.is_set())
        return
    assert ready is not None
    conn, since = ready
    user = conn.user
    opened = trio.current_time()
    try:
        await conn.run(since)
    except Exception:
        # Last line of defence: one connection's fault never reaches the server.
        log.exception("user %s: /chat connection failed", user.id)
        ws.close(CLOSE_SERVER_ERROR, "server error")
        with trio.move_on_after(1):
            await ws.out.run()
    finally:
        state.service.session_closed(conn)
        # The drain of aclose (a client still sending reads its close frame) takes
        # ANSWER_SECONDS at most.
        with trio.CancelScope(shield=True), trio.move_on_after(connections.ANSWER_SECONDS + 1):
            await ws.aclose(drain=not state.closing.is_set())
        logs.connection_closed(
            "/chat", "websocket", user.id, client, trio.current_time() - opened, ws_end(ws)
        )
