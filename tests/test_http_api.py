"""Black-box tests of the HTTP API: tickets, CORS, admin rooms, rooms, history, health."""

from __future__ import annotations

import time
from typing import Any

import httpx
import jwt
import pytest
import trio
from trio_websocket import open_websocket_url

from ._chat import admin_headers, bearer, chat, chat_url, create_room, roundtrip
from .conftest import Server, StartServer

ALLOWED = "http://allowed.example"


def assert_error(resp: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"error", "message"}, body
    assert body["error"] == code, body
    assert isinstance(body["message"], str) and body["message"]
    return dict(body)


# --- POST /chat/ticket -------------------------------------------------------------------


async def test_ticket_with_access_token_header_or_bearer(server: Server) -> None:
    with trio.fail_after(10):
        room = await create_room(server, [5])
        async with server.client() as http:
            a = await http.post("/chat/ticket", headers={"accessToken": server.token(5)})
            b = await http.post("/chat/ticket", headers=bearer(server.token(5)))
        assert a.status_code == b.status_code == 200
        assert a.json()["expiresIn"] == b.json()["expiresIn"] == 30
        assert a.json()["ticket"] != b.json()["ticket"]
        for ticket in (a.json()["ticket"], b.json()["ticket"]):
            async with open_websocket_url(chat_url(server, ticket)) as ws:
                assert (await roundtrip(ws, room, "hi"))["user"]["id"] == 5


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "missing token"),
        ({"accessToken": ""}, "missing token"),
        ({"accessToken": "garbage"}, "token is malformed"),
        ({"Authorization": "Bearer garbage"}, "token is malformed"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "missing token"),
        ({"Authorization": "Bearer"}, "missing token"),
    ],
)
async def test_ticket_refused_without_a_good_token(
    server: Server, headers: dict[str, str], message: str
) -> None:
    with trio.fail_after(10):
        async with server.client() as http:
            resp = await http.post("/chat/ticket", headers=headers)
        body = assert_error(resp, 401, "unauthorized")
        assert body["message"] == message
        assert resp.headers["www-authenticate"].startswith("Bearer")
        # ... and the server carries on.
        async with server.client() as http:
            ok = await http.post("/chat/ticket", headers={"accessToken": server.token(1)})
        assert ok.status_code == 200


async def test_ticket_refused_for_expired_or_foreign_tokens(server: Server) -> None:
    with trio.fail_after(10):
        expired = server.token(1, ttl=-3600)
        foreign = jwt.encode(
            {"sub": "1", "exp": int(time.time()) + 60}, "f" * 64, algorithm="HS256"
        )
        unsigned = jwt.encode({"sub": "1", "exp": int(time.time()) + 60}, None, algorithm="none")
        async with server.client() as http:
            for token, message in (
                (expired, "token expired"),
                (foreign, "token signature is invalid"),
                (unsigned, "token algorithm is not allowed"),
            ):
                resp = await http.post("/chat/ticket", headers={"accessToken": token})
                assert assert_error(resp, 401, "unauthorized")["message"] == message
        assert server.state.metrics.auth_failures["expired"] == 1


async def test_ticket_cap_per_user(start_server: StartServer) -> None:
    with trio.fail_after(10):
        server = await start_server(auth={"max_tickets_per_user": 2})
        async with server.client() as http:
            h = {"accessToken": server.token(1)}
            assert (await http.post("/chat/ticket", headers=h)).status_code == 200
            assert (await http.post("/chat/ticket", headers=h)).status_code == 200
            assert_error(await http.post("/chat/ticket", headers=h), 429, "too_many_tickets")
            other = {"accessToken": server.token(2)}
            assert (await http.post("/chat/ticket", headers=other)).status_code == 200


async def test_ticket_endpoint_wants_post(server: Server) -> None:
    with trio.fail_after(10):
        async with server.client() as http:
            resp = await http.get("/chat/ticket", headers={"accessToken": server.token(1)})
        assert_error(resp, 405, "method_not_allowed")


# --- CORS ----------------------------------------------------------------------------------


async def test_preflight_from_an_allowed_origin(server: Server) -> None:
    with trio.fail_after(10):
        async with server.client() as http:
            resp = await http.options(
                "/chat/ticket",
                headers={
                    "Origin": ALLOWED,
                    "Access-Control-Request-Method": "POST",
                    "Access-Control-Request-Headers": "accesstoken, content-type",
                },
            )
            assert resp.status_code == 204
            assert resp.headers["access-control-allow-origin"] == ALLOWED
            allowed_headers = resp.headers["access-control-allow-headers"].lower()
            assert "accesstoken" in allowed_headers
            assert "POST" in resp.headers["access-control-allow-methods"]
            assert resp.headers["access-control-max-age"] == "600"
            assert "Origin" in resp.headers["vary"]
            # Without Access-Control-Request-Headers the default list names accessToken.
            resp = await http.options("/chat/ticket", headers={"Origin": ALLOWED})
            assert resp.status_code == 204
            assert "accesstoken" in resp.headers["access-control-allow-headers"].lower()
            assert "authorization" in resp.headers["access-control-allow-headers"].lower()
            # The real request then carries the CORS header too.
            resp = await http.post(
                "/chat/ticket", headers={"Origin": ALLOWED, "accessToken": server.token(1)}
            )
            assert resp.status_code == 200
            assert resp.headers["access-control-allow-origin"] == ALLOWED
            # So does an error answer, or the browser could not read it.
            resp = await http.post("/chat/ticket", headers={"Origin": ALLOWED})
            assert resp.status_code == 401
            assert resp.headers["access-control-allow-origin"] == ALLOWED


@pytest.mark.parametrize("origin", ["http://evil.example", "null", None])
async def test_preflight_from_other_origins_is_refused(server: Server, origin: str | None) -> None:
    with trio.fail_after(10):
        headers = {"Access-Control-Request-Method": "POST"}
        if origin is not None:
            headers["Origin"] = origin
        async with server.client() as http:
            resp = await http.options("/chat/ticket", headers=headers)
            assert_error(resp, 403, "origin_not_allowed")
            assert "access-control-allow-origin" not in resp.headers
            # A simple request from that origin gets no CORS header to read the answer by.
            resp = await http.post(
                "/chat/ticket",
                headers={"accessToken": server.token(1), **({"Origin": origin} if origin else {})},
            )
            assert "access-control-allow-origin" not in resp.headers


async def test_wildcard_origin_preflight(start_server: StartServer) -> None:
    with trio.fail_after(10):
        server = await start_server(auth={"allowed_origins": ["*"]})
        async with server.client() as http:
            resp = await http.options("/chat/ticket", headers={"Origin": "https://x.example"})
        assert resp.status_code == 204
        assert resp.headers["access-control-allow-origin"] == "https://x.example"


# --- admin API -------------------------------------------------------------------------------


async def test_create_room(server: Server) -> None:
    with trio.fail_after(10):
        async with server.client() as http:
            resp = await http.post(
                "/admin/rooms",
                json={"name": "  general ", "members": [3, 1, 3, "2"], "public": True},
                headers=admin_headers(server),
            )
            assert resp.status_code == 201
            room = resp.json()
            assert room == {
                "id": room["id"],
                "name": "general",
                "public": True,
                "members": [1, 2, 3],
            }
            assert isinstance(room["id"], int)
            resp = await http.post(
                "/admin/rooms", json={"name": "bare"}, headers=admin_headers(server)
            )
            assert resp.status_code == 201
            bare = resp.json()
            assert bare["id"] > room["id"]
            assert (bare["public"], bare["members"]) == (False, [])
            got = await http.get(f"/admin/rooms/{room['id']}", headers=admin_headers(server))
            assert got.json() == room
            missing = await http.get("/admin/rooms/999", headers=admin_headers(server))
            assert_error(missing, 404, "unknown_room")


async def test_admin_api_needs_an_admin_bearer_token(server: Server) -> None:
    with trio.fail_after(10):
        body = {"name": "r", "members": [1]}
        async with server.client() as http:
            resp = await http.post("/admin/rooms", json=body)
            assert_error(resp, 401, "unauthorized")
            resp = await http.post("/admin/rooms", json=body, headers=bearer(server.token(1)))
            assert_error(resp, 403, "forbidden")
            # An admin token in the accessToken header does not count: Bearer only.
            resp = await http.post(
                "/admin/rooms", json=body, headers={"accessToken": server.admin_token()}
            )
            assert_error(resp, 401, "unauthorized")
            expired = server.token(9000, "admin", admin=True, ttl=-3600)
            resp = await http.post("/admin/rooms", json=body, headers=bearer(expired))
            assert_error(resp, 401, "unauthorized")
            room = await create_room(server, [1])
            for method, url, kwargs in (
                ("POST", f"/admin/rooms/{room}/members", {"json": {"userId": 2}}),
                ("DELETE", f"/admin/rooms/{room}/members/1", {}),
                ("GET", f"/admin/rooms/{room}", {}),
            ):
                resp = await http.request(method, url, headers=bearer(server.token(1)), **kwargs)
                assert_error(resp, 403, "forbidden")
                resp = await http.request(method, url, **kwargs)
                assert_error(resp, 401, "unauthorized")
            assert server.state.rooms.get(room).members == {1}


@pytest.mark.parametrize(
    ("content", "code"),
    [
        (b"not json", "bad_json"),
        (b"[1, 2]", "bad_json"),
        (b"", "bad_json"),
        (b'{"members": [1]}', "bad_name"),
        (b'{"name": ""}', "bad_name"),
        (b'{"name": "   "}', "bad_name"),
        (b'{"name": 5}', "bad_name"),
        (b'{"name": "' + b"x" * 201 + b'"}', "bad_name"),
        (b'{"name": "r", "members": "1,2"}', "bad_members"),
        (b'{"name": "r", "members": [0]}', "bad_members"),
        (b'{"name": "r", "members": ["a"]}', "bad_members"),
        (b'{"name": "r", "members": [true]}', "bad_members"),
        (b'{"name": "r", "members": [1.5]}', "bad_members"),
        (b'{"name": "r", "members": [18446744073709551615]}', "bad_members"),
        (b'{"name": "r", "public": "yes"}', "bad_public"),
        (b'{"name": "r", "public": 1}', "bad_public"),
    ],
)
async def test_create_room_bad_bodies(server: Server, content: bytes, code: str) -> None:
    with trio.fail_after(10):
        async with server.client() as http:
            resp = await http.post(
                "/admin/rooms",
                content=content,
                headers={**admin_headers(server), "Content-Type": "application/json"},
            )
            assert_error(resp, 400, code)
            assert len(server.state.rooms) == 0
            ok = await http.post("/admin/rooms", json={"name": "r"}, headers=admin_headers(server))
            assert ok.status_code == 201


async def test_body_too_large(start_server: StartServer) -> None:
    with trio.fail_after(10):
        server = await start_server(http={"max_body_bytes": 100})
        async with server.client() as http:
            resp = await http.post(
                "/admin/rooms",
                json={"name": "x" * 200},
                headers=admin_headers(server),
            )
            assert_error(resp, 413, "body_too_large")


async def test_add_and_remove_members(server: Server) -> None:
    with trio.fail_after(10):
        room = await create_room(server, [1])
        h = admin_headers(server)
        async with server.client() as http:
            resp = await http.post(f"/admin/rooms/{room}/members", json={"userId": 2}, headers=h)
            assert resp.status_code == 200
            assert resp.json() == {"id": room, "name": "room", "public": False, "members": [1, 2]}
            # Adding again is harmless.
            resp = await http.post(f"/admin/rooms/{room}/members", json={"userId": "2"}, headers=h)
            assert resp.json()["members"] == [1, 2]
            resp = await http.delete(f"/admin/rooms/{room}/members/1", headers=h)
            assert resp.status_code == 200
            assert resp.json()["members"] == [2]
            # Removing a non-member is harmless too.
            resp = await http.delete(f"/admin/rooms/{room}/members/77", headers=h)
            assert resp.json()["members"] == [2]
            for body in ({}, {"userId": 0}, {"userId": "x"}, {"userId": True}, {"userId": -1}):
                resp = await http.post(f"/admin/rooms/{room}/members", json=body, headers=h)
                assert_error(resp, 400, "bad_user_id")
            resp = await http.delete(
                f"/admin/rooms/{room}/members/99999999999999999999999", headers=h
            )
            assert_error(resp, 400, "bad_user_id")
            resp = await http.post("/admin/rooms/999/members", json={"userId": 2}, headers=h)
            assert_error(resp, 404, "unknown_room")
            resp = await http.delete("/admin/rooms/999/members/2", headers=h)
            assert_error(resp, 404, "unknown_room")
            resp = await http.get(f"/admin/rooms/{room}", headers=h)
            assert resp.json()["members"] == [2]


# --- rooms and history -----------------------------------------------------------------------


async def test_my_rooms(server: Server) -> None:
    with trio.fail_after(10):
        a = await create_room(server, [1, 2], name="a")
        await create_room(server, [2], name="b")
        c = await create_room(server, [1], name="c", public=True)
        async with server.client() as http:
            resp = await http.get("/chat/rooms", headers={"accessToken": server.token(1)})
            assert resp.status_code == 200
            assert resp.json() == {
                "rooms": [
                    {"id": a, "name": "a", "public": False, "members": [1, 2], "unread": 0,
                     "lastMessage": None},
                    {"id": c, "name": "c", "public": True, "members": [1], "unread": 0,
                     "lastMessage": None},
                ]
            }
            resp = await http.get("/chat/rooms", headers=bearer(server.token(1)))
            assert [r["id"] for r in resp.json()["rooms"]] == [a, c]
            resp = await http.get("/chat/rooms", headers={"accessToken": server.token(3)})
            assert resp.json() == {"rooms": []}
            assert_error(await http.get("/chat/rooms"), 401, "unauthorized")
            await http.delete(f"/admin/rooms/{a}/members/1", headers=admin_headers(server))
            resp = await http.get("/chat/rooms", headers={"accessToken": server.token(1)})
            assert [r["id"] for r in resp.json()["rooms"]] == [c]


async def test_history_pages_newest_first(start_server: StartServer) -> None:
    with trio.fail_after(10):
        server = await start_server(chat={"history_max_limit": 4})
        room = await create_room(server, [1, 2])
        async with chat(server, 1, username="john") as ws:
            sent = [await roundtrip(ws, room, f"m{i}") for i in range(7)]
        ids = [m["id"] for m in sent]
        url = f"/chat/rooms/{room}/messages"
        h = {"accessToken": server.token(2)}
        async with server.client() as http:
            first = (await http.get(url, params={"limit": 3}, headers=h)).json()
            assert first["messages"] == sent[::-1][:3]  # the same shape as on the socket
            assert first["nextBefore"] == ids[4]
            second = (await http.get(url, params={"limit": 3, "before": ids[4]}, headers=h)).json()
            assert [m["id"] for m in second["messages"]] == ids[3:0:-1]
            assert second["nextBefore"] == ids[1]
            third = (await http.get(url, params={"limit": 3, "before": ids[1]}, headers=h)).json()
            assert [m["id"] for m in third["messages"]] == [ids[0]]
            assert third["nextBefore"] is None
            # No limit: the default, capped by history_max_limit.
            capped = (await http.get(url, headers=h)).json()
            assert [m["id"] for m in capped["messages"]] == ids[::-1][:4]
            big = (await http.get(url, params={"limit": 1000}, headers=h)).json()
            assert len(big["messages"]) == 4
            empty = await http.get(url, params={"before": ids[0]}, headers=bearer(server.token(1)))
            assert empty.json() == {"messages": [], "nextBefore": None}


async def test_history_is_for_members_only(server: Server) -> None:
    with trio.fail_after(10):
        room = await create_room(server, [1])
        public = await create_room(server, [1], public=True)
        async with server.client() as http:
            h = {"accessToken": server.token(2)}
            # Answered as a room that does not exist (issue 12, point 15).
            resp = await http.get(f"/chat/rooms/{room}/messages", headers=h)
            assert_error(resp, 404, "unknown_room")
            resp = await http.get(f"/chat/rooms/{public}/messages", headers=h)
            assert_error(resp, 404, "unknown_room")
            resp = await http.get("/chat/rooms/999/messages", headers=h)
            assert_error(resp, 404, "unknown_room")
            resp = await http.get(f"/chat/rooms/{room}/messages")
            assert_error(resp, 401, "unauthorized")


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"before": "0"}, "bad_before"),
        ({"before": "-1"}, "bad_before"),
        ({"before": "x"}, "bad_before"),
        ({"before": "1.5"}, "bad_before"),
        ({"before": "²"}, "bad_before"),
        ({"before": "99999999999999999999999"}, "bad_before"),
        ({"limit": "0"}, "bad_limit"),
        ({"limit": "-5"}, "bad_limit"),
        ({"limit": "ten"}, "bad_limit"),
    ],
)
async def test_history_bad_params(server: Server, params: dict[str, str], code: str) -> None:
    with trio.fail_after(10):
        room = await create_room(server, [1])
        async with server.client() as http:
            h = {"accessToken": server.token(1)}
            resp = await http.get(f"/chat/rooms/{room}/messages", params=params, headers=h)
            assert_error(resp, 400, code)
            resp = await http.get(f"/chat/rooms/{room}/messages", params={"before": ""}, headers=h)
            assert resp.status_code == 200


# --- health and the rest -----------------------------------------------------------------------


async def test_health_and_readiness(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    with trio.fail_after(10):
        async with server.client() as http:
            resp = await http.get("/healthz")
            assert (resp.status_code, resp.json()) == (200, {"status": "ok"})
            resp = await http.get("/readyz")
            assert (resp.status_code, resp.json()) == (200, {"status": "ready"})
            monkeypatch.setattr(server.state, "ready", False)
            resp = await http.get("/readyz")
            assert (resp.status_code, resp.json()) == (503, {"status": "not_ready"})
            assert (await http.get("/healthz")).status_code == 200


async def test_unknown_endpoints_are_json_404(server: Server) -> None:
    with trio.fail_after(10):
        async with server.client() as http:
            assert_error(await http.get("/nope"), 404, "not_found")
            assert_error(await http.get("/chat/rooms/abc/messages"), 404, "not_found")
            assert_error(await http.put("/healthz"), 405, "method_not_allowed")


async def test_unexpected_fault_is_a_json_500_and_the_server_carries_on(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trio.fail_after(10):
        room = await create_room(server, [1])

        async def broken(*_args: Any, **_kwargs: Any) -> Any:
            raise RuntimeError("disk on fire")

        monkeypatch.setattr(server.state.service, "history", broken)
        h = {"accessToken": server.token(1)}
        async with server.client() as http:
            resp = await http.get(f"/chat/rooms/{room}/messages", headers=h)
            body = assert_error(resp, 500, "server_error")
            assert "fire" not in body["message"]
            monkeypatch.undo()
            resp = await http.get(f"/chat/rooms/{room}/messages", headers=h)
            assert resp.status_code == 200
            assert (await http.get("/healthz")).status_code == 200
