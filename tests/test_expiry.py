"""A session ends when the token that opened it expires (issue 12, point 13).

Over real sockets: a `/chat` session (its ticket carries the JWT's `exp`), a STOMP session
whose passcode is a JWT and one whose passcode is an issued login. The server's wall clock
is a fake one the test moves (`WallClock`): tokens state their expiry in Unix seconds,
and trio's clock stays real so every `fail_after` holds on a busy machine. The expiry
task itself (one heap for every session) is tested on trio's MockClock, without sockets.
"""

from __future__ import annotations

import time
import weakref

import jwt
import pytest
import trio
import trio.testing
from trio_websocket import open_websocket_url

from chatd.expiry import MAX_SLEEP, Expiry
from chatd.net.websocket import CLOSE_TOKEN_EXPIRED

from ._chat import chat, chat_url, create_room, expect_close, recv_message, roundtrip
from .conftest import Server, StartServer
from .stomp_client import (
    KINDS,
    Kind,
    StompClient,
    issue_login,
    open_stomp,
    room_dest,
    stomp_user,
)


class WallClock:
    """The server's wall clock, standing still unless the test moves it. It starts at the
    real time, so tokens minted now are valid at the start; moving it wakes the expiry
    task (which sleeps on trio's clock) as a real jump of the clock would after at most
    MAX_SLEEP seconds."""

    def __init__(self, server: Server) -> None:
        self.now = time.time()
        self._expiry = server.state.service.expiry
        self._expiry.clock = self
        server.state.stomp_logins._clock = self

    def __call__(self) -> float:
        return self.now

    async def set(self, when: float) -> None:
        """Move to `when`, and return once the expiry task has looked at the clock."""
        self.now = when
        self._expiry.wake()
        await trio.testing.wait_all_tasks_blocked()


def valid_until(server: Server, token: str) -> float:
    """The last instant the server takes `token`: its exp plus the configured leeway."""
    claims = jwt.decode(token, options={"verify_signature": False})
    return float(claims["exp"]) + server.cfg.auth.leeway_seconds


@pytest.mark.parametrize("leeway", [0.0, 30.0])
async def test_chat_session_ends_at_token_expiry_plus_leeway(
    start_server: StartServer, leeway: float
) -> None:
    with trio.fail_after(10):
        server = await start_server(auth={"leeway_seconds": leeway})
        clock = WallClock(server)
        room = await create_room(server, [1, 2])
        token = server.token(1, ttl=600)
        end = valid_until(server, token)
        ticket = await new_ticket_for(server, token)
        async with chat(server, 2, ttl=3600) as bystander:
            async with open_websocket_url(chat_url(server, ticket)) as ws:
                await clock.set(end - 0.001)
                last = await roundtrip(ws, room, "still in time")
                await recv_message(bystander)
                await clock.set(end)
                reason = await expect_close(ws)
                assert (reason.code, reason.reason) == (CLOSE_TOKEN_EXPIRED, "token expired")
            # Only that session ended: the bystander (a later token) carries on.
            missed = await roundtrip(bystander, room, "while 1 was away")
            # The guide's client re-authenticates, and resumes with `since`.
            async with chat(server, 1, since=last["id"]) as again:
                assert (await recv_message(again))["id"] == missed["id"]
                await roundtrip(again, room, "back")


async def test_ticket_whose_token_expired_meanwhile_is_refused_with_4001(
    server: Server,
) -> None:
    with trio.fail_after(10):
        clock = WallClock(server)
        token = server.token(1, ttl=600)
        ticket = await new_ticket_for(server, token)
        await clock.set(valid_until(server, token))
        async with open_websocket_url(chat_url(server, ticket)) as ws:
            reason = await expect_close(ws)
        assert (reason.code, reason.reason) == (CLOSE_TOKEN_EXPIRED, "token expired")


@pytest.mark.parametrize("kind", KINDS)
async def test_stomp_session_with_a_jwt_passcode_ends_at_its_expiry(
    server: Server, kind: Kind
) -> None:
    with trio.fail_after(10):
        clock = WallClock(server)
        room = await create_room(server, [1, 2])
        token = server.token(1, ttl=600)
        end = valid_until(server, token)
        async with stomp_user(server, 2, rooms=[room]) as bystander:
            async with open_stomp(server, kind) as c:
                await c.connect("anyone", token)
                await c.subscribe(room_dest(room))
                await clock.set(end - 0.001)
                await c.publish(room_dest(room), {"content": "in time"})
                await clock.set(end)
                await c.expect_error("Token expired", "token expired")
            # The other user's session (an issued login, valid a day) carries on.
            await expect_room_message(bystander, "in time")
            await bystander.publish(room_dest(room), {"content": "after"})


@pytest.mark.parametrize("kind", KINDS)
async def test_stomp_session_with_an_issued_login_ends_at_the_login_expiry(
    start_server: StartServer, kind: Kind
) -> None:
    """An issued login ends its session too. stompjs then reconnects with the same, now
    expired, login and is refused: the app fetches a new one (README, STOMP)."""
    with trio.fail_after(10):
        server = await start_server(stomp={"login_ttl_seconds": 100.0})
        clock = WallClock(server)
        room = await create_room(server, [1])
        issued = clock.now
        login, passcode = await issue_login(server, 1)
        async with open_stomp(server, kind) as c:
            await c.connect(login, passcode)
            await c.subscribe(room_dest(room))
            await clock.set(issued + 100.0 - 0.001)
            await c.publish(room_dest(room), {"content": "in time"})
            await clock.set(issued + 100.0)
            await c.expect_error("Token expired", "token expired")
        async with open_stomp(server, kind) as c:
            await c.send_connect(login, passcode)
            await c.expect_error("Bad CONNECT", f"Access refused for user '{login}'")


async def test_sessions_closed_before_their_expiry_are_not_closed_again(server: Server) -> None:
    with trio.fail_after(10):
        clock = WallClock(server)
        token = server.token(1, ttl=600)
        async with open_stomp(server) as c:
            await c.connect("anyone", token)
            await c.disconnect()
        expiry = server.state.service.expiry
        assert len(expiry) == 0
        await clock.set(valid_until(server, token) + 1)
        assert server.state.hub.count() == 0


# --- the expiry task on trio's MockClock ---------------------------------------------------


async def test_one_task_ends_each_item_at_its_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ended: list[tuple[str, float]] = []
    expiry: Expiry[str] = Expiry(lambda item: ended.append((item, trio.current_time())))
    expiry.clock = trio.current_time
    async with trio.open_nursery() as nursery:
        nursery.start_soon(expiry.run)
        t0 = trio.current_time()
        expiry.add("late", t0 + 30)
        expiry.add("early", t0 + 10)  # earlier than the one the task sleeps for
        expiry.add("gone", t0 + 5)
        expiry.discard("gone")
        expiry.add("moved", t0 + 1)
        expiry.add("moved", t0 + 20)  # a second add moves the deadline
        expiry.add("far", t0 + 10 * MAX_SLEEP)
        await trio.sleep(10 * MAX_SLEEP + 1)
        assert ended == [
            ("early", t0 + 10),
            ("moved", t0 + 20),
            ("late", t0 + 30),
            ("far", t0 + 10 * MAX_SLEEP),
        ]
        assert len(expiry) == 0
        nursery.cancel_scope.cancel()


def test_sessions_that_come_and_go_do_not_grow_the_heap() -> None:
    """Ten thousand sessions with an hour left each, ended early one after another, as
    reconnecting clients do: the heap stays within a bound of the live ones."""
    expiry: Expiry[int] = Expiry(lambda item: None, clock=lambda: 0.0)
    for live in range(10_000):
        expiry.add(live, 3600.0 + live)
    for churn in range(10_000, 100_000):
        expiry.add(churn, 3600.0)
        expiry.discard(churn)
    assert len(expiry) == 10_000
    assert len(expiry._heap) <= 2 * 10_001 + 1024
    expiry.clock = lambda: 3600.0 + 4_999
    assert expiry.expire_due() == 5_000


def test_a_session_ended_early_is_not_kept_alive_by_its_deadline() -> None:
    """An ended session goes at once, with whatever it holds (a refused transaction held
    megabytes; kept in the heap until its token's expiry, 1,024 such sessions held GBs)."""

    class Session:
        pass

    expiry: Expiry[Session] = Expiry(lambda item: None, clock=lambda: 0.0)
    session = Session()
    gone = weakref.ref(session)
    expiry.add(session, 3600.0)
    expiry.add(session, 1800.0)  # a moved deadline leaves no reference behind either
    expiry.discard(session)
    del session
    assert gone() is None
    assert len(expiry) == 0 and expiry.expire_due() == 0


def test_an_expiry_callback_that_fails_does_not_stop_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ended: list[str] = []

    def end(item: str) -> None:
        if item == "bad":
            raise RuntimeError("boom")
        ended.append(item)

    expiry: Expiry[str] = Expiry(end, clock=lambda: 10.0)
    for item in ("a", "bad", "b"):
        expiry.add(item, 5.0)
    assert expiry.expire_due() == 3
    assert sorted(ended) == ["a", "b"]
    assert "could not end an expired session" in caplog.text


# --- helpers -------------------------------------------------------------------------------


async def new_ticket_for(server: Server, token: str) -> str:
    async with server.client() as http:
        resp = await http.post("/chat/ticket", headers={"accessToken": token})
    assert resp.status_code == 200, resp.text
    return str(resp.json()["ticket"])


async def expect_room_message(c: StompClient, content: str) -> None:
    while True:
        _, body = await c.expect_message()
        if body["type"] == "new_message":
            assert body["message"]["content"] == content, body
            return
