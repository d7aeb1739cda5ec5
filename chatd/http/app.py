"""The HTTP API's app on quart-trio: config, CORS hooks, error replies, health checks.

The routes are blueprints: chatd.http.api (tickets, rooms, admin) and chatd.http.chatws_api
(/chat-ws/*). hypercorn serves the app behind chatd's front door (chatd.net.front).

Every error is JSON, `{"error": code, "message": text}`, with a status a client can act on:
a ClientError raised anywhere under a handler is answered with its code and status (401
with WWW-Authenticate), and werkzeug's HTTP errors (404, 405 with Allow, 408, 413, and the
500 of an unexpected fault, which Quart logs with its traceback) take the same shape.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import trio
from quart import Response, request
from quart.json.provider import JSONProvider
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.routing import BaseConverter, ValidationError

from chatd.auth import origin_allowed
from chatd.http.api import api
from chatd.http.chatws_api import chatws
from chatd.http.context import STATE_KEY, client_address, server_state
from chatd.http.web import web
from chatd.model import ClientError
from chatd.ops import logs
from chatd.state import ServerState

log = logging.getLogger("chatd.http")

# How long a handler waits for the rest of a request body before answering 408.
BODY_TIMEOUT_SECONDS = 60.0
# How long an answer waits for the rest of a body no handler read (see _AfterTheBody).
UNREAD_BODY_SECONDS = 10.0

# werkzeug's HTTP errors as chatd names them; any other status gets a generic pair.
_HTTP_ERRORS = {
    404: ("not_found", "no such endpoint"),
    405: ("method_not_allowed", "method not allowed on this endpoint"),
    408: ("body_timeout", "the request body took too long"),
    413: ("body_too_large", "the request body is too large"),
    500: ("server_error", "unexpected server error"),
}


class _OrjsonProvider(JSONProvider):
    """Handlers return dicts; they go out as UTF-8 JSON, keys in insertion order, with a final
    newline (what Quart's own provider writes, less the \\u escapes and faster)."""

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        return orjson.dumps(obj).decode()

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return orjson.loads(s)

    def response(self, *args: Any, **kwargs: Any) -> Response:
        obj = self._prepare_response_obj(args, kwargs)
        return Response(
            orjson.dumps(obj, option=orjson.OPT_APPEND_NEWLINE), 200, None, "application/json"
        )


class _AsciiInt(BaseConverter):
    """`<int:...>` of ASCII digits only. werkzeug's own matches `\\d+`, any Unicode digit,
    and int() reads them, so `/chat/rooms/٣/messages` would be room 3."""

    regex = r"[0-9]+"
    part_isolating = True

    def to_python(self, value: str) -> int:
        try:
            return int(value)
        except ValueError:  # past int()'s 4300 digits: no such path, not a fault
            raise ValidationError from None

    def to_url(self, value: Any) -> str:
        return str(int(value))


Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
# hypercorn's typed scopes and events are these dicts; Quart's asgi_app takes them.
AsgiApp = Callable[..., Awaitable[None]]


class _AfterTheBody:
    """ASGI middleware (Quart's way to wrap `app.asgi_app`): the end of an answer waits for
    the end of the request body, and is not cut short by quart-trio.

    hypercorn recycles a connection for its next request at the end of an answer only if the
    request body was complete by then, and closes it otherwise. So when no handler read the
    body, the end waits for it (meanwhile quart-trio goes on reading what arrives, dropping
    what is past the size limit), but only until the size limit has passed (an endless body
    never ends) or for UNREAD_BODY_SECONDS; hypercorn then closes the connection.

    hypercorn recycles or closes the connection inside the send of that end, and tells the
    app `http.disconnect` on the way, upon which quart-trio cancels the request's tasks,
    that send included: a connection being closed would be left open, its reader still
    feeding a request that is over. So from then on the disconnect is kept from quart-trio,
    whose reading task is cancelled anyway once the send returns."""

    def __init__(self, inner: AsgiApp, max_body_bytes: int) -> None:
        self.inner = inner
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.inner(scope, receive, send)
            return
        body_done = trio.Event()
        ending = False
        received = 0

        async def tracked_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.disconnect" and ending:
                await trio.sleep_forever()
            received += len(message.get("body", b""))
            more = message["type"] == "http.request" and message.get("more_body", False)
            if not more or received > self.max_body_bytes:
                body_done.set()
            return message

        async def send_after_the_body(message: Message) -> None:
            nonlocal ending
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                with trio.move_on_after(UNREAD_BODY_SECONDS):
                    await body_done.wait()
                ending = True
            await send(message)

        await self.inner(scope, tracked_receive, send_after_the_body)


def error_response(status: int, code: str, message: str) -> Response:
    resp = Response(
        orjson.dumps({"error": code, "message": message}, option=orjson.OPT_APPEND_NEWLINE),
        status,
        mimetype="application/json",
    )
    if status == 401:
        resp.headers["WWW-Authenticate"] = 'Bearer realm="chatd"'
    return resp


def create_app(state: ServerState) -> QuartTrio:
    # Named for the logger Quart logs an unexpected fault to: chatd.http, as the rest of it.
    app = QuartTrio("chatd.http", static_folder=None, template_folder=None)
    app.config.update(
        MAX_CONTENT_LENGTH=state.cfg.http.max_body_bytes,
        BODY_TIMEOUT=BODY_TIMEOUT_SECONDS,
        # A fault is answered 500 whatever the app's debug or testing flags say.
        PROPAGATE_EXCEPTIONS=False,
    )
    app.json = _OrjsonProvider(app)
    app.extensions[STATE_KEY] = state
    app.url_map.converters["int"] = _AsciiInt  # before any route is added

    @app.errorhandler(ClientError)
    async def _client_error(exc: ClientError) -> Response:
        return error_response(exc.status, exc.code, exc.message)

    @app.errorhandler(HTTPException)
    async def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        code, message = _HTTP_ERRORS.get(status, ("http_error", exc.name.lower()))
        resp = error_response(status, code, message)
        if isinstance(exc, MethodNotAllowed):
            # The preflight hook below answers OPTIONS on every path, so Allow names it too.
            resp.headers["Allow"] = ", ".join(sorted({*(exc.valid_methods or ()), "OPTIONS"}))
        return resp

    # --- CORS -----------------------------------------------------------------------------

    @app.before_request
    async def _preflight() -> Response | None:
        # Before routing takes effect, so a preflight to any path is answered here.
        if request.method != "OPTIONS":
            return None
        allowed = server_state().cfg.auth.allowed_origins
        origin = request.headers.get("Origin")
        if origin is None or not origin_allowed(origin, allowed):
            why = f"origin {origin!r} not allowed" if origin else "no Origin header"
            logs.refused("CORS preflight", why, client_address())
            return error_response(403, "origin_not_allowed", "origin not allowed")
        resp = Response(b"", 204)
        del resp.headers["Content-Type"]  # nothing to type
        resp.headers["Access-Control-Allow-Origin"] = origin
        resp.headers["Access-Control-Allow-Methods"] = "GET, POST, PATCH, DELETE, OPTIONS"
        resp.headers["Access-Control-Allow-Headers"] = (
            request.headers.get("Access-Control-Request-Headers")
            or "accessToken, Authorization, Content-Type"
        )
        resp.headers["Access-Control-Max-Age"] = str(server_state().cfg.http.cors_max_age_seconds)
        resp.headers["Vary"] = "Origin"
        return resp

    @app.after_request
    async def _cors(resp: Response) -> Response:
        # Error answers too, or a browser could not read them.
        origin = request.headers.get("Origin")
        if origin is not None and origin_allowed(origin, server_state().cfg.auth.allowed_origins):
            resp.headers["Access-Control-Allow-Origin"] = origin
            resp.headers["Vary"] = "Origin"
        return resp

    # --- health ---------------------------------------------------------------------------

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> tuple[dict[str, Any], int]:
        if not state.ready or state.closing.is_set():
            return {"status": "not_ready"}, 503
        # A committed write proves the disk, the file and its WAL take one (`SELECT 1`
        # through the writer said 200 with the disk full); the store spaces the probes
        # and logs the failures itself.
        reason = await state.store.writable() or state.service.broker.unavailable()
        if reason is not None:
            return {"status": "not_ready", "reason": reason}, 503
        return {"status": "ready"}, 200

    app.register_blueprint(api)
    app.register_blueprint(chatws)
    app.register_blueprint(web)
    middleware = _AfterTheBody(app.asgi_app, state.cfg.http.max_body_bytes)
    app.asgi_app = middleware  # type: ignore[method-assign,assignment]
    return app
