"""A small ASGI layer for the HTTP API: requests, JSON responses, routes, hooks, errors.

Why not quart: importing it (Flask, Werkzeug, Jinja2, click, asyncio...) costs ~15 MB of
idle RSS; hypercorn, which serves the HTTP, costs under 2 MB. This keeps what chatd used
of quart's behaviour: GET routes answer HEAD, before-request hooks run before routing
(so a CORS preflight hook sees OPTIONS on any path), after-request hooks see every
answer, errors included, and a request body is only read, and its size only checked,
when a handler asks for it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
import trio

log = logging.getLogger("chatd.http")

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Handler = Callable[..., Awaitable["Response"]]
Before = Callable[["Request"], Awaitable["Response | None"]]
After = Callable[["Request", "Response"], Awaitable["Response"]]
ErrorHandler = Callable[[Any], Awaitable["Response"]]

# ASCII digits only: werkzeug's `\d+` would also route "/rooms/٣" to room 3.
_INT = re.compile(r"<int:([A-Za-z_]\w*)>")


class HTTPError(Exception):
    """Answer with `status`, shaped by the app's handler for that status; `headers` are
    added to whatever it returns (Allow on 405, Location on a redirect)."""

    def __init__(self, status: int, headers: dict[str, str] | None = None) -> None:
        super().__init__(status)
        self.status = status
        self.headers = headers or {}


class Disconnected(Exception):
    """The client went away before its request body was complete: nobody to answer."""


class Request:
    def __init__(
        self, scope: Message, receive: Receive, max_body: int, body_timeout: float
    ) -> None:
        self.method: str = scope["method"].upper()
        path: str = scope["path"]
        # An absolute-form target (`GET http://host/path`) routes by its path, as quart did.
        self.path = path if path.startswith("/") else urlsplit(path).path
        self.query_string: bytes = scope.get("query_string", b"")
        self.headers: dict[str, str] = {}
        for name, value in scope["headers"]:
            # The first of repeated headers wins, as werkzeug's Headers.get did.
            self.headers.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
        self._receive = receive
        self._max_body = max_body
        self._body_timeout = body_timeout
        self._more_body = True
        self._body: bytes | None = None
        self._args: dict[str, list[str]] | None = None

    def header(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name.lower(), default)

    def arg(self, name: str) -> str | None:
        """The first value of query argument `name` (blank values kept), or None."""
        if self._args is None:
            qs = self.query_string.decode("utf-8", "replace")
            self._args = parse_qs(qs, keep_blank_values=True, errors="replace")
        values = self._args.get(name)
        return values[0] if values else None

    async def body(self) -> bytes:
        """The whole body; 413 past the size limit, declared or streamed, 408 when slow."""
        if self._body is not None:
            return self._body
        declared = self.header("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self._max_body:
            raise HTTPError(413)
        chunks: list[bytes] = []
        size = 0
        with trio.move_on_after(self._body_timeout) as timer:
            while self._more_body:
                message = await self._receive()
                if message["type"] == "http.disconnect":
                    raise Disconnected
                chunk = message.get("body", b"")
                self._more_body = message.get("more_body", False)
                size += len(chunk)
                if size > self._max_body:
                    raise HTTPError(413)
                chunks.append(chunk)
        if timer.cancelled_caught:
            raise HTTPError(408)
        self._body = b"".join(chunks)
        return self._body

    async def json(self) -> Any:
        """The body parsed as JSON whatever its Content-Type, None if it is not JSON
        (quart's `get_json(force=True, silent=True)`)."""
        try:
            return orjson.loads(await self.body())
        except orjson.JSONDecodeError:
            return None

    async def drain(self) -> None:
        """Read what is left of the body so hypercorn can reuse the connection; but no
        more than the size limit, nor for longer than the body timeout: past that the
        request is left unfinished and hypercorn closes the connection, so an endless or
        trickling body cannot hold it."""
        left = self._max_body
        with trio.move_on_after(self._body_timeout):
            while self._more_body and left >= 0:
                message = await self._receive()
                if message["type"] == "http.disconnect":
                    return
                left -= len(message.get("body", b""))
                self._more_body = message.get("more_body", False)


class Response:
    def __init__(
        self, body: bytes = b"", status: int = 200, headers: dict[str, str] | None = None
    ) -> None:
        self.body = body
        self.status = status
        self.headers = headers or {}


def json_response(obj: Any, status: int = 200) -> Response:
    # Keys in insertion order and a final newline, as quart's jsonify wrote them.
    body = orjson.dumps(obj, option=orjson.OPT_APPEND_NEWLINE)
    return Response(body, status, {"Content-Type": "application/json"})


def _server_error() -> Response:
    # The body chatd's error handlers write, so a fault looks like any other error.
    return json_response({"error": "server_error", "message": "unexpected server error"}, 500)


class _Route:
    def __init__(self, methods: frozenset[str], path: str, handler: Handler) -> None:
        self.methods = methods
        self.handler = handler
        parts = _INT.split(path)  # literal, name, literal, name, ..., literal
        pattern = "".join(
            re.escape(part) if i % 2 == 0 else f"(?P<{part}>[0-9]+)" for i, part in enumerate(parts)
        )
        self.regex = re.compile(pattern)


class App:
    """An ASGI application. `extra_allowed` names methods a before-request hook answers on
    every path (OPTIONS for a CORS preflight), so a 405's Allow header lists them too."""

    def __init__(
        self,
        max_body_bytes: int,
        body_timeout: float = 60.0,
        extra_allowed: tuple[str, ...] = (),
    ) -> None:
        self.max_body_bytes = max_body_bytes
        self.body_timeout = body_timeout
        self.extra_allowed = frozenset(extra_allowed)
        self._routes: list[_Route] = []
        self._before: list[Before] = []
        self._after: list[After] = []
        self._by_type: dict[type[BaseException], ErrorHandler] = {}
        self._by_status: dict[int, ErrorHandler] = {}

    # --- registration -------------------------------------------------------------------

    def route(self, method: str, path: str) -> Callable[[Handler], Handler]:
        methods = {method, "HEAD"} if method == "GET" else {method}

        def register(handler: Handler) -> Handler:
            self._routes.append(_Route(frozenset(methods), path, handler))
            return handler

        return register

    def get(self, path: str) -> Callable[[Handler], Handler]:
        return self.route("GET", path)

    def post(self, path: str) -> Callable[[Handler], Handler]:
        return self.route("POST", path)

    def delete(self, path: str) -> Callable[[Handler], Handler]:
        return self.route("DELETE", path)

    def before_request(self, hook: Before) -> Before:
        self._before.append(hook)
        return hook

    def after_request(self, hook: After) -> After:
        self._after.append(hook)
        return hook

    def errorhandler(self, key: type[Exception] | int) -> Callable[[ErrorHandler], ErrorHandler]:
        """Handle an exception type (and its subclasses), or an HTTPError status."""

        def register(handler: ErrorHandler) -> ErrorHandler:
            if isinstance(key, int):
                self._by_status[key] = handler
            else:
                self._by_type[key] = handler
            return handler

        return register

    # --- routing ------------------------------------------------------------------------

    def _match(
        self, method: str, path: str, allowed: set[str]
    ) -> tuple[Handler, dict[str, int]] | None:
        """The route for `method` on `path`; other routes' methods on it go into `allowed`."""
        for route in self._routes:
            m = route.regex.fullmatch(path)
            if m is None:
                continue
            if method not in route.methods:
                allowed |= route.methods
                continue
            try:
                return route.handler, {k: int(v) for k, v in m.groupdict().items()}
            except ValueError:  # more digits than int() takes: no such path, as werkzeug
                continue
        return None

    def resolve(self, request: Request) -> tuple[Handler, dict[str, int]]:
        """The handler and path parameters, or HTTPError 404, 405 or a 308 redirect."""
        # Leading slashes do not count (werkzeug); a trailing one does: "/healthz/" is 404.
        path = "/" + request.path.lstrip("/")
        allowed: set[str] = set()
        found = self._match(request.method, path, allowed)
        if found is not None:
            return found
        merged = re.sub("/{2,}", "/", path)
        # werkzeug redirected "/chat//rooms" to "/chat/rooms" when that would match.
        if merged != path and self._match(request.method, merged, allowed) is not None:
            qs = request.query_string.decode("latin-1")
            raise HTTPError(308, {"Location": merged + ("?" + qs if qs else "")})
        if allowed:
            methods = ", ".join(sorted(allowed | self.extra_allowed))
            raise HTTPError(405, {"Allow": methods})
        raise HTTPError(404)

    # --- serving ------------------------------------------------------------------------

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "websocket":
            # chatd's front door serves WebSockets before hypercorn sees them; refuse any
            # that get here (hypercorn answers the handshake with a 403).
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 1000})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Message, receive: Receive, send: Send) -> None:
        request = Request(scope, receive, self.max_body_bytes, self.body_timeout)
        try:
            response = await self._respond(request)
        except Disconnected:
            return
        headers = [
            (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in response.headers.items()
        ]
        headers.append((b"content-length", str(len(response.body)).encode()))
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        body = b"" if request.method == "HEAD" else response.body
        await send({"type": "http.response.body", "body": body})
        await request.drain()

    async def _respond(self, request: Request) -> Response:
        try:
            try:
                response = None
                for before in self._before:
                    response = await before(request)
                    if response is not None:
                        break
                if response is None:
                    handler, params = self.resolve(request)
                    response = await handler(request, **params)
            except Disconnected:
                raise
            except Exception as exc:
                response = await self._handle(request, exc)
            for after in self._after:
                response = await after(request, response)
            return response
        except Disconnected:
            raise
        except Exception:
            log.exception("unhandled error on %s %s", request.method, request.path)
            return _server_error()

    async def _handle(self, request: Request, exc: Exception) -> Response:
        if isinstance(exc, HTTPError):
            handler = self._by_status.get(exc.status)
            response = Response(b"", exc.status) if handler is None else await handler(exc)
            response.headers.update(exc.headers)
            return response
        for cls in type(exc).__mro__:
            handler = self._by_type.get(cls)
            if handler is not None:
                return await handler(exc)
        log.exception("unhandled error on %s %s", request.method, request.path)
        return _server_error()
