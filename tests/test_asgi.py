"""The ASGI layer under the HTTP API (chatd.http.asgi), called directly with fake receive/send:
routing and the int converter, 404/405/308, HEAD, body limits, hooks, error mapping, the
500 path, lifespan and websocket scopes. Then a few of the same through the real server."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import orjson
import pytest
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio.lifespan import Lifespan
from hypercorn.utils import wrap_app

from chatd.http.asgi import App, HTTPError, Message, Request, Response, json_response

from .conftest import Server

TIMEOUT = 10


class Reply:
    def __init__(self, messages: list[Message]) -> None:
        self.messages = messages
        start = messages[0] if messages else {}
        self.status: int | None = start.get("status")
        self.headers = {k.decode(): v.decode() for k, v in start.get("headers", [])}
        self.body = b"".join(m.get("body", b"") for m in messages[1:])

    def json(self) -> Any:
        return orjson.loads(self.body)


def scope(
    method: str, path: str, headers: Iterable[tuple[str, str]] = (), query: bytes = b""
) -> Message:
    return {
        "type": "http",
        "method": method,
        "path": path,
        "query_string": query,
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers],
    }


async def call(
    app: App,
    method: str,
    path: str,
    headers: Iterable[tuple[str, str]] = (),
    chunks: Iterable[bytes] = (b"",),
    query: bytes = b"",
) -> tuple[Reply, list[Message]]:
    """One request through `app`; the reply and what is left unread of `chunks`."""
    parts = list(chunks)
    pending: list[Message] = [
        {"type": "http.request", "body": c, "more_body": i < len(parts) - 1}
        for i, c in enumerate(parts)
    ]
    sent: list[Message] = []

    async def receive() -> Message:
        if not pending:
            return {"type": "http.disconnect"}
        return pending.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    with trio.fail_after(TIMEOUT):
        await app(scope(method, path, headers, query), receive, send)
    return Reply(sent), pending


def make_app(**kw: Any) -> App:
    app = App(max_body_bytes=kw.pop("max_body_bytes", 10), **kw)

    @app.get("/items")
    async def items(_request: Request) -> Response:
        return json_response({"b": 1, "a": [2]})

    @app.get("/items/<int:item_id>")
    async def item(_request: Request, item_id: int) -> Response:
        return json_response({"id": str(item_id)})

    @app.delete("/items/<int:item_id>/tags/<int:tag>")
    async def untag(_request: Request, item_id: int, tag: int) -> Response:
        return json_response([item_id, tag])

    @app.post("/echo")
    async def echo(request: Request) -> Response:
        return Response(await request.body(), 200, {"Content-Type": "text/plain"})

    @app.post("/json")
    async def parse(request: Request) -> Response:
        return json_response({"got": await request.json()})

    @app.post("/ignore")
    async def ignore(_request: Request) -> Response:
        return json_response("ignored")

    @app.get("/args")
    async def args(request: Request) -> Response:
        names = ("a", "b", "c", "missing")
        return json_response({name: request.arg(name) for name in names})

    @app.get("/headers")
    async def headers(request: Request) -> Response:
        return json_response([request.header("x-one"), request.header("X-ONE"), request.method])

    return app


# --- routing --------------------------------------------------------------------------


async def test_routes_and_int_parameters() -> None:
    app = make_app()
    reply, _ = await call(app, "GET", "/items")
    assert (reply.status, reply.json()) == (200, {"b": 1, "a": [2]})
    assert reply.headers["content-type"] == "application/json"
    assert reply.body == b'{"b":1,"a":[2]}\n'  # key order kept, final newline as jsonify
    assert reply.headers["content-length"] == str(len(reply.body))
    assert (await call(app, "GET", "/items/007"))[0].json() == {"id": "7"}
    reply, _ = await call(app, "DELETE", "/items/3/tags/4")
    assert reply.json() == [3, 4]
    # Past MAX_ID the value still routes: handlers judge it (remove_member answers 400).
    assert (await call(app, "GET", "/items/99999999999999999999999"))[0].json() == {
        "id": "99999999999999999999999"
    }
    # Leading slashes do not count, as with werkzeug; a lowercase method is still GET.
    assert (await call(app, "GET", "//items"))[0].status == 200
    assert (await call(app, "get", "/items"))[0].status == 200
    # An absolute-form target routes by its path.
    assert (await call(app, "GET", "http://host/items/5"))[0].json() == {"id": "5"}


@pytest.mark.parametrize(
    "raw",
    ["٣", "²", "-1", "+1", "1.0", "1a", "", " 1", "0x1", "1" * 5000],
)
async def test_int_converter_takes_ascii_digits_only(raw: str) -> None:
    reply, _ = await call(make_app(), "GET", f"/items/{raw}")
    assert reply.status == 404


async def test_trailing_slash_is_404_and_repeated_slashes_redirect() -> None:
    app = make_app()
    assert (await call(app, "GET", "/items/"))[0].status == 404
    assert (await call(app, "GET", "/items/1/"))[0].status == 404
    reply, _ = await call(app, "GET", "/items//1", query=b"x=1")
    assert reply.status == 308
    assert reply.headers["location"] == "/items/1?x=1"
    assert (await call(app, "GET", "/items//nope"))[0].status == 404
    # Merged, the path is there but not for this method: 405, as werkzeug did.
    assert (await call(app, "POST", "/items//1"))[0].status == 405


async def test_unknown_path_404_wrong_method_405_with_allow() -> None:
    app = make_app(extra_allowed=("OPTIONS",))
    reply, _ = await call(app, "GET", "/nope")
    assert (reply.status, reply.body) == (404, b"")
    reply, _ = await call(app, "PUT", "/items")
    assert reply.status == 405
    assert reply.headers["allow"] == "GET, HEAD, OPTIONS"
    reply, _ = await call(app, "GET", "/items/1/tags/2")
    assert reply.headers["allow"] == "DELETE, OPTIONS"
    assert (await call(app, "PUT", "/nope"))[0].status == 404


async def test_head_answers_like_get_without_a_body() -> None:
    app = make_app()
    get, _ = await call(app, "GET", "/items/1")
    head, _ = await call(app, "HEAD", "/items/1")
    assert head.status == 200
    assert head.body == b""
    assert head.headers == get.headers  # Content-Length of the GET body
    assert (await call(app, "HEAD", "/echo"))[0].status == 405


# --- request bodies, query, headers --------------------------------------------------


async def test_body_within_the_limit_in_several_chunks() -> None:
    reply, pending = await call(make_app(), "POST", "/echo", chunks=[b"01234", b"", b"56789"])
    assert (reply.status, reply.body, pending) == (200, b"0123456789", [])


async def test_declared_content_length_over_the_limit_is_413_unread() -> None:
    app = make_app()

    @app.errorhandler(413)
    async def too_large(_exc: HTTPError) -> Response:
        return json_response({"error": "body_too_large"}, 413)

    sent: list[Message] = []

    async def receive() -> Message:
        assert sent, "the body is refused before any of it is read"
        return {"type": "http.disconnect"}  # the drain after the answer

    async def send(message: Message) -> None:
        sent.append(message)

    with trio.fail_after(TIMEOUT):
        await app(scope("POST", "/echo", [("Content-Length", "11")]), receive, send)
    reply = Reply(sent)
    assert (reply.status, reply.json()) == (413, {"error": "body_too_large"})
    # Exactly the limit is fine.
    reply, _ = await call(app, "POST", "/echo", [("Content-Length", "10")], [b"0123456789"])
    assert (reply.status, reply.body) == (200, b"0123456789")


async def test_streamed_body_over_the_limit_is_413() -> None:
    reply, pending = await call(make_app(), "POST", "/echo", chunks=[b"012345", b"67890", b"x"])
    assert reply.status == 413
    assert pending == []  # what came after the refusal was read and dropped


async def test_unread_body_is_drained_after_the_answer() -> None:
    reply, pending = await call(make_app(), "POST", "/ignore", chunks=[b"x" * 4, b"y" * 4])
    assert (reply.status, pending) == (200, [])


async def test_slow_body_is_408(autojump_clock: trio.abc.Clock) -> None:
    app = make_app(body_timeout=1.0)
    sent: list[Message] = []

    async def receive() -> Message:
        await trio.sleep_forever()
        raise AssertionError

    async def send(message: Message) -> None:
        sent.append(message)

    with trio.fail_after(TIMEOUT):  # the drain after the answer gives up at the timeout too
        await app(scope("POST", "/echo"), receive, send)
    assert Reply(sent).status == 408


async def test_an_endless_unread_body_is_not_drained_forever() -> None:
    app = make_app(max_body_bytes=1000)
    sent: list[Message] = []
    received = 0

    async def receive() -> Message:
        nonlocal received
        received += 100
        return {"type": "http.request", "body": b"x" * 100, "more_body": True}

    async def send(message: Message) -> None:
        sent.append(message)

    with trio.fail_after(TIMEOUT):
        await app(scope("POST", "/ignore"), receive, send)
    assert Reply(sent).status == 200
    # Past the size limit the rest is left unread: hypercorn then closes the connection.
    assert received <= 1100


async def test_client_gone_mid_body_gets_no_answer() -> None:
    app = make_app(max_body_bytes=100)
    sent: list[Message] = []
    pending: list[Message] = [
        {"type": "http.request", "body": b"1", "more_body": True},
        {"type": "http.disconnect"},
    ]

    async def receive() -> Message:
        return pending.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    with trio.fail_after(TIMEOUT):
        await app(scope("POST", "/echo"), receive, send)
    assert sent == []


@pytest.mark.parametrize(
    ("body", "parsed"),
    [
        (b'{"a": 1}', {"a": 1}),
        (b"[1]", [1]),
        (b"", None),
        (b"not json", None),
        (b'{"a": NaN}', None),
        (b"\xff", None),
        (b"[" * 2000 + b"]" * 2000, None),
    ],
)
async def test_json_whatever_the_content_type_and_none_when_invalid(
    body: bytes, parsed: Any
) -> None:
    app = make_app(max_body_bytes=10_000)
    for ctype in ("application/json", "text/plain"):
        reply, _ = await call(app, "POST", "/json", [("Content-Type", ctype)], [body])
        assert (reply.status, reply.json()) == (200, {"got": parsed})


async def test_query_args_and_headers() -> None:
    app = make_app()
    reply, _ = await call(app, "GET", "/args", query=b"a=1&a=2&b=&c=%32+x")
    assert reply.json() == {"a": "1", "b": "", "c": "2 x", "missing": None}
    reply, _ = await call(app, "GET", "/headers", [("X-One", "first"), ("x-one", "second")])
    assert reply.json() == ["first", "first", "GET"]


# --- hooks and errors ------------------------------------------------------------------


class Base(Exception):
    pass


class Child(Base):
    pass


def hooked_app() -> App:
    app = make_app()

    @app.before_request
    async def preflight(request: Request) -> Response | None:
        if request.method == "OPTIONS":
            return Response(b"", 204)
        return None

    @app.after_request
    async def stamp(_request: Request, resp: Response) -> Response:
        resp.headers["X-Stamp"] = "1"
        return resp

    @app.errorhandler(Base)
    async def base(exc: Base) -> Response:
        return json_response({"handled": type(exc).__name__}, 418)

    @app.errorhandler(404)
    async def not_found(_exc: HTTPError) -> Response:
        return json_response({"error": "not_found"}, 404)

    @app.get("/child")
    async def child(_request: Request) -> Response:
        raise Child

    @app.get("/boom")
    async def boom(_request: Request) -> Response:
        raise RuntimeError("disk on fire")

    return app


async def test_before_hook_runs_before_routing_and_after_hook_sees_everything() -> None:
    app = hooked_app()
    reply, _ = await call(app, "OPTIONS", "/no/such/path")
    assert (reply.status, reply.headers["x-stamp"]) == (204, "1")
    reply, _ = await call(app, "GET", "/nope")
    assert (reply.status, reply.json(), reply.headers["x-stamp"]) == (
        404,
        {"error": "not_found"},
        "1",
    )


async def test_exception_types_map_to_handlers_by_class_hierarchy() -> None:
    reply, _ = await call(hooked_app(), "GET", "/child")
    assert (reply.status, reply.json(), reply.headers["x-stamp"]) == (
        418,
        {"handled": "Child"},
        "1",
    )


async def test_unexpected_exception_is_logged_and_a_json_500(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR, logger="chatd.http"):
        reply, _ = await call(hooked_app(), "GET", "/boom")
    assert reply.status == 500
    assert reply.json() == {"error": "server_error", "message": "unexpected server error"}
    assert reply.headers["content-type"] == "application/json"
    assert reply.headers["x-stamp"] == "1"  # after-request hooks see a 500 too
    [record] = caplog.records
    assert record.exc_info is not None and "disk on fire" in str(record.exc_info[1])
    assert "GET /boom" in record.getMessage()


async def test_failing_after_hook_is_a_logged_500(caplog: pytest.LogCaptureFixture) -> None:
    app = make_app()

    @app.after_request
    async def broken(_request: Request, _resp: Response) -> Response:
        raise KeyError("hook")

    with caplog.at_level(logging.ERROR, logger="chatd.http"):
        reply, _ = await call(app, "GET", "/items")
    assert (reply.status, reply.json()["error"]) == (500, "server_error")
    assert len(caplog.records) == 1


# --- other scopes ---------------------------------------------------------------------


async def test_lifespan_startup_and_shutdown_complete() -> None:
    inbox = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[Message] = []

    async def receive() -> Message:
        return inbox.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    with trio.fail_after(TIMEOUT):
        await make_app()({"type": "lifespan"}, receive, send)
    assert sent == [{"type": "lifespan.startup.complete"}, {"type": "lifespan.shutdown.complete"}]


async def test_lifespan_with_hypercorn() -> None:
    config = HypercornConfig()
    lifespan = Lifespan(wrap_app(make_app(), config.wsgi_max_body_size, "asgi"), config, {})
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            await nursery.start(lifespan.handle_lifespan)
            await lifespan.wait_for_startup()
            await lifespan.wait_for_shutdown()
    assert lifespan.supported


async def test_websocket_scope_is_closed() -> None:
    inbox = [{"type": "websocket.connect"}]
    sent: list[Message] = []

    async def receive() -> Message:
        return inbox.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    with trio.fail_after(TIMEOUT):
        await make_app()({"type": "websocket", "path": "/x", "headers": []}, receive, send)
    assert sent == [{"type": "websocket.close", "code": 1000}]


# --- through the real server -------------------------------------------------------------


async def test_through_the_server_head_405_allow_and_slash_redirect(server: Server) -> None:
    with trio.fail_after(TIMEOUT):
        async with server.client() as http:
            get = await http.get("/healthz")
            head = await http.head("/healthz")
            assert (head.status_code, head.content) == (200, b"")
            assert head.headers["content-length"] == get.headers["content-length"]
            resp = await http.put("/healthz")
            assert resp.status_code == 405
            assert resp.headers["allow"] == "GET, HEAD, OPTIONS"
            resp = await http.get("/chat//rooms?x=1", headers={"accessToken": server.token(1)})
            assert (resp.status_code, resp.headers["location"]) == (308, "/chat/rooms?x=1")
            assert resp.headers.get("content-type") is None


async def test_through_the_server_streamed_body_over_the_limit(server: Server) -> None:
    limit = server.cfg.http.max_body_bytes

    async def chunks() -> Any:
        for _ in range(limit // 1000 + 2):
            yield b" " * 1000

    with trio.fail_after(TIMEOUT):
        async with server.client() as http:
            headers = {"Authorization": f"Bearer {server.admin_token()}"}
            resp = await http.post("/admin/rooms", content=chunks(), headers=headers)
            assert "content-length" not in resp.request.headers  # chunked, no declared size
            assert resp.status_code == 413
            assert resp.json()["error"] == "body_too_large"
            # The connection is reused after the refusal.
            assert (await http.get("/healthz")).status_code == 200


async def test_wrong_type_of_body_is_a_client_error(server: Server) -> None:
    with trio.fail_after(TIMEOUT):
        async with server.client() as http:
            headers = {"Authorization": f"Bearer {server.admin_token()}"}
            for body in (b'{"name": "\xff"}', b'{"name": "a\\ud800"}', b"[" * 5000):
                resp = await http.post("/admin/rooms", content=body, headers=headers)
                assert (resp.status_code, resp.json()["error"]) == (400, "bad_json")
