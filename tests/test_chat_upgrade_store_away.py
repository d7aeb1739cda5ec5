"""A `/chat` upgrade while the store cannot answer (PostgreSQL away in a cluster, where the
ticket's claim and the resume's newest id are store round trips): the handshake is still
completed and closed with 1013, "try again later", as every refusal is; the ticket, not
claimed, stays good. Before, the exception left the upgrade unanswered (and logged a
traceback as a connection failure)."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from trio_websocket import open_websocket_url

from chatd.store import StoreUnavailable

from ._chat import chat_url, close_code_for, create_room, new_ticket, roundtrip
from .conftest import Server


@pytest.mark.parametrize("since", [None, 0])
async def test_a_store_away_during_the_upgrade_closes_1013_and_keeps_the_ticket(
    server: Server, monkeypatch: pytest.MonkeyPatch, since: int | None
) -> None:
    with trio.fail_after(30):
        room = await create_room(server, [1])
        ticket = await new_ticket(server, 1)

        async def away(*args: Any) -> Any:
            raise StoreUnavailable("the test's store is away")

        target: Any = server.state.tickets if since is None else server.state.store
        name = "claim_async" if since is None else "last_message_id"
        monkeypatch.setattr(target, name, away)
        with trio.fail_after(10):  # unanswered, the client waited for ever
            reason = await close_code_for(server, chat_url(server, ticket, since))
        assert reason.code == 1013
        assert "store" in (reason.reason or "")
        monkeypatch.undo()
        async with open_websocket_url(chat_url(server, ticket, since)) as ws:
            sent = await roundtrip(ws, room, "the ticket was not used")
            assert sent["content"] == "the ticket was not used"


async def test_another_fault_of_the_upgrades_checks_closes_1011(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trio.fail_after(30):
        ticket = await new_ticket(server, 1)

        async def broken(*args: Any) -> Any:
            raise RuntimeError("the test's fault")

        monkeypatch.setattr(server.state.tickets, "claim_async", broken)
        with trio.fail_after(10):  # unanswered, the client waited for ever
            reason = await close_code_for(server, chat_url(server, ticket, None))
        assert (reason.code, reason.reason) == (1011, "server error")
        monkeypatch.undo()
        # The server carries on.
        room = await create_room(server, [1])
        async with open_websocket_url(chat_url(server, ticket, None)) as ws:
            await roundtrip(ws, room, "still serving")
