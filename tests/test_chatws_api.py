"""The /chat-ws/* HTTP API of the STOMP guide, black-box over real HTTP: each endpoint's
success shape, its JSON errors (400, 401, 403, 404, 429), idempotent send-message, and
join-room for public and invited rooms. Errors first."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from ._chat import admin_headers, history
from .conftest import SECRET, Server, StartServer
from .stomp_client import (
    bearer,
    make_room,
    next_event_of,
    open_stomp,
    post_json,
    room_dest,
    stomp_user,
    user_dest,
)

ENDPOINTS = [
    "/chat-ws/connect",
    "/chat-ws/send-message",
    "/chat-ws/typing-start",
    "/chat-ws/typing-end",
    "/chat-ws/join-room",
    "/chat-ws/leave-room/1",
    "/chat-ws/read",
    "/chat-ws/disconnect",
]
UNKNOWN = 424242


def assert_error(resp: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"error", "message"}, body
    assert body["error"] == code, body
    assert isinstance(body["message"], str) and body["message"], body
    return dict(body)


# --- 401 ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ENDPOINTS)
async def test_unauthenticated_is_401(server: Server, path: str) -> None:
    import jwt

    cases = {
        "none": {},
        "garbage": bearer("not.a.jwt"),
        "bearer-no-token": {"Authorization": "Bearer"},
        "wrong-secret": bearer(jwt.encode({"sub": "1"}, "y" * 40, algorithm="HS256")),
        "expired": bearer(server.token(1, ttl=-3600)),
        "basic": {"Authorization": "Basic dXNlcjpwYXNz"},
    }
    with trio.fail_after(10):
        room = await make_room(server, [1])
        async with server.client() as http:
            for case, headers in cases.items():
                resp = await http.post(
                    path, headers=headers, json={"roomId": room, "message": {"content": "x"}}
                )
                assert_error(resp, 401, "unauthorized")
                assert resp.headers["www-authenticate"] == 'Bearer realm="chatd"', case
        # Nothing happened: no message stored.
        assert await server.state.store.history(room, None, 10) == []


# --- 400 ---------------------------------------------------------------------------------


BODY_PATHS = [
    "/chat-ws/send-message",
    "/chat-ws/typing-start",
    "/chat-ws/typing-end",
    "/chat-ws/join-room",
    "/chat-ws/read",
]


@pytest.mark.parametrize("path", BODY_PATHS)
async def test_body_not_a_json_object_is_400(server: Server, path: str) -> None:
    with trio.fail_after(10):
        async with server.client() as http:
            for raw in (b"{not json", b"[1, 2]", b'"roomId"', b"null", b""):
                resp = await http.post(
                    path,
                    content=raw,
                    headers={**bearer(server.token(1)), "Content-Type": "application/json"},
                )
                assert_error(resp, 400, "bad_json")


@pytest.mark.parametrize("path", BODY_PATHS)
async def test_bad_room_id_is_400(server: Server, path: str) -> None:
    with trio.fail_after(10):
        async with server.client() as http:
            for room_id in (None, "abc", 0, -1, 1.5, True, [1], "1e3", "", 2**63):
                body: dict[str, Any] = {"roomId": room_id, "messageId": 1}
                if path.endswith("send-message"):
                    body["message"] = {"content": "hi"}
                if room_id is None:
                    del body["roomId"]
                resp = await http.post(path, headers=bearer(server.token(1)), json=body)
                assert_error(resp, 400, "bad_room_id")


@pytest.mark.parametrize(
    ("message", "code"),
    [
        (None, "bad_message"),
        ("just text", "bad_message"),
        ({}, "bad_content"),
        ({"content": ""}, "empty_content"),
        ({"content": "   "}, "empty_content"),
        ({"content": 7}, "bad_content"),
        ({"content": "x" * 4001}, "content_too_long"),
        ({"content": "x", "message_type": "video"}, "bad_message_type"),
    ],
)
async def test_send_message_bad_message_is_400(server: Server, message: Any, code: str) -> None:
    with trio.fail_after(10):
        room = await make_room(server, [1])
        body = {"roomId": room} | ({"message": message} if message is not None else {})
        resp = await post_json(server, "/chat-ws/send-message", 1, body)
        assert_error(resp, 400, code)
        assert await server.state.store.history(room, None, 10) == []


@pytest.mark.parametrize("message_id", [None, "x", 0, -5, True])
async def test_read_bad_message_id_is_400(server: Server, message_id: Any) -> None:
    with trio.fail_after(10):
        room = await make_room(server, [1])
        body = {"roomId": room} | ({"messageId": message_id} if message_id is not None else {})
        resp = await post_json(server, "/chat-ws/read", 1, body)
        assert_error(resp, 400, "bad_message_id")


# --- 404 (a room one is not in, or none) -------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/chat-ws/send-message", "/chat-ws/typing-start", "/chat-ws/typing-end"]
)
async def test_non_member_and_unknown_room_are_both_404(server: Server, path: str) -> None:
    """A room one is not in answers as one that does not exist (issue 12, point 15)."""
    with trio.fail_after(10):
        room = await make_room(server, [2])
        for room_id, status, code in [(room, 404, "unknown_room"), (UNKNOWN, 404, "unknown_room")]:
            body = {"roomId": room_id, "message": {"content": "hi"}}
            assert_error(await post_json(server, path, 1, body), status, code)
        assert await server.state.store.history(room, None, 10) == []


async def test_join_room_errors(server: Server) -> None:
    with trio.fail_after(10):
        private = await make_room(server, [2], name="private")
        assert_error(
            await post_json(server, "/chat-ws/join-room", 1, {"roomId": private}),
            404,
            "unknown_room",
        )
        assert_error(
            await post_json(server, "/chat-ws/join-room", 1, {"roomId": UNKNOWN}),
            404,
            "unknown_room",
        )
        assert 1 not in server.state.rooms.get(private).members


async def test_leave_room_errors(server: Server) -> None:
    with trio.fail_after(10):
        room = await make_room(server, [2])
        assert_error(await post_json(server, f"/chat-ws/leave-room/{room}", 1), 404, "unknown_room")
        assert_error(
            await post_json(server, f"/chat-ws/leave-room/{UNKNOWN}", 1), 404, "unknown_room"
        )
        assert_error(await post_json(server, "/chat-ws/leave-room/abc", 1), 404, "not_found")


async def test_read_errors(server: Server) -> None:
    with trio.fail_after(10):
        room = await make_room(server, [1])
        other = await make_room(server, [1, 2])
        theirs = await make_room(server, [2])
        resp = await post_json(
            server, "/chat-ws/send-message", 1, {"roomId": other, "message": {"content": "x"}}
        )
        mid = resp.json()["message"]["id"]
        for body, status, code in [
            ({"roomId": room, "messageId": mid}, 404, "unknown_message"),  # another room's
            ({"roomId": room, "messageId": mid + 100}, 404, "unknown_message"),
            ({"roomId": theirs, "messageId": mid}, 404, "unknown_room"),
            ({"roomId": UNKNOWN, "messageId": mid}, 404, "unknown_room"),
        ]:
            assert_error(await post_json(server, "/chat-ws/read", 1, body), status, code)


async def test_wrong_method_is_405(server: Server) -> None:
    with trio.fail_after(10):
        async with server.client() as http:
            resp = await http.get("/chat-ws/connect", headers=bearer(server.token(1)))
        assert_error(resp, 405, "method_not_allowed")


# --- 429 ---------------------------------------------------------------------------------


async def test_send_message_rate_limit_is_429(start_server: StartServer) -> None:
    with trio.fail_after(10):
        # One message of burst and a refill far slower than the test: the second is refused.
        server = await start_server(chat={"rate_per_second": 0.01, "rate_burst": 1})
        room = await make_room(server, [1, 2])
        body = {"roomId": room, "message": {"content": "one"}}
        assert (await post_json(server, "/chat-ws/send-message", 1, body)).status_code == 200
        body["message"] = {"content": "two"}
        err = assert_error(
            await post_json(server, "/chat-ws/send-message", 1, body), 429, "rate_limited"
        )
        assert err["message"] == "too many messages; slow down"
        # Per user: another user still sends.
        body["message"] = {"content": "three"}
        assert (await post_json(server, "/chat-ws/send-message", 2, body)).status_code == 200
        assert [m["content"] for m in await history(server, 1, room)] == ["one", "three"]
        assert server.state.metrics.rate_limited["http"] == 1


# --- success shapes ----------------------------------------------------------------------


async def test_connect_shape(start_server: StartServer) -> None:
    with trio.fail_after(10):
        server = await start_server(stomp={"public_url": "wss://chat.example.test/ws"})
        r2 = await make_room(server, [5, 6], name="상담방 #2")
        r1 = await make_room(server, [5], name="상담방 #1")
        await make_room(server, [6], name="not mine")
        await make_room(server, [6], name="public, not joined", public=True)
        async with server.client() as http:
            resp = await http.post(
                "/chat-ws/connect",
                headers=bearer(server.token(5, "kim", email="kim@example.com", user_type="user")),
            )
        assert resp.status_code == 200
        body = resp.json()
        info = body["connectionInfo"]
        # One per room of the user, by room id.
        subscriptions = [
            {"destination": room_dest(r2), "roomId": r2, "roomName": "상담방 #2"},
            {"destination": room_dest(r1), "roomId": r1, "roomName": "상담방 #1"},
        ]
        assert body == {
            "status": "success",
            "connectionInfo": {
                "stompUrl": "wss://chat.example.test/ws",
                "username": "chatd-user-5",
                "password": info["password"],
                "vhost": "/",
                # The guide's React Native connectToChat(connectionInfo) reads them here.
                "subscriptions": subscriptions,
            },
            # Where the guide's sample response has them.
            "subscriptions": subscriptions,
            # Beyond the guide: the user's own queue and name.
            "userDestination": user_dest(5),
            "userInfo": {
                "userId": 5,
                "username": "kim",
                "email": "kim@example.com",
                "userType": "user",
            },
        }
        assert isinstance(info["password"], str) and len(info["password"]) > 20
        # The pair logs in as the user.
        async with open_stomp(server) as c:
            await c.connect(info["username"], info["password"], host=info["vhost"])
            await c.subscribe(user_dest(5))


async def test_connect_shape_without_rooms_or_optional_claims(server: Server) -> None:
    with trio.fail_after(10):
        resp = await post_json(server, "/chat-ws/connect", 8)
        body = resp.json()
        assert body["subscriptions"] == body["connectionInfo"]["subscriptions"] == []
        assert body["userInfo"] == {
            "userId": 8,
            "username": "user8",
            "email": None,
            "userType": None,
        }
        # [stomp] public_url left empty: /ws where the STOMP WebSocket listener is bound.
        port = server.running.stomp_ws_port
        assert body["connectionInfo"]["stompUrl"] == f"ws://127.0.0.1:{port}/ws"
        # Each call issues a new pair; the old one keeps working (until it expires).
        again = (await post_json(server, "/chat-ws/connect", 8)).json()["connectionInfo"]
        first = body["connectionInfo"]
        for pair in (first, again):
            async with open_stomp(server) as c:
                await c.connect(pair["username"], pair["password"])


async def test_send_message_shape_and_delivery(server: Server) -> None:
    with trio.fail_after(10):
        room = await make_room(server, [1, 2])
        async with stomp_user(server, 2, rooms=[room]) as sub:
            resp = await post_json(
                server,
                "/chat-ws/send-message",
                1,
                {"roomId": room, "message": {"message_type": "text", "content": "안녕하세요"}},
            )
            assert resp.status_code == 200
            body = resp.json()
            msg = body["message"]
            assert body == {"status": "success", "duplicate": False, "message": msg}
            assert set(msg) == {
                "id",
                "room_id",
                "content",
                "message_type",
                "sender_id",
                "sender_name",
                "sender_profile_image",
                "created_at",
            }
            assert (msg["room_id"], msg["content"], msg["message_type"], msg["sender_id"]) == (
                room,
                "안녕하세요",
                "text",
                1,
            )
            # Subscribers get the same message object inside new_message.
            _, event = await sub.expect_message("new_message")
            assert event["message"] == msg


@pytest.mark.parametrize("where", ["top-level", "inside-message"])
async def test_send_message_is_idempotent_with_client_message_id(
    server: Server, where: str
) -> None:
    with trio.fail_after(10):
        room = await make_room(server, [1, 2])
        async with stomp_user(server, 2, rooms=[room]) as sub:
            inner = {"message_type": "text", "content": "exactly once"}
            if where == "top-level":
                body = {"roomId": room, "clientMessageId": "retry-1", "message": inner}
            else:
                body = {"roomId": room, "message": {**inner, "clientMessageId": "retry-1"}}
            answers = [
                (await post_json(server, "/chat-ws/send-message", 1, body)).json() for _ in range(3)
            ]
            assert [a["duplicate"] for a in answers] == [False, True, True]
            assert len({a["message"]["id"] for a in answers}) == 1
            assert answers[0]["message"] == answers[2]["message"]
            # Delivered once: the next event after it is the next message.
            _, event = await sub.expect_message("new_message")
            assert event["message"]["id"] == answers[0]["message"]["id"]
            await post_json(
                server, "/chat-ws/send-message", 1, {"roomId": room, "message": {"content": "next"}}
            )
            _, event = await sub.expect_message("new_message")
            assert event["message"]["content"] == "next"
        assert [m["content"] for m in await history(server, 1, room)] == ["exactly once", "next"]


async def test_client_message_id_is_per_user(server: Server) -> None:
    with trio.fail_after(10):
        room = await make_room(server, [1, 2])
        ids = set()
        for uid in (1, 2):
            resp = await post_json(
                server,
                "/chat-ws/send-message",
                uid,
                {"roomId": room, "clientMessageId": "same", "message": {"content": f"from {uid}"}},
            )
            assert resp.json()["duplicate"] is False
            ids.add(resp.json()["message"]["id"])
        assert len(ids) == 2


async def test_client_message_id_reused_in_another_room(server: Server) -> None:
    """Idempotency is per room: the same clientMessageId in another room stores a new
    message there (never answers with another room's message)."""
    with trio.fail_after(10):
        a = await make_room(server, [1])
        b = await make_room(server, [1])
        for room in (a, b):
            resp = await post_json(
                server,
                "/chat-ws/send-message",
                1,
                {"roomId": room, "clientMessageId": "1", "message": {"content": f"to {room}"}},
            )
            assert resp.status_code == 200
            assert resp.json()["duplicate"] is False
            assert resp.json()["message"]["room_id"] == room
        for room in (a, b):
            assert [m["content"] for m in await history(server, 1, room)] == [f"to {room}"]


async def test_typing_shapes(server: Server) -> None:
    with trio.fail_after(10):
        room = await make_room(server, [1])
        for path in ("/chat-ws/typing-start", "/chat-ws/typing-end", "/chat-ws/typing-end"):
            resp = await post_json(server, path, 1, {"roomId": room})
            assert resp.status_code == 200
            assert resp.json() == {"status": "success"}


async def test_join_room_public_and_invited(server: Server) -> None:
    with trio.fail_after(10):
        public = await make_room(server, [2], public=True, name="lobby")
        private = await make_room(server, [2], name="vip")
        async with server.client() as http:
            resp = await http.post(
                f"/admin/rooms/{private}/invites", json={"userId": 1}, headers=admin_headers(server)
            )
            assert resp.status_code == 200
        async with stomp_user(server, 1, user_queue=True) as c:
            for room in (public, private):
                resp = await post_json(server, "/chat-ws/join-room", 1, {"roomId": room})
                assert resp.status_code == 200
                assert resp.json() == {
                    "status": "joined",
                    "roomId": room,
                    "subscription": room_dest(room),
                }
                _, event = await c.expect_message("room_joined")
                assert event["roomId"] == room
                # As the guide does: subscribe to result.subscription.
                await c.subscribe(resp.json()["subscription"])
            # Joining again is harmless (and announces nothing).
            resp = await post_json(server, "/chat-ws/join-room", 1, {"roomId": str(public)})
            assert resp.json() == {
                "status": "joined",
                "roomId": public,
                "subscription": room_dest(public),
            }
            # The member can now post, and the room's subscribers hear it.
            resp = await post_json(
                server,
                "/chat-ws/send-message",
                1,
                {"roomId": private, "message": {"content": "hi"}},
            )
            _, event = await next_event_of(c, "new_message")
            assert event["message"]["content"] == "hi" and event["roomId"] == private
        # The invitation was used up: after leaving, joining again is refused.
        assert (await post_json(server, f"/chat-ws/leave-room/{private}", 1)).status_code == 200
        assert_error(
            await post_json(server, "/chat-ws/join-room", 1, {"roomId": private}),
            404,
            "unknown_room",
        )


async def test_leave_room_shape(server: Server) -> None:
    with trio.fail_after(10):
        room = await make_room(server, [1, 2])
        resp = await post_json(server, f"/chat-ws/leave-room/{room}", 1)
        assert resp.status_code == 200
        assert resp.json() == {"status": "left", "roomId": room}
        assert_error(
            await post_json(
                server, "/chat-ws/send-message", 1, {"roomId": room, "message": {"content": "x"}}
            ),
            404,
            "unknown_room",
        )
        listed = (await post_json(server, "/chat-ws/connect", 1)).json()["subscriptions"]
        assert listed == []


async def test_read_shape(server: Server) -> None:
    with trio.fail_after(10):
        room = await make_room(server, [1, 2])
        sent = await post_json(
            server, "/chat-ws/send-message", 1, {"roomId": room, "message": {"content": "x"}}
        )
        mid = sent.json()["message"]["id"]
        resp = await post_json(server, "/chat-ws/read", 2, {"roomId": str(room), "messageId": mid})
        assert resp.status_code == 200
        body = resp.json()
        assert body == {
            "status": "success",
            "roomId": room,
            "messageId": mid,
            "readAt": body["readAt"],
        }
        assert body["readAt"].endswith("Z")


async def test_disconnect_shape(server: Server) -> None:
    with trio.fail_after(10):
        resp = await post_json(server, "/chat-ws/disconnect", 1)
        assert resp.status_code == 200
        assert resp.json() == {"status": "disconnected", "closedSessions": 0}


async def test_access_token_header_is_accepted_too(server: Server) -> None:
    """The ticket guide's `accessToken` header works on these endpoints as well."""
    with trio.fail_after(10):
        async with server.client() as http:
            resp = await http.post("/chat-ws/connect", headers={"accessToken": server.token(3)})
        assert resp.status_code == 200
        assert resp.json()["userInfo"]["userId"] == 3


# --- stompUrl: [stomp] public_url, or derived from where /ws listens ------------------------


async def stomp_url(server: Server) -> str:
    resp = await post_json(server, "/chat-ws/connect", 8)
    assert resp.status_code == 200, resp.text
    return str(resp.json()["connectionInfo"]["stompUrl"])


async def test_stomp_url_is_derived_from_the_websocket_listener(
    start_server: StartServer, tmp_path: Path
) -> None:
    with trio.fail_after(20):
        # Port 0 in the config: the URL names the port bound.
        server = await start_server()
        port = server.running.stomp_ws_port
        assert await stomp_url(server) == f"ws://127.0.0.1:{port}/ws"
        # And it stays derived across a reload that leaves public_url empty.
        config = tmp_path / "reload.toml"
        config.write_text(
            f'[store]\npath = "{tmp_path / "chatd.db"}"\n[auth]\njwt_secret = "{SECRET}"\n'
        )
        assert server.running.reload(str(config))
        assert await stomp_url(server) == f"ws://127.0.0.1:{port}/ws"
        # No STOMP WebSocket listener of its own: /ws on the HTTP listener.
        other = await start_server(stomp={"websocket_listen": []})
        assert await stomp_url(other) == f"ws://127.0.0.1:{other.running.http_port}/ws"
        # IPv6 in brackets.
        v6 = await start_server(stomp={"websocket_listen": ["[::1]:0"]})
        assert await stomp_url(v6) == f"ws://[::1]:{v6.running.stomp_ws_port}/ws"


async def test_a_wildcard_listener_derives_localhost_and_warns(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(20):
        server = await start_server(stomp={"websocket_listen": ["0.0.0.0:0"]})
        port = server.running.stomp_ws_port
        assert await stomp_url(server) == f"ws://localhost:{port}/ws"
        (warning,) = [r for r in caplog.records if "public_url is unset" in r.getMessage()]
        assert warning.levelno == logging.WARNING
        assert "set public_url to the URL clients reach" in warning.getMessage()
        # A configured public_url is handed out as it is, with no warning.
        caplog.clear()
        configured = await start_server(
            stomp={"websocket_listen": ["0.0.0.0:0"], "public_url": "wss://chat.example.org/ws"}
        )
        assert await stomp_url(configured) == "wss://chat.example.org/ws"
        assert not [r for r in caplog.records if "public_url" in r.getMessage()]
