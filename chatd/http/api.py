"""The HTTP API on chatd.http.asgi: tickets, rooms, history, admin, health.

Every error is JSON, `{"error": code, "message": text}`, with a status a client can act on.
"""

from __future__ import annotations

import logging
from typing import Any

from chatd.auth import AuthError, origin_allowed
from chatd.events import chat_shape
from chatd.http import chatws_api
from chatd.http.asgi import App, HTTPError, Request, Response, json_response
from chatd.model import User
from chatd.service import ServiceError
from chatd.state import ServerState
from chatd.ticketws.tickets import TooManyTickets
from chatd.validation import MAX_ID, InvalidMessage, id_of_digits, room_id_of

log = logging.getLogger("chatd.http")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def error_response(status: int, code: str, message: str) -> Response:
    resp = json_response({"error": code, "message": message}, status)
    if status == 401:
        resp.headers["WWW-Authenticate"] = 'Bearer realm="chatd"'
    return resp


def bearer_token(request: Request) -> str | None:
    auth = request.header("Authorization") or ""
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def create_app(state: ServerState) -> App:
    # The preflight hook below answers OPTIONS on every path, so a 405 allows it too.
    app = App(state.cfg.http.max_body_bytes, extra_allowed=("OPTIONS",))

    def authenticate(request: Request, allow_access_token: bool = True) -> User:
        token = bearer_token(request)
        if token is None and allow_access_token:
            token = request.header("accessToken")
        try:
            return state.auth.verify(token)
        except AuthError as exc:
            state.metrics.auth_failures[exc.reason] += 1
            # The reason only: the token itself never goes to the log.
            log.info("refused %s %s: %s", request.method, request.path, exc.reason)
            raise ApiError(401, "unauthorized", exc.message) from None

    def admin(request: Request) -> User:
        user = authenticate(request, allow_access_token=False)
        if not user.is_admin:
            raise ApiError(403, "forbidden", "an admin token is required")
        return user

    async def json_body(request: Request) -> dict[str, Any]:
        body = await request.json()
        if not isinstance(body, dict):
            raise ApiError(400, "bad_json", "the request body must be a JSON object")
        return body

    @app.errorhandler(ApiError)
    async def _api_error(exc: ApiError) -> Response:
        return error_response(exc.status, exc.code, exc.message)

    @app.errorhandler(ServiceError)
    async def _service_error(exc: ServiceError) -> Response:
        return error_response(exc.status, exc.code, exc.message)

    @app.errorhandler(InvalidMessage)
    async def _invalid(exc: InvalidMessage) -> Response:
        return error_response(400, exc.code, exc.message)

    @app.errorhandler(404)
    async def _not_found(_exc: HTTPError) -> Response:
        return error_response(404, "not_found", "no such endpoint")

    @app.errorhandler(405)
    async def _bad_method(_exc: HTTPError) -> Response:
        return error_response(405, "method_not_allowed", "method not allowed on this endpoint")

    @app.errorhandler(408)
    async def _too_slow(_exc: HTTPError) -> Response:
        return error_response(408, "body_timeout", "the request body took too long")

    @app.errorhandler(413)
    async def _too_large(_exc: HTTPError) -> Response:
        return error_response(413, "body_too_large", "the request body is too large")

    # An unexpected fault is logged and answered 500 `server_error` by chatd.http.asgi itself.

    # --- CORS -------------------------------------------------------------------------

    @app.before_request
    async def _preflight(request: Request) -> Response | None:
        if request.method != "OPTIONS":
            return None
        origin = request.header("Origin")
        if origin is None or not origin_allowed(origin, state.cfg.auth.allowed_origins):
            return error_response(403, "origin_not_allowed", "origin not allowed")
        resp = Response(b"", 204)
        resp.headers["Access-Control-Allow-Origin"] = origin
        resp.headers["Access-Control-Allow-Methods"] = "GET, POST, DELETE, OPTIONS"
        resp.headers["Access-Control-Allow-Headers"] = (
            request.header("Access-Control-Request-Headers")
            or "accessToken, Authorization, Content-Type"
        )
        resp.headers["Access-Control-Max-Age"] = str(state.cfg.http.cors_max_age_seconds)
        resp.headers["Vary"] = "Origin"
        return resp

    @app.after_request
    async def _cors(request: Request, resp: Response) -> Response:
        origin = request.header("Origin")
        if origin is not None and origin_allowed(origin, state.cfg.auth.allowed_origins):
            resp.headers["Access-Control-Allow-Origin"] = origin
            resp.headers["Vary"] = "Origin"
        return resp

    # --- tickets ----------------------------------------------------------------------

    @app.post("/chat/ticket")
    async def issue_ticket(request: Request) -> Response:
        user = authenticate(request)
        try:
            ticket = state.tickets.issue(user)
        except TooManyTickets:
            state.metrics.tickets_rejected["too_many"] += 1
            raise ApiError(429, "too_many_tickets", "too many unused tickets; use one") from None
        state.metrics.tickets_issued += 1
        return json_response({"ticket": ticket, "expiresIn": round(state.tickets.ttl)})

    # --- rooms and history --------------------------------------------------------------

    @app.get("/chat/rooms")
    async def my_rooms(request: Request) -> Response:
        user = authenticate(request)
        rooms = [state.rooms.get(rid) for rid in sorted(state.rooms.rooms_of(user.id))]
        return json_response({"rooms": [r.describe() for r in rooms if r is not None]})

    @app.get("/chat/rooms/<int:room_id>/messages")
    async def history(request: Request, room_id: int) -> Response:
        user = authenticate(request)
        before = _int_arg(request, "before", None, minimum=1)
        limit = _int_arg(request, "limit", 50, minimum=1)
        limit = min(limit or 50, state.cfg.chat.history_max_limit)
        msgs = await state.service.history(user, room_id, before, limit)
        next_before = msgs[-1].id if len(msgs) == limit else None
        return json_response({"messages": [chat_shape(m) for m in msgs], "nextBefore": next_before})

    # --- admin ------------------------------------------------------------------------

    @app.post("/admin/rooms")
    async def create_room(request: Request) -> Response:
        admin(request)
        body = await json_body(request)
        name = body.get("name")
        if not isinstance(name, str) or not name.strip() or len(name) > 200:
            raise ApiError(400, "bad_name", "name must be a non-empty string of at most 200")
        members = body.get("members", [])
        if not isinstance(members, list):
            raise ApiError(400, "bad_members", "members must be a list of user ids")
        try:
            member_ids = [room_id_of(m) for m in members]
        except InvalidMessage:
            raise ApiError(400, "bad_members", "members must be positive integer ids") from None
        public = body.get("public", False)
        if not isinstance(public, bool):
            raise ApiError(400, "bad_public", "public must be true or false")
        room = await state.service.create_room(name.strip(), public, member_ids)
        return json_response(room.describe(), 201)

    @app.get("/admin/rooms/<int:room_id>")
    async def get_room(request: Request, room_id: int) -> Response:
        admin(request)
        room = state.rooms.get(room_id)
        if room is None:
            raise ApiError(404, "unknown_room", f"room {room_id} does not exist")
        return json_response(room.describe())

    async def _user_id_body(request: Request) -> int:
        body = await json_body(request)
        try:
            return room_id_of(body.get("userId"))
        except InvalidMessage:
            raise ApiError(400, "bad_user_id", "userId must be a positive integer") from None

    @app.post("/admin/rooms/<int:room_id>/members")
    async def add_member(request: Request, room_id: int) -> Response:
        admin(request)
        room = await state.service.add_member(room_id, await _user_id_body(request))
        return json_response(room.describe())

    @app.delete("/admin/rooms/<int:room_id>/members/<int:user_id>")
    async def remove_member(request: Request, room_id: int, user_id: int) -> Response:
        admin(request)
        if user_id > MAX_ID:
            raise ApiError(400, "bad_user_id", "userId must be a positive integer")
        room = await state.service.remove_member(room_id, user_id)
        return json_response(room.describe())

    @app.post("/admin/rooms/<int:room_id>/invites")
    async def invite(request: Request, room_id: int) -> Response:
        admin(request)
        user_id = await _user_id_body(request)
        room = await state.service.invite(room_id, user_id)
        return json_response({"roomId": room.id, "invited": user_id})

    chatws_api.register(app, state, authenticate, json_body)

    # --- health -----------------------------------------------------------------------

    @app.get("/healthz")
    async def healthz(_request: Request) -> Response:
        return json_response({"status": "ok"})

    @app.get("/readyz")
    async def readyz(_request: Request) -> Response:
        ok = state.ready and not state.closing.is_set()
        if ok:
            try:
                await state.store.write(lambda conn: conn.execute("SELECT 1").fetchone())
            except Exception as exc:
                log.warning("readiness: store not writable: %s", exc)
                ok = False
        return json_response({"status": "ready" if ok else "not_ready"}, 200 if ok else 503)

    return app


def _int_arg(request: Request, name: str, default: int | None, minimum: int) -> int | None:
    raw = request.arg(name)
    if raw is None or raw == "":
        return default
    value = id_of_digits(raw)
    if value is None or value < minimum:
        raise ApiError(400, f"bad_{name}", f"{name} must be an integer of at least {minimum}")
    return value
