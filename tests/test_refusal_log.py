"""Refused clients leave one info line each (what, why, from where) so an operator can
see why a page fails, never the token, ticket or passcode, and a flood of them is held to
the refusal log's budget (chatd.ops.logs.RefusalLog, a fake clock here)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator

import pytest
import trio
from trio_websocket import ConnectionRejected

from chatd.ops import logs

from ._chat import chat, chat_url, close_code_for, create_room, new_ticket, roundtrip
from .conftest import Server
from .stomp_client import assert_carries_on, issue_login, make_room, open_stomp, stomp_user

EVIL = "http://evil.example"


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeClock]:
    # The server's one refusal log, with a clock that only the test moves: a busy machine
    # cannot refill the bucket in the middle of a test.
    fake = FakeClock()
    monkeypatch.setattr(
        logs, "refusals", logs.RefusalLog(logging.getLogger("chatd.refused"), clock=fake)
    )
    yield fake


def refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "chatd.refused"]


async def test_each_refusal_is_one_info_line_with_reason_and_address(
    server: Server, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "chatd.refused")
    with trio.fail_after(20):
        room = await create_room(server, [1])
        bad_token = server.token(1)[:-6] + "AAAAAA"
        ticket = await new_ticket(server, 1)
        unknown_ticket = str(uuid.uuid4())
        login, passcode = await issue_login(server, 1)
        wrong_passcode = passcode[::-1]

        async with server.client() as http:
            preflight = await http.options(
                "/chat/ticket",
                headers={"Origin": EVIL, "Access-Control-Request-Method": "POST"},
            )
            assert preflight.status_code == 403
            refused = await http.post("/chat/ticket", headers={"accessToken": bad_token})
            assert refused.status_code == 401
        closed = await close_code_for(server, chat_url(server, ticket), EVIL)
        assert closed.reason == "origin not allowed"
        closed = await close_code_for(server, chat_url(server, unknown_ticket))
        assert closed.reason == "ticket unknown"
        with pytest.raises(ConnectionRejected):
            async with open_stomp(server, "http", origin=EVIL):
                pass
        async with open_stomp(server, "tcp") as c:
            await c.send_connect(login, wrong_passcode)
            await c.expect_error("Bad CONNECT", f"Access refused for user '{login}'")

        assert refusals(caplog) == [
            f"refused CORS preflight from 127.0.0.1: origin '{EVIL}' not allowed",
            "refused POST /chat/ticket from 127.0.0.1: token signature is invalid",
            f"refused /chat from 127.0.0.1: origin '{EVIL}' not allowed",
            "refused /chat from 127.0.0.1: ticket unknown",
            f"refused /ws from 127.0.0.1: origin '{EVIL}' not allowed",
            f"refused STOMP tcp login from 127.0.0.1: no valid passcode for login '{login}'",
        ]
        assert {r.levelno for r in caplog.records if r.name == "chatd.refused"} == {logging.INFO}
        for secret in (bad_token, ticket, unknown_ticket, passcode, wrong_passcode):
            assert secret not in caplog.text

        # The server and its other clients carry on.
        async with chat(server, 1) as ws:
            assert (await roundtrip(ws, room, "still here"))["content"] == "still here"
        stomp_room = await make_room(server, [1, 2])
        async with stomp_user(server, 1, rooms=[stomp_room]) as bystander:
            await assert_carries_on(server, stomp_room, bystander)


async def test_a_flood_of_refusals_is_held_to_the_budget(
    server: Server, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "chatd.refused")
    burst = logs.refusals.burst
    with trio.fail_after(30):
        async with server.client() as http:
            for _ in range(burst + 30):
                resp = await http.post("/chat/ticket", headers={"accessToken": "not-a-token"})
                assert resp.status_code == 401
            # Every one was refused; only the burst was logged.
            assert len(refusals(caplog)) == burst
            clock.now += 1 / logs.refusals.rate
            resp = await http.options("/chat/ticket", headers={"Origin": EVIL})
            assert resp.status_code == 403
    assert refusals(caplog)[-1] == (
        f"refused CORS preflight from 127.0.0.1: origin '{EVIL}' not allowed"
        " (30 more refusals not logged before this one)"
    )
