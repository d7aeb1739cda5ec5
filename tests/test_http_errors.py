"""How the HTTP API answers what no handler asked for, through the real server over real
sockets: 404/405 (with Allow), HEAD, request bodies over the size limit or too slow (413,
408), bodies a handler never reads, CORS preflights on any path, `<int:>` path parts of
ASCII digits only, absolute-form request targets, and the 500 of an unexpected fault.

Requests a client library would not send (a head that promises a body never sent, an
absolute-form target) go out on a raw socket, and h11 reads the answer.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import h11
import orjson
import pytest
import trio

import chatd.http.app
from chatd.model import ClientError

from ._chat import admin_headers, bearer, create_room
from .conftest import Server, StartServer

TIMEOUT = 10
ALLOWED = "http://allowed.example"


class Reply:
    def __init__(self, response: h11.Response, body: bytes) -> None:
        self.status = response.status_code
        self.headers = {k.decode(): v.decode() for k, v in response.headers}
        self.body = body

    def json(self) -> Any:
        return orjson.loads(self.body)


class RawConnection:
    """One connection on which the test writes bytes as they are and h11 reads answers."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT)

    @classmethod
    async def open(cls, server: Server) -> RawConnection:
        return cls(await trio.open_tcp_stream("127.0.0.1", server.running.http_port))

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def reply(self) -> Reply:
        # h11's client side reads an answer only once it has sent a request itself: a
        # stand-in, as the real one went out raw.
        self.h11.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
        self.h11.send(h11.EndOfMessage())
        response: h11.Response | None = None
        chunks: list[bytes] = []
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                self.h11.receive_data(await self.stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                raise AssertionError(f"no answer: {event!r}")
        assert response is not None
        self.h11.start_next_cycle()
        return Reply(response, b"".join(chunks))

    async def closed_by_server(self) -> bool:
        """Wait until the server closes the connection (True), or sends something (False)."""
        try:
            return await self.stream.receive_some(65536) == b""
        except trio.BrokenResourceError:  # reset: closed with our bytes unread
            return True


async def raw_request(server: Server, head: bytes, body: bytes = b"") -> Reply:
    """Send `head` (and `body`) as they are, and read one answer; the rest of what the head
    promises is never sent."""
    conn = await RawConnection.open(server)
    async with conn.stream:
        await conn.send(head + body)
        return await conn.reply()


def assert_error(status: int, body: Any, code: str, want: int) -> None:
    assert status == want, body
    assert set(body) == {"error", "message"}, body
    assert body["error"] == code, body
    assert isinstance(body["message"], str) and body["message"]


# --- routing: 404, 405 and Allow, HEAD -------------------------------------------------------


async def test_405_names_the_allowed_methods_and_options(server: Server) -> None:
    with trio.fail_after(TIMEOUT):
        room = await create_room(server, [1])
        async with server.client() as http:
            for method, path, allow in (
                ("PUT", "/healthz", "GET, HEAD, OPTIONS"),
                ("GET", "/chat/ticket", "OPTIONS, POST"),
                ("PUT", f"/admin/rooms/{room}", "DELETE, GET, HEAD, OPTIONS, PATCH"),
                ("GET", f"/admin/rooms/{room}/members/1", "DELETE, OPTIONS"),
                ("PATCH", "/chat-ws/connect", "OPTIONS, POST"),
            ):
                resp = await http.request(method, path, headers=admin_headers(server))
                assert_error(resp.status_code, resp.json(), "method_not_allowed", 405)
                assert resp.headers["content-type"] == "application/json"
                assert resp.headers["allow"] == allow, (method, path)
            # A method no route has on a path no route matches is a 404, not a 405.
            resp = await http.request("PUT", "/nope")
            assert_error(resp.status_code, resp.json(), "not_found", 404)


async def test_trailing_slash_is_not_the_same_path(server: Server) -> None:
    with trio.fail_after(TIMEOUT):
        async with server.client() as http:
            for path in ("/healthz/", "/chat/rooms/", "/chat-ws/connect/x"):
                resp = await http.get(path, headers=bearer(server.token(1)))
                assert_error(resp.status_code, resp.json(), "not_found", 404)


async def test_head_answers_like_get_without_the_body(server: Server) -> None:
    with trio.fail_after(TIMEOUT):
        async with server.client() as http:
            for path in ("/healthz", "/chat/rooms"):
                headers = bearer(server.token(1))
                get = await http.get(path, headers=headers)
                head = await http.head(path, headers=headers)
                assert (head.status_code, head.content) == (200, b"")
                assert head.headers["content-type"] == get.headers["content-type"]
                assert head.headers["content-length"] == get.headers["content-length"]
                assert int(get.headers["content-length"]) == len(get.content) > 0
            # HEAD goes with GET only.
            resp = await http.head("/chat/ticket")
            assert (resp.status_code, resp.headers["allow"]) == (405, "OPTIONS, POST")


# --- path parameters ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "part",
    [
        "%D9%A3",  # ٣, ARABIC-INDIC DIGIT THREE: a digit to Python and to `\d`
        "%EF%BC%93",  # ３, FULLWIDTH DIGIT THREE
        "%C2%B2",  # ², which "².isdigit()" calls a digit
        "-1",
        "+1",
        "1.0",
        "0x1",
        "1a",
        "%201",
        "1" * 5000,  # past what int() reads: no such path, not a fault
    ],
)
async def test_int_path_parts_are_ascii_digits_only(server: Server, part: str) -> None:
    with trio.fail_after(TIMEOUT):
        for _ in range(3):  # rooms 1, 2 and 3 exist, so a digit read as 3 would find one
            await create_room(server, [1])
        async with server.client() as http:
            for path in (
                f"/admin/rooms/{part}",
                f"/chat/rooms/{part}/messages",
                f"/chat-ws/leave-room/{part}",
            ):
                method = "POST" if path.startswith("/chat-ws") else "GET"
                headers = admin_headers(server) if path.startswith("/admin") else {}
                resp = await http.request(
                    method, path, headers={**headers, **bearer(server.token(1))}
                )
                assert_error(resp.status_code, resp.json(), "not_found", 404)


async def test_int_path_parts_with_leading_zeros_or_too_big(server: Server) -> None:
    with trio.fail_after(TIMEOUT):
        room = await create_room(server, [1])
        async with server.client() as http:
            resp = await http.get(f"/admin/rooms/000{room}", headers=admin_headers(server))
            assert (resp.status_code, resp.json()["id"]) == (200, room)
            # Beyond any id, the handler judges it: a room that does not exist.
            resp = await http.get(
                "/admin/rooms/99999999999999999999999", headers=admin_headers(server)
            )
            assert_error(resp.status_code, resp.json(), "unknown_room", 404)


async def test_absolute_form_target_routes_by_its_path(server: Server) -> None:
    with trio.fail_after(TIMEOUT):
        port = server.running.http_port
        reply = await raw_request(
            server,
            f"GET http://127.0.0.1:{port}/healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode(),
        )
        assert (reply.status, reply.json()) == (200, {"status": "ok"})
        reply = await raw_request(
            server, b"GET http://other.example/nope?x=1 HTTP/1.1\r\nHost: other.example\r\n\r\n"
        )
        assert_error(reply.status, reply.json(), "not_found", 404)


# --- request bodies ------------------------------------------------------------------------------


def post_head(path: str, content_length: int, token: str | None = None) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {content_length}"]
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def test_declared_body_over_the_limit_is_413_before_it_is_sent(
    start_server: StartServer,
) -> None:
    with trio.fail_after(TIMEOUT):
        server = await start_server(http={"max_body_bytes": 100})
        # The head promises 101 bytes and none follow: the answer cannot wait for them (it
        # would come after the 60 s body timeout, past this test's timeout).
        reply = await raw_request(server, post_head("/admin/rooms", 101, server.admin_token()))
        assert_error(reply.status, reply.json(), "body_too_large", 413)
        assert reply.headers["content-type"] == "application/json"
        # Exactly the limit is read and judged.
        body = b'{"name": "' + b"x" * 88 + b'"}'
        assert len(body) == 100
        reply = await raw_request(
            server, post_head("/admin/rooms", len(body), server.admin_token()), body
        )
        assert reply.status == 201, reply.body


async def test_streamed_body_over_the_limit_is_413(start_server: StartServer) -> None:
    with trio.fail_after(TIMEOUT):
        server = await start_server(http={"max_body_bytes": 1000})

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(5):
                yield b" " * 300

        async with server.client() as http:
            resp = await http.post("/admin/rooms", content=chunks(), headers=admin_headers(server))
            assert "content-length" not in resp.request.headers  # chunked, no declared size
            assert_error(resp.status_code, resp.json(), "body_too_large", 413)
            # The server carries on, on this client's next connection or the same one.
            assert (await http.get("/healthz")).status_code == 200


async def test_body_is_judged_only_when_a_handler_reads_it(start_server: StartServer) -> None:
    with trio.fail_after(TIMEOUT):
        server = await start_server(http={"max_body_bytes": 100})
        big = b"x" * 5000
        async with server.client() as http:
            # POST /chat/ticket reads no body: a large one is no reason to refuse.
            resp = await http.post("/chat/ticket", content=big, headers=bearer(server.token(1)))
            assert resp.status_code == 200, resp.text
            # The caller is checked before the body is read: 401, not 413.
            resp = await http.post("/admin/rooms", content=big)
            assert_error(resp.status_code, resp.json(), "unauthorized", 401)
            resp = await http.post("/admin/rooms", content=big, headers=bearer(server.token(1)))
            assert_error(resp.status_code, resp.json(), "forbidden", 403)
            # An unread body within the limit leaves the connection usable.
            resp = await http.post("/chat/ticket", content=b"{}", headers=bearer(server.token(1)))
            assert resp.status_code == 200
            assert (await http.get("/healthz")).status_code == 200


async def test_an_unread_body_then_the_next_request_on_the_same_connection(
    server: Server,
) -> None:
    with trio.fail_after(TIMEOUT):
        conn = await RawConnection.open(server)
        async with conn.stream:
            await conn.send(post_head("/chat/ticket", 20_000, server.token(1)) + b"x" * 1000)
            # The whole answer comes before the rest of the body is sent ...
            first = await conn.reply()
            assert first.status == 200 and "ticket" in first.json()
            # ... which then comes in pieces, with the next request behind it.
            for _ in range(19):
                await conn.send(b"x" * 1000)
            await conn.send(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            second = await conn.reply()
            assert (second.status, second.json()) == (200, {"status": "ok"})


async def test_an_endless_unread_body_does_not_hold_the_connection(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only the size limit can end the wait in time.
    monkeypatch.setattr(chatd.http.app, "UNREAD_BODY_SECONDS", 3600.0)
    with trio.fail_after(TIMEOUT):
        server = await start_server(http={"max_body_bytes": 1000})
        conn = await RawConnection.open(server)
        async with conn.stream:
            head = post_head("/chat/ticket", 0, server.token(1)).replace(
                b"Content-Length: 0", b"Transfer-Encoding: chunked"
            )
            chunk = b"64\r\n" + b"x" * 100 + b"\r\n"  # 100 bytes; the last chunk never comes
            await conn.send(head + chunk)
            assert (await conn.reply()).status == 200
            try:
                for _ in range(20):
                    await conn.send(chunk)
            except trio.BrokenResourceError:
                pass  # already closed
            assert await conn.closed_by_server()


async def test_a_stalled_unread_body_does_not_hold_the_connection(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(chatd.http.app, "UNREAD_BODY_SECONDS", 0.5)
    with trio.fail_after(TIMEOUT):
        conn = await RawConnection.open(server)
        async with conn.stream:
            await conn.send(post_head("/chat/ticket", 1000, server.token(1)) + b"x")
            assert (await conn.reply()).status == 200
            assert await conn.closed_by_server()


async def test_slow_body_is_408(start_server: StartServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chatd.http.app, "BODY_TIMEOUT_SECONDS", 0.5)
    with trio.fail_after(TIMEOUT):
        server = await start_server()
        # 3 bytes of the 10 promised arrive, then nothing: the handler waiting for the
        # rest gives up after the body timeout.
        reply = await raw_request(
            server, post_head("/admin/rooms", 10, server.admin_token()), b"{}x"
        )
        assert_error(reply.status, reply.json(), "body_timeout", 408)
        # A handler that does not read the body is not held by it.
        reply = await raw_request(server, post_head("/chat/ticket", 10, server.token(1)), b"{")
        assert reply.status == 200


# --- CORS ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/no/such/path", "/healthz", "/chat-ws/leave-room/x"])
async def test_preflight_is_answered_on_any_path(server: Server, path: str) -> None:
    with trio.fail_after(TIMEOUT):
        async with server.client() as http:
            resp = await http.options(
                path, headers={"Origin": ALLOWED, "Access-Control-Request-Method": "POST"}
            )
            assert resp.status_code == 204
            assert resp.headers["access-control-allow-origin"] == ALLOWED
            assert "content-type" not in resp.headers
            resp = await http.options(path, headers={"Origin": "http://evil.example"})
            assert_error(resp.status_code, resp.json(), "origin_not_allowed", 403)
            # The answers to that origin's other requests, errors included, carry its
            # CORS header too.
            resp = await http.get(path, headers={"Origin": ALLOWED})
            assert resp.status_code == (200 if path == "/healthz" else 404)
            assert resp.headers["access-control-allow-origin"] == ALLOWED


# --- faults ----------------------------------------------------------------------------------


async def test_unexpected_fault_is_a_logged_json_500(
    server: Server, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(TIMEOUT):
        room = await create_room(server, [1])

        async def broken(*_args: Any, **_kwargs: Any) -> Any:
            raise RuntimeError("disk on fire")

        monkeypatch.setattr(server.state.service, "history", broken)
        async with server.client() as http:
            with caplog.at_level(logging.ERROR, logger="chatd.http"):
                resp = await http.get(
                    f"/chat/rooms/{room}/messages",
                    headers={"accessToken": server.token(1), "Origin": ALLOWED},
                )
        assert resp.status_code == 500
        assert resp.json() == {"error": "server_error", "message": "unexpected server error"}
        assert resp.headers["content-type"] == "application/json"
        assert resp.headers["access-control-allow-origin"] == ALLOWED
        [record] = [r for r in caplog.records if r.exc_info is not None]
        assert record.name == "chatd.http" and record.levelno == logging.ERROR
        assert record.exc_info is not None and "disk on fire" in str(record.exc_info[1])
        assert f"GET /chat/rooms/{room}/messages" in record.getMessage()


async def test_a_client_error_from_any_layer_is_its_json_reply(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trio.fail_after(TIMEOUT):
        room = await create_room(server, [1])

        async def refused(*_args: Any, **_kwargs: Any) -> Any:
            raise ClientError("on_fire", "the room is on fire", 409)

        monkeypatch.setattr(server.state.service, "history", refused)
        async with server.client() as http:
            resp = await http.get(
                f"/chat/rooms/{room}/messages", headers={"accessToken": server.token(1)}
            )
        assert resp.status_code == 409
        assert resp.json() == {"error": "on_fire", "message": "the room is on fire"}
        assert "www-authenticate" not in resp.headers


async def test_wrong_kind_of_body_is_a_client_error(server: Server) -> None:
    with trio.fail_after(TIMEOUT):
        async with server.client() as http:
            for body in (b'{"name": "\xff"}', b'{"name": "a\\ud800"}', b"[" * 5000, b"NaN"):
                resp = await http.post("/admin/rooms", content=body, headers=admin_headers(server))
                assert_error(resp.status_code, resp.json(), "bad_json", 400)


async def test_json_answers_are_utf8_in_insertion_order(server: Server) -> None:
    with trio.fail_after(TIMEOUT):
        async with server.client() as http:
            resp = await http.post(
                "/admin/rooms", json={"name": "café ☕"}, headers=admin_headers(server)
            )
        assert resp.status_code == 201
        assert resp.content.endswith(b"\n")
        assert "café ☕".encode() in resp.content
        assert list(resp.json()) == ["id", "name", "public", "members"]


# --- two framings: request smuggling -------------------------------------------------------


SMUGGLED = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


def two_framings(path: bytes = b"/chat-ws/send-message", then: bytes = SMUGGLED) -> bytes:
    # A proxy that goes by Content-Length sees a body of 5 bytes and then, as a request of
    # its own, whatever follows; h11 goes by Transfer-Encoding.
    return (
        b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + then
    )


async def last_reply(conn: RawConnection) -> tuple[Reply, bytes]:
    """The answer that ends the connection, and whatever came after it before EOF."""
    conn.h11.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    conn.h11.send(h11.EndOfMessage())
    response: h11.Response | None = None
    chunks: list[bytes] = []
    while True:
        event = conn.h11.next_event()
        if event is h11.NEED_DATA:
            conn.h11.receive_data(await conn.stream.receive_some(65536))
        elif isinstance(event, h11.Response):
            response = event
        elif isinstance(event, h11.Data):
            chunks.append(bytes(event.data))
        elif isinstance(event, h11.EndOfMessage):
            break
        else:
            raise AssertionError(f"no answer: {event!r}")
    assert response is not None
    after = b""
    while chunk := await conn.stream.receive_some(65536):
        after += chunk
    return Reply(response, b"".join(chunks)), after


async def test_a_request_with_both_content_length_and_transfer_encoding_is_refused(
    server: Server,
) -> None:
    with trio.fail_after(TIMEOUT):
        conn = await RawConnection.open(server)
        async with conn.stream:
            await conn.send(two_framings())
            reply, after = await last_reply(conn)
    assert_error(reply.status, reply.json(), "bad_request", 400)
    assert reply.headers["connection"] == "close"
    assert after == b""  # the smuggled GET is never answered: the server closed


async def test_two_framings_are_refused_on_a_kept_alive_connection_too(server: Server) -> None:
    # The first request of a connection is read by chatd's front door, the next ones by
    # hypercorn alone: the check is where every request passes.
    with trio.fail_after(TIMEOUT):
        conn = await RawConnection.open(server)
        async with conn.stream:
            await conn.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await conn.reply()).status == 200
            await conn.send(two_framings(b"/healthz", then=b""))
            reply, after = await last_reply(conn)
    assert_error(reply.status, reply.json(), "bad_request", 400)
    assert after == b""


async def test_a_request_smuggled_after_two_framings_is_never_served(server: Server) -> None:
    with trio.fail_after(TIMEOUT):
        conn = await RawConnection.open(server)
        async with conn.stream:
            await conn.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await conn.reply()).status == 200
            await conn.send(two_framings(b"/healthz"))
            rest = b""
            try:
                while chunk := await conn.stream.receive_some(65536):
                    rest += chunk
            except trio.BrokenResourceError:
                pass
    # The connection ends after the refusal (whole or cut short), the GET behind it unanswered.
    assert b" 200 " not in rest, rest
