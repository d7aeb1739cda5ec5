"""Throwing a user out (issue 12, point 14): `POST /admin/users/{id}/disconnect` closes
every session of the user on every protocol at once; with `{"revokeTokens": true}` it
also refuses every credential issued to them before that moment (JWTs, JWT passcodes,
issued STOMP logins, tickets), across restarts. And `/chat-ws/disconnect`, the user's
own, ends their `/chat` sessions too.

Over real sockets. Revocation compares a credential's issue time with the moment of the
revocation, both on the wall clock; a fake one (`WallClock`) makes "before" and "after"
exact instead of a matter of which second the test happened to run in.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
import trio
from trio_websocket import open_websocket_url

from chatd.net.websocket import CLOSE_DISCONNECTED_BY_ADMIN, CLOSE_NORMAL, CLOSE_UNSUPPORTED_DATA
from chatd.store import Store, schema

from ._chat import chat, chat_url, create_room, expect_close, recv_message, roundtrip
from .conftest import SECRET, Server, StartServer
from .stomp_client import (
    assert_carries_on,
    bearer,
    issue_login,
    next_event_of,
    open_stomp,
    stomp_user,
)

ADMIN_CLOSE = (CLOSE_DISCONNECTED_BY_ADMIN, "disconnected by an administrator")


class WallClock:
    """The server's wall clock for revocations and issued logins, moved by the test. It
    starts a minute behind the real time, so a JWT minted now (iat: the real second) is
    issued after any revocation this clock makes."""

    def __init__(self, server: Server) -> None:
        self.now = time.time() - 60
        server.state.service.expiry.clock = self
        server.state.stomp_logins._clock = self

    def __call__(self) -> float:
        return self.now


def jwt_for(user_id: int, *, iat: float | None) -> str:
    """A token of the test server's secret with a chosen `iat` (None: without one)."""
    claims: dict[str, Any] = {"sub": str(user_id), "exp": int(time.time()) + 3600}
    if iat is not None:
        claims["iat"] = int(iat)
    return jwt.encode(claims, SECRET, algorithm="HS256")


async def throw_out(server: Server, user_id: int, body: Any = None) -> Any:
    async with server.client() as http:
        kw: dict[str, Any] = {} if body is None else {"json": body}
        return await http.post(
            f"/admin/users/{user_id}/disconnect", headers=bearer(server.admin_token()), **kw
        )


async def ticket_for(server: Server, token: str) -> str:
    async with server.client() as http:
        resp = await http.post("/chat/ticket", headers={"accessToken": token})
    assert resp.status_code == 200, resp.text
    return str(resp.json()["ticket"])


async def rooms_status(server: Server, token: str) -> int:
    async with server.client() as http:
        resp = await http.get("/chat/rooms", headers=bearer(token))
    return resp.status_code


async def test_admin_disconnect_closes_every_session_of_the_user_at_once(server: Server) -> None:
    with trio.fail_after(10):
        room = await create_room(server, [1, 2])
        token = server.token(1)
        login, passcode = await issue_login(server, 1)
        async with (
            stomp_user(server, 2, rooms=[room]) as watcher,
            chat(server, 2) as other_chat,
            chat(server, 1) as phone,
            chat(server, 1) as laptop,
            open_stomp(server, "tcp") as by_login,
            open_stomp(server, "ws") as by_jwt,
        ):
            await by_login.connect(login, passcode)
            await by_jwt.connect("anyone", token)
            resp = await throw_out(server, 1)
            assert resp.status_code == 200, resp.text
            assert resp.json() == {"userId": 1, "closed": 4, "revoked": False}
            for ws in (phone, laptop):
                reason = await expect_close(ws)
                assert (reason.code, reason.reason) == ADMIN_CLOSE
            for c in (by_login, by_jwt):
                await c.expect_error(
                    "Disconnected by an administrator", "disconnected by an administrator"
                )
            # Nothing was revoked: the same JWT and login come straight back.
            for login_, passcode_ in ((login, passcode), ("anyone", token)):
                async with open_stomp(server) as c:
                    await c.connect(login_, passcode_)
            async with chat(server, 1) as again:
                await roundtrip(again, room, "back")
            # The other user's sessions were never touched, on either protocol.
            assert (await recv_message(other_chat))["content"] == "back"
            _, body = await next_event_of(watcher, "new_message")
            assert body["message"]["content"] == "back"
            await assert_carries_on(server, room, watcher, user_id=2)


async def test_revoke_tokens_refuses_every_credential_issued_before(server: Server) -> None:
    with trio.fail_after(10):
        clock = WallClock(server)
        room = await create_room(server, [1])
        before = clock.now - 1
        old_jwt = jwt_for(1, iat=before)
        no_iat = jwt_for(1, iat=None)
        old_ticket = await ticket_for(server, old_jwt)
        clock.now = before
        login, passcode = await issue_login(server, 1)
        # All good before the revocation, a token without `iat` too.
        for token in (old_jwt, no_iat):
            assert await rooms_status(server, token) == 200
        async with open_stomp(server) as c:
            await c.connect("anyone", old_jwt)
            await c.disconnect()

        clock.now = before + 1
        resp = await throw_out(server, 1, {"revokeTokens": True})
        assert resp.json() == {"userId": 1, "closed": 0, "revoked": True}

        for token in (old_jwt, no_iat):
            async with server.client() as http:
                refused = await http.get("/chat/rooms", headers=bearer(token))
            assert refused.status_code == 401
            assert refused.json() == {"error": "unauthorized", "message": "token revoked"}
        for login_, passcode_ in ((login, passcode), ("anyone", old_jwt), ("anyone", no_iat)):
            async with open_stomp(server) as c:
                await c.send_connect(login_, passcode_)
                await c.expect_error("Bad CONNECT", f"Access refused for user '{login_}'")
        async with open_websocket_url(chat_url(server, old_ticket)) as ws:
            reason = await expect_close(ws)
        assert (reason.code, reason.reason) == (CLOSE_UNSUPPORTED_DATA, "ticket revoked")
        assert server.state.metrics.tickets_rejected["revoked"] == 1

        # What was issued after the revocation works: a new JWT (iat: now), a ticket and a
        # login bought with it. Other users were never affected.
        async with chat(server, 1) as ws:
            await roundtrip(ws, room, "new token")
        clock.now = before + 2
        async with stomp_user(server, 1, rooms=[room]):
            pass
        assert await rooms_status(server, jwt_for(2, iat=before)) == 200


async def test_revoke_tokens_closes_the_sessions_too(server: Server) -> None:
    with trio.fail_after(10):
        WallClock(server)
        async with chat(server, 1) as ws, open_stomp(server) as c:
            await c.connect("anyone", jwt_for(1, iat=time.time() - 120))
            resp = await throw_out(server, 1, {"revokeTokens": True})
            assert resp.json() == {"userId": 1, "closed": 2, "revoked": True}
            reason = await expect_close(ws)
            assert (reason.code, reason.reason) == ADMIN_CLOSE
            await c.expect_error(
                "Disconnected by an administrator", "disconnected by an administrator"
            )


async def test_revocation_survives_a_restart(start_server: StartServer) -> None:
    with trio.fail_after(10):
        first = await start_server()
        clock = WallClock(first)
        before = clock.now - 1
        old_jwt = jwt_for(1, iat=before)
        clock.now = before
        login, passcode = await issue_login(first, 1)
        clock.now = before + 1
        resp = await throw_out(first, 1, {"revokeTokens": True})
        assert resp.status_code == 200
        await first.stop()

        second = await start_server()
        assert await rooms_status(second, old_jwt) == 401
        assert await rooms_status(second, jwt_for(1, iat=None)) == 401
        assert await rooms_status(second, second.token(1)) == 200
        async with open_stomp(second) as c:
            await c.send_connect(login, passcode)
            await c.expect_error("Bad CONNECT", f"Access refused for user '{login}'")


async def test_a_later_logout_keeps_the_admin_revocation(server: Server) -> None:
    """`/chat-ws/disconnect` revokes only logins, and only moves their moment forward: it
    never lifts the admin's revocation of the tokens."""
    with trio.fail_after(10):
        clock = WallClock(server)
        old_jwt = jwt_for(1, iat=clock.now - 1)
        await throw_out(server, 1, {"revokeTokens": True})
        clock.now += 1
        async with server.client() as http:
            resp = await http.post("/chat-ws/disconnect", headers=bearer(server.token(1)))
        assert resp.status_code == 200
        assert await rooms_status(server, old_jwt) == 401
        assert await rooms_status(server, server.token(1)) == 200


@pytest.mark.parametrize(
    ("user_id", "body", "status", "code"),
    [
        (0, None, 400, "bad_user_id"),
        (10**19, None, 400, "bad_user_id"),
        (1, {"revokeTokens": "yes"}, 400, "bad_revoke_tokens"),
        (1, [True], 400, "bad_json"),
    ],
)
async def test_bad_requests(
    server: Server, user_id: int, body: Any, status: int, code: str
) -> None:
    with trio.fail_after(10):
        resp = await throw_out(server, user_id, body)
        assert (resp.status_code, resp.json()["error"]) == (status, code)


async def test_only_an_admin_may_throw_a_user_out(server: Server) -> None:
    with trio.fail_after(10):
        async with chat(server, 1) as ws, server.client() as http:
            for headers, status, code in [
                ({}, 401, "unauthorized"),
                (bearer(server.token(2)), 403, "forbidden"),
                (bearer(server.token(1)), 403, "forbidden"),
            ]:
                resp = await http.post("/admin/users/1/disconnect", headers=headers)
                assert (resp.status_code, resp.json()["error"]) == (status, code)
            await roundtrip(ws, await create_room(server, [1]), "still here")


async def test_own_disconnect_ends_chat_sessions_too(server: Server) -> None:
    with trio.fail_after(10):
        room = await create_room(server, [1])
        token = server.token(1)
        async with chat(server, 1) as ws, stomp_user(server, 1) as c:
            async with server.client() as http:
                resp = await http.post("/chat-ws/disconnect", headers=bearer(token))
            assert resp.json() == {"status": "disconnected", "closedSessions": 2}
            reason = await expect_close(ws)
            assert (reason.code, reason.reason) == (CLOSE_NORMAL, "disconnected by request")
            await c.expect_error("Disconnected by request", "disconnected by request")
        # The JWT itself stays good: the app connects again when it wants to.
        async with chat(server, 1) as again:
            await roundtrip(again, room, "back")


async def test_a_logout_recorded_before_the_upgrade_still_counts(tmp_path: Path) -> None:
    """Schema 4 turns the STOMP logins' revocation table into the one list: a database of
    schema 3 keeps its users' logouts, and gains the tokens' column, empty."""
    path = tmp_path / "v3.db"
    conn = sqlite3.connect(path, isolation_level=None)
    for version in (1, 2, 3):
        conn.executescript(schema._MIGRATIONS[version])
    conn.execute("PRAGMA user_version = 3")
    conn.execute("INSERT INTO stomp_revocations(user_id, revoked_at) VALUES (7, 1234.5)")
    conn.close()
    store = Store(path)
    try:
        assert store.load_revocations_sync() == {7: (1234.5, None)}
        await store.revoke_tokens(8, 99.0)
        await store.revoke_tokens(7, 2000.0)
        await store.revoke_logins(7, 1500.0)  # earlier than what is kept: no change
        assert store.load_revocations_sync() == {7: (2000.0, 2000.0), 8: (99.0, 99.0)}
    finally:
        await store.aclose()
